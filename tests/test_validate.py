"""Tests of ``validate``: report figures checked against values computed by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.config import RunConfig
from runner.errors import InputError
from runner.jobs import load_contexts
from runner.models import Context, Price
from runner.providers.capabilities import OPENAI
from runner.validate import (
    MAX_PROBLEMS,
    render_validation,
    validate_file,
)


def write(path: Path, *lines: Any) -> Path:
    path.write_bytes(
        b"".join((ln.encode() if isinstance(ln, str) else orjson.dumps(ln)) + b"\n" for ln in lines)
    )
    return path


@pytest.fixture
def contexts(tmp_path: Path) -> dict[str, Context]:
    # 4,096 characters = 1,024 estimated tokens (just cacheable); 400 characters = 100 tokens
    return load_contexts(
        write(
            tmp_path / "contexts.jsonl",
            {"cache_id": "big", "system": "x" * 4096},
            {"cache_id": "small", "system": "y" * 400},
        )
    )


PRICES = {
    "m1": Price(input=2.0, output=8.0, cached_input=0.5, cache_write=2.5),
    "m2": Price(input=1.0, output=1.0),
}


@pytest.fixture
def jobs_file(tmp_path: Path) -> Path:
    return write(
        tmp_path / "jobs.jsonl",
        {"id": "a", "cache_id": "big", "query": "q" * 40},  # 4,136 chars -> 1,034 tokens
        {"id": "b", "cache_id": "big", "query": "q" * 40, "params": {"max_tokens": 50}},
        {"id": "c", "cache_id": "big", "query": "q" * 8},  # 4,104 chars -> 1,026 tokens
        {"id": "d", "cache_id": "small", "query": "q" * 4},  # 404 chars -> 101 tokens
        {"id": "e", "query": "hi"},  # 1 token, no group
        "nope",
        {"id": "f", "query": "z" * 4000, "model": "m2"},  # 1,000 tokens
    )


def config(**kw: Any) -> RunConfig:
    # Anthropic: a provider that bills cache writes (an OpenAI-shaped one estimates none,
    # tests/test_qa_polish.py)
    base: dict[str, Any] = {
        "model": "m1",
        "params": {"max_tokens": 100},
        "prices": PRICES,
        "provider": "anthropic",
        "base_url": "http://127.0.0.1:9",
    }
    return RunConfig(**(base | kw))


def test_report_figures_match_hand_computed_values(
    jobs_file: Path, contexts: dict[str, Context]
) -> None:
    report = validate_file(jobs_file, contexts=contexts, config=config(context_window=1100))
    assert (report.jobs, report.bad_lines, report.not_jsonl) == (6, 1, False)
    assert [(b.line, b.field) for b in report.problems] == [(6, None)]
    assert report.groups == {
        f"big:{contexts['big'].digest}": 3,
        f"small:{contexts['small'].digest}": 1,
    }
    assert (report.cacheable_groups, report.ungrouped_jobs) == (1, 2)  # e and f
    # m1: a, b, c, d, e; m2: f
    assert report.prompt_tokens == 1034 + 1034 + 1026 + 101 + 1 + 1000
    assert report.completion_tokens == 100 + 50 + 100 + 100 + 100 + 100
    assert report.cached_tokens == 2 * 1024  # two followers read the 1,024-token prefix
    assert report.cache_write_tokens == 1024  # the primer wrote it once
    m1, m2 = report.models["m1"], report.models["m2"]
    assert (m1.jobs, m1.prompt_tokens, m1.completion_tokens) == (5, 3196, 450)
    assert (m2.jobs, m2.prompt_tokens, m2.cached_tokens, m2.completion_tokens) == (1, 1000, 0, 100)
    assert m1.uncached == pytest.approx((3196 * 2 + 450 * 8) / 1e6)
    assert m1.billed == pytest.approx(
        ((3196 - 2048 - 1024) * 2 + 2048 * 0.5 + 1024 * 2.5 + 450 * 8) / 1e6
    )
    assert m2.billed == m2.uncached == pytest.approx(1100 / 1e6)
    assert report.cost_billed == pytest.approx(0.007432 + 0.0011)
    assert report.cost_uncached == pytest.approx(0.009992 + 0.0011)
    assert report.short_contexts == (("small", 100),)
    # a: 1,034 + 100 > 1,100 and c: 1,026 + 100 > 1,100; b (50) and f (exactly 1,100) fit
    assert [
        (o.line, o.custom_id, o.prompt_tokens, o.completion_tokens) for o in report.over_window
    ] == [
        (1, "a", 1034, 100),
        (3, "c", 1026, 100),
    ]
    assert report.over_window_jobs == 2


def test_render_lists_problems_then_totals(jobs_file: Path, contexts: dict[str, Context]) -> None:
    report = validate_file(jobs_file, contexts=contexts, config=config(context_window=1100))
    text = render_validation(report, jobs_file)
    lines = text.splitlines()
    assert lines[0].startswith(f"{jobs_file}:6: invalid JSON")
    assert lines[1] == f"{jobs_file}: 6 jobs, 1 bad line"
    assert "cache groups: 2 (1 long enough to cache, prefix >= 1,024 tokens)" in text
    assert "2 jobs without a static prefix" in text
    assert f"  big:{contexts['big'].digest}: 3 jobs" in lines
    assert "prompt 4,196, cached 2,048 (48.8% with --cache warm), cache write 1,024" in text
    assert "estimated cost: $0.0085 billed, $0.0111 without caching (saving 23.1%)" in text
    assert "context 'small' is ~100 tokens, under min_cacheable_tokens (1,024)" in text
    assert f"warning: {jobs_file}:1 (a): ~1,034 prompt + 100 completion tokens" in text
    assert "does not look like JSONL" not in text
    assert text.endswith("\n")


def test_cache_write_without_a_write_price_is_billed_as_input(
    jobs_file: Path, contexts: dict[str, Context]
) -> None:
    prices = {"m1": Price(input=2.0, output=8.0, cached_input=0.5), "m2": PRICES["m2"]}
    m1 = validate_file(jobs_file, contexts=contexts, config=config(prices=prices)).models["m1"]
    assert m1.billed == pytest.approx(((3196 - 2048) * 2 + 2048 * 0.5 + 450 * 8) / 1e6)


def test_missing_price_makes_cost_unknown(jobs_file: Path, contexts: dict[str, Context]) -> None:
    report = validate_file(jobs_file, contexts=contexts, config=config(prices={"m1": PRICES["m1"]}))
    assert report.models["m1"].billed is not None
    assert report.models["m2"].billed is None
    assert report.cost_billed is None and report.cost_uncached is None
    text = render_validation(report, jobs_file)
    assert "m2: 1 job, prompt 1,000 tokens; no price in the config" in text
    assert "estimated cost: unknown" in text


def test_min_cacheable_tokens_decides_what_is_cached(
    jobs_file: Path, contexts: dict[str, Context]
) -> None:
    report = validate_file(jobs_file, contexts=contexts, config=config(min_cacheable_tokens=1025))
    assert (report.cacheable_groups, report.cached_tokens, report.cache_write_tokens) == (0, 0, 0)
    assert report.short_contexts == (("big", 1024), ("small", 100))
    report = validate_file(jobs_file, contexts=contexts, config=config(min_cacheable_tokens=100))
    assert report.cacheable_groups == 2
    assert report.cached_tokens == 2 * 1024  # the one-job group has no follower to read it
    assert report.cache_write_tokens == 1024 + 100
    assert report.short_contexts == ()


def test_completion_defaults_without_max_tokens(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"id": "a", "query": "q"}, {"id": "b", "query": "q"})
    report = validate_file(path, contexts={}, config=RunConfig())
    assert report.completion_tokens == 2 * OPENAI.default_max_tokens
    assert report.over_window == () and report.over_window_jobs == 0
    report = validate_file(path, contexts={}, config=RunConfig(params={"max_completion_tokens": 7}))
    assert report.completion_tokens == 14


def test_auto_groups_are_counted(tmp_path: Path) -> None:
    def line(i: int, system: str) -> dict[str, Any]:
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": str(i)}]
        return {"custom_id": f"r{i}", "body": {"messages": msgs}}

    path = write(tmp_path / "b.jsonl", line(1, "s" * 40), line(2, "s" * 40), line(3, "t" * 40))
    report = validate_file(path, contexts={}, config=config(min_cacheable_tokens=10))
    assert sorted(report.groups.values()) == [1, 2]
    assert all(key.startswith("auto:") for key in report.groups)
    assert (report.cacheable_groups, report.cached_tokens, report.cache_write_tokens) == (2, 10, 20)


def test_not_jsonl_is_said_plainly(tmp_path: Path) -> None:
    path = write(tmp_path / "data.csv", "id,query", "a,what is 1", "b,what is 2")
    report = validate_file(path, contexts={}, config=RunConfig())
    assert report.not_jsonl and (report.jobs, report.bad_lines) == (0, 3)
    text = render_validation(report, path)
    assert f"{path}: this does not look like JSONL" in text
    assert [ln.split(":")[1] for ln in text.splitlines()[:3]] == ["1", "2", "3"]
    assert "estimated cost" not in text


def test_json_objects_without_ids_are_still_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"name": "x"}, "[1]")
    report = validate_file(path, contexts={}, config=RunConfig())
    assert (report.jobs, report.bad_lines, report.not_jsonl) == (0, 2, False)


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl")
    report = validate_file(path, contexts={}, config=RunConfig())
    assert (report.jobs, report.bad_lines, report.not_jsonl, report.groups) == (0, 0, False, {})
    assert render_validation(report, path).splitlines()[0] == f"{path}: 0 jobs, 0 bad lines"


def test_problem_listing_is_capped_but_counted(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", *(["{"] * (MAX_PROBLEMS + 5)), {"id": "ok", "query": "q"})
    report = validate_file(path, contexts={}, config=RunConfig())
    assert (report.jobs, report.bad_lines, len(report.problems)) == (
        1,
        MAX_PROBLEMS + 5,
        MAX_PROBLEMS,
    )
    assert report.problems[-1].line == MAX_PROBLEMS
    assert "... and 5 more bad lines (only the first 1,000 are listed)" in render_validation(
        report, path
    )


def test_max_line_bytes_comes_from_the_config(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"id": "a", "query": "q" * 100})
    report = validate_file(path, contexts={}, config=RunConfig(max_line_bytes=50))
    assert report.problems[0].field == "line"


def test_unopenable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        validate_file(tmp_path / "missing.jsonl", contexts={}, config=RunConfig())
