"""Found by QA: usage numbers that cannot all be true. A server reporting more cached tokens than
prompt tokens gave a run a "cache hit 500.0%", a negative billed cost and a "saving 375.0%";
Gemini's usage took negative counts as they came (README, "Reliability": negative usage numbers
are unknown, never negative tokens or cost). Every provider's usage now keeps
``0 <= cached + cache_write <= prompt``: a cached count above the prompt is unknown, a write
count is cut to what the prompt leaves."""

from __future__ import annotations

from typing import Any

import pytest

from runner.models import Price, Usage
from runner.providers import anthropic, gemini, openai
from runner.stats import cost_of

PRICE = Price(input=1.0, output=2.0, cached_input=0.1, cache_write=1.25)

OPENAI = [
    {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 50}},
    {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 5, "cache_write_tokens": 20},
    },
    {"prompt_tokens": 10, "prompt_cache_hit_tokens": 40, "prompt_cache_miss_tokens": 2},
    {"completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 8}},
]
GEMINI = [
    {"promptTokenCount": 10, "cachedContentTokenCount": 50, "candidatesTokenCount": 1},
    {"promptTokenCount": -10, "cachedContentTokenCount": -3, "candidatesTokenCount": -1},
    {"promptTokenCount": 10, "cachedContentTokenCount": 4, "thoughtsTokenCount": -7},
]
ANTHROPIC = [
    {"input_tokens": 3, "cache_read_input_tokens": 40, "cache_creation_input_tokens": 9},
]


def _parsed() -> list[tuple[str, Usage | None]]:
    out: list[tuple[str, Usage | None]] = []
    out += [(f"openai {u}", openai.parse_usage(u)) for u in OPENAI]
    out += [(f"gemini {u}", gemini.parse_usage(u)) for u in GEMINI]
    out += [(f"anthropic {u}", anthropic.parse_usage(u)) for u in ANTHROPIC]
    return out


@pytest.mark.parametrize(("name", "usage"), _parsed(), ids=lambda v: str(v)[:60])
def test_usage_never_claims_more_cached_or_written_tokens_than_the_prompt(
    name: str, usage: Usage | None
) -> None:
    assert usage is not None, name
    cached = usage.cached_tokens or 0
    assert usage.prompt_tokens >= 0 and usage.completion_tokens >= 0, name
    assert cached >= 0 and usage.cache_write_tokens >= 0, name
    assert cached + usage.cache_write_tokens <= usage.prompt_tokens, name
    billed, uncached = cost_of(
        usage.prompt_tokens, cached, usage.cache_write_tokens, usage.completion_tokens, PRICE
    )
    assert billed >= 0 and uncached >= 0, name


def test_a_plausible_usage_is_kept_as_sent() -> None:
    """The check changes nothing about usage that adds up."""
    body: dict[str, Any] = {
        "prompt_tokens": 100,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": 64, "cache_write_tokens": 36},
    }
    assert openai.parse_usage(body) == Usage(100, 64, 36, 7)
    assert openai.parse_usage({"prompt_tokens": 9}) == Usage(9, None, 0, 0)
    g = {"promptTokenCount": 100, "cachedContentTokenCount": 100, "candidatesTokenCount": 2}
    assert gemini.parse_usage(g) == Usage(100, 100, 0, 2)
