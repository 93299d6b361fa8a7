"""Found by a new user's QA pass (polish), each test holding one fix:

* ``runner merge OUT shard-0... --partial`` silently replaced a complete earlier merge in OUT (all
  N shards) with a partial one: it is refused (exit 2) naming what OUT holds and how to proceed.
* ``runner report`` of a resumed output counted the idle time between invocations (Ctrl-C, a
  resume hours later) as run time: the wall is the busy time, the union of the records'
  ``[queued_at, ended_at]``.
* ``runner validate`` said "1 jobs", and estimated cache-write tokens for a provider (OpenAI, the
  mock) whose usage never bills a cache write.
* the "no provider configured" note is kept on every run of the unnamed mock (README: it is how
  a user learns the replies are synthetic), and names a provider's key variable that is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from promise_helpers import cli_run, fast_config, load, write_jobs

# -- merge: a partial merge never silently replaces a complete one -------------------------


def _shards(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int) -> list[Path]:
    jobs = write_jobs(tmp_path, 12)
    cfg = fast_config(tmp_path)
    for k in range(n):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(cfg), "--shard", f"{k}/{n}")
        assert code == 0, err
    return [tmp_path / f"jobs.shard-{k}-of-{n}.results.jsonl" for k in range(n)]


def test_a_partial_merge_does_not_replace_a_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = _shards(tmp_path, capsys, 3)
    out = tmp_path / "all.results.jsonl"
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    whole = out.read_bytes()
    summary = (tmp_path / "all.summary.json").read_bytes()
    assert len(whole.splitlines()) == 12

    code, err = cli_run(capsys, "merge", str(out), str(parts[0]), "--partial")
    assert code == 2
    assert "holds an earlier merge of shard(s) 0, 1, 2 of 3" in err
    assert "shard(s) 0 of 3 would replace it with less" in err and "--force" in err
    assert out.read_bytes() == whole  # nothing lost
    assert (tmp_path / "all.summary.json").read_bytes() == summary

    # merging all of them again is allowed (the same or more shards), and --force replaces
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    code, err = cli_run(capsys, "merge", str(out), str(parts[0]), "--partial", "--force")
    assert code == 1, err
    assert len(out.read_bytes().splitlines()) < 12


def test_a_partial_merge_may_grow_into_a_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = _shards(tmp_path, capsys, 2)
    out = tmp_path / "m.results.jsonl"
    assert cli_run(capsys, "merge", str(out), str(parts[0]), "--partial")[0] == 1
    assert load(out.with_name(out.name + ".merged.json"))["merged"] == [0]
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    assert len(out.read_bytes().splitlines()) == 12
    # a marker from before "merged" was recorded: judged by its number of parts
    marker = out.with_name(out.name + ".merged.json")
    old = load(marker)
    del old["merged"]
    marker.write_bytes(orjson.dumps(old))
    code, err = cli_run(capsys, "merge", str(out), str(parts[1]), "--partial")
    assert code == 2 and "would replace it with less" in err


# -- report: the idle time between invocations is not run time ------------------------------


def _rec(i: int, queued: float, ended: float) -> dict[str, object]:
    return {
        "custom_id": f"j{i}",
        "outcome": "ok",
        "attempts": 1,
        "queued_at": queued,
        "started_at": queued,
        "ended_at": ended,
        "latency_ms": (ended - queued) * 1000.0,
        "ttft_ms": 10.0,
        "total_ms": (ended - queued) * 1000.0,
        "prompt_tokens": 10,
        "completion_tokens": 4,
    }


def _two_invocations(path: Path) -> None:
    """40 jobs over 4 s, a Ctrl-C, and 40 more over 4 s an hour later (concurrency 4, each job
    0.4 s): 80 jobs in 8 s of running, over a span of 3,608 s."""
    recs: list[dict[str, object]] = []
    for start in (1_000.0, 4_600.0):
        for i in range(40):
            q = start + (i // 4) * 0.4
            recs.append(_rec(len(recs), q, q + 0.4))
    # one record written out of its order (a slow job that ended last in the first run)
    recs.insert(60, recs.pop(39))
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))


def test_report_of_a_resumed_output_counts_busy_time_not_the_idle_gap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lat = tmp_path / "r.latency.jsonl"
    _two_invocations(lat)
    capsys.readouterr()
    from runner.cli import main

    assert main(["report", str(lat), "--json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["wall_s"] == pytest.approx(8.0)
    assert doc["requests_per_s"] == pytest.approx(10.0)
    assert doc["wall"]["span_s"] == pytest.approx(3604.0)
    assert doc["wall"]["idle_s"] == pytest.approx(3596.0)
    assert doc["wall"]["pauses"] == 1
    assert main(["report", str(lat)]) == 0
    out = capsys.readouterr().out
    assert "8.00 s, 10.0 req/s (busy time; 3,596.00 s idle in 1 pause over 1 s" in out


def test_busy_time_joins_short_pauses_and_any_order() -> None:
    from runner.stats import BusyTime

    b = BusyTime()
    # back-to-back jobs at concurrency 1 (the next admitted just after the last ended)
    for i in range(10):
        b.add(i * 1.0 + 0.001, (i + 1) * 1.0)
    assert b.result() == pytest.approx((9.999, 9.999, 0))
    b = BusyTime()
    for q, e in [(100.0, 101.0), (0.0, 2.0), (1.0, 3.0), (50.0, 50.5), (100.5, 102.0)]:
        b.add(q, e)
    assert b.result() == pytest.approx((3.0 + 0.5 + 2.0, 102.0, 2))
    assert BusyTime().result() == (0.0, 0.0, 0)


# -- validate: counts in words, and cache writes only where the provider bills them ----------


def _validate_input(tmp_path: Path) -> tuple[Path, Path]:
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_bytes(orjson.dumps({"cache_id": "big", "system": "x" * 8000}) + b"\n")
    jobs = tmp_path / "one.jsonl"
    jobs.write_bytes(
        orjson.dumps({"id": "a", "cache_id": "big", "query": "q"})
        + b"\n"
        + orjson.dumps({"id": "b", "cache_id": "big", "query": "q"})
        + b"\n"
        + orjson.dumps({"id": "c", "query": "q", "model": "m2"})
        + b"\n{oops\n"
    )
    return jobs, ctx


def test_validate_says_one_job_and_one_bad_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main

    jobs, ctx = _validate_input(tmp_path)
    capsys.readouterr()
    assert main(["validate", str(jobs), "--contexts", str(ctx)]) == 1  # a bad line
    text = capsys.readouterr().out
    assert f"{jobs}: 3 jobs, 1 bad line\n" in text
    assert "1 job without a static prefix" in text
    assert "  m2: 1 job, prompt" in text
    assert " 1 jobs" not in text and "1 bad lines" not in text


def test_validate_estimates_cache_writes_only_for_a_provider_that_bills_them(
    tmp_path: Path,
) -> None:
    from runner.config import RunConfig
    from runner.jobs import load_contexts
    from runner.models import Price
    from runner.validate import render_validation, validate_file

    jobs, ctx = _validate_input(tmp_path)
    contexts = load_contexts(ctx)
    price = {"gpt": Price(input=1.0, output=2.0, cached_input=0.1, cache_write=1.25)}
    # one completion budget for all (the providers' defaults differ)
    common: dict[str, Any] = {"model": "gpt", "prices": price, "params": {"max_tokens": 10}}
    mock = RunConfig(**common)  # the built-in mock: OpenAI-shaped
    openai = RunConfig(**common, provider="openai", base_url="http://127.0.0.1:9")
    anthropic = RunConfig(**common, provider="anthropic", base_url="http://127.0.0.1:9")
    for cfg in (mock, openai):
        report = validate_file(jobs, contexts=contexts, config=cfg)
        assert report.cached_tokens > 0  # the follower still reads the cache
        assert report.cache_write_tokens == 0
        assert report.models["gpt"].cache_write_tokens == 0
        assert "cache write" not in render_validation(report, jobs)
    billed = validate_file(jobs, contexts=contexts, config=anthropic)
    assert billed.cache_write_tokens == 2000  # the prefix, written once
    assert ", cache write 2,000, " in render_validation(billed, jobs)
    # the write is billed at the cache_write rate only where it exists
    gpt, ant = (
        validate_file(jobs, contexts=contexts, config=c).models["gpt"] for c in (mock, anthropic)
    )
    assert ant.billed is not None and gpt.billed is not None
    assert ant.billed - gpt.billed == pytest.approx(2000 * (1.25 - 1.0) / 1e6)


# -- the "no provider configured" note: said every run; names a key variable that is set ------


def test_the_simulated_provider_note_names_a_key_that_was_probably_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    jobs = write_jobs(tmp_path, 2)
    cfg = fast_config(tmp_path)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(cfg))
    assert code == 0
    assert "replies are synthetic (--provider mock says it is meant, and silences this)" in err
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-secret-value")
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(cfg), "--no-resume")
    assert code == 0
    assert (
        "replies are synthetic; ANTHROPIC_API_KEY is set, but nothing is sent with it: name a "
        "provider (--provider anthropic --base-url URL, or a config such as "
        "configs/anthropic.toml)"
    ) in err
    assert "sk-ant-secret-value" not in err
    # the mock named: the choice is made, nothing said
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(cfg), "--no-resume", "--provider", "mock"
    )
    assert code == 0 and "no provider configured" not in err
