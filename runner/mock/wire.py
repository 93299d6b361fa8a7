"""Wire shapes of the two providers: error bodies, usage objects and reply text.

Everything here is pure and cheap; the server composes these into responses. Error bodies are
the exact shapes the providers send (see docs/PROVIDERS.md), never echoing a key.
"""

from __future__ import annotations

import random
from typing import Any

import orjson

__all__ = [
    "REPLY_WORDS",
    "anthropic_error",
    "anthropic_usage",
    "openai_error",
    "openai_usage",
    "reply_pool",
]

# Four-byte words (three letters and a space) so that a reply of n words is n tokens under the
# mock's tokenizer, and so they can be spliced into JSON without escaping.
REPLY_WORDS = tuple(a + b + c + " " for a in "bdfklmnprstv" for b in "aeiou" for c in "lmnrst")

OPENAI_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "server_error",
    ),
    502: ("Bad gateway.", "server_error"),
    503: ("The engine is currently overloaded, please try again later.", "server_error"),
}

ANTHROPIC_STATUS_ERRORS: dict[int, tuple[str, str]] = {
    500: ("Internal server error", "api_error"),
    502: ("Bad gateway", "api_error"),
    503: ("Service unavailable", "api_error"),
    529: ("Overloaded", "overloaded_error"),
}


def reply_pool(seed: int, words: int = 4096) -> str:
    """A seeded run of reply words; replies are slices of it."""
    rng = random.Random(seed)
    return "".join(rng.choice(REPLY_WORDS) for _ in range(words))


def openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "param": param, "code": code}}
    )


def anthropic_error(type_: str, message: str) -> bytes:
    return orjson.dumps({"type": "error", "error": {"type": type_, "message": message}})


def openai_usage(
    prompt: int, cached: int, completion: int, cache_write: int | None
) -> dict[str, Any]:
    details: dict[str, int] = {"cached_tokens": cached, "audio_tokens": 0}
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def anthropic_usage(
    input_tokens: int, read: int, write_5m: int, write_1h: int, output: int
) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": write_5m + write_1h,
        "cache_read_input_tokens": read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": write_5m,
            "ephemeral_1h_input_tokens": write_1h,
        },
        "output_tokens": output,
        "service_tier": "standard",
    }
