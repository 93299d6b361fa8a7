"""End to end: default ``--cache warm`` learns the simulated server's cache shape over loopback."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
from helpers import mock_config

from runner.api import run
from runner.config import RunConfig
from runner.mock import MockConfig, serve

WORDS = "supplier customer indemnify liability warranty notice breach remedy damages".split()


def write_jobs(tmp: Path, groups: int, questions: int, words: int = 800) -> Path:
    rng = random.Random(5)
    with (tmp / "contexts.jsonl").open("wb") as fh:
        for c in range(groups):
            text = " ".join([f"Contract {c}.", *(rng.choice(WORDS) for _ in range(words))])
            fh.write(orjson.dumps({"cache_id": f"doc{c}", "system": text}) + b"\n")
    jobs = [(c, q) for c in range(groups) for q in range(questions)]
    rng.shuffle(jobs)
    path = tmp / "jobs.jsonl"
    with path.open("wb") as fh:
        for c, q in jobs:
            line = {"id": f"c{c}-q{q}", "cache_id": f"doc{c}", "query": f"question {q}?"}
            line["params"] = {"max_tokens": 4}  # type: ignore[assignment]
            fh.write(orjson.dumps(line) + b"\n")
    return path


def config(tmp: Path, url: str, **kw: Any) -> RunConfig:
    learning: dict[str, Any] = {
        "resume": False,
        "min_cacheable_tokens": 256,
        "max_active_groups": 64,  # its ceiling
        "contexts": tmp / "contexts.jsonl",
    }
    return mock_config(tmp, url, **{**learning, **kw})


SLOT_MOCK = dict(
    slots=8,
    base_ms=5,
    prefill_ms_per_token=0.05,
    cached_prefill_ms_per_token=0.0,
    decode_ms_per_token=0.5,
    cache_block_tokens=16,
    cache_min_prefix_tokens=256,
    seed=1,
)


async def test_per_slot_server_gets_one_group_per_slot(tmp_path: Path) -> None:
    """llama.cpp-like: 8 slots, 8 groups, concurrency 8. Fanning a group out sends its
    followers to cold slots; the controller must learn one request per group in flight."""
    jobs = write_jobs(tmp_path, groups=8, questions=12)
    async with serve(MockConfig(**SLOT_MOCK)) as url:  # type: ignore[arg-type]
        out = await run(jobs, config(tmp_path, url, concurrency=8))
        fixed = await run(
            jobs,
            config(tmp_path, url, concurrency=8, cache_adapt=False, output=tmp_path / "f.jsonl",
                   latency=tmp_path / "fl.jsonl", summary=tmp_path / "fs.json"),
        )  # fmt: skip
    assert out.exit_code == 0 and fixed.exit_code == 0
    ctl = out.summary["cache_control"]
    # One request per group in flight, learned from a split.
    assert (ctl["group_concurrency"], ctl["cap_shrinks"]) == (1, 1), ctl
    # Each group's first request misses (8 of 96), plus what learning the shape costs: the
    # probe's second follower recomputes its prefix in another group's slot and that group's
    # next request then misses too (3-6 follower misses of 88; 0.817-0.879 cached measured).
    assert out.summary["cache_hit_ratio"] >= 0.8, out.summary
    assert ctl["follower_hit_ratio"] >= 0.9
    # The old fixed fan-out on the same server, for contrast: the shape is what the test says.
    assert fixed.summary["cache_hit_ratio"] < out.summary["cache_hit_ratio"] - 0.1


async def test_lru_server_learns_a_working_set_that_fits(tmp_path: Path) -> None:
    """vLLM-like global LRU holding about 3 of 12 contexts, concurrency 24: the active groups
    shrink to what fits, and a group's followers still fan out (the cap grows)."""
    jobs = write_jobs(tmp_path, groups=12, questions=16)
    prefix_tokens = 800 * 10 // 4  # about 10 characters a word, 4 a token
    mock = MockConfig(
        base_ms=5,
        prefill_ms_per_token=0.02,
        cached_prefill_ms_per_token=0.0,
        decode_ms_per_token=0.5,
        cache_block_tokens=16,
        cache_min_prefix_tokens=256,
        cache_capacity_tokens=3 * prefix_tokens,
        seed=2,
    )
    async with serve(mock) as url:
        out = await run(jobs, config(tmp_path, url, concurrency=24))
    async with serve(mock) as url:  # the old fixed default (8 groups) on a fresh server
        fixed = await run(
            jobs,
            config(tmp_path, url, concurrency=24, cache_adapt=False, max_active_groups=8,
                   output=tmp_path / "f.jsonl", latency=tmp_path / "fl.jsonl",
                   summary=tmp_path / "fs.json"),
        )  # fmt: skip
    assert out.exit_code == 0 and fixed.exit_code == 0
    ctl = out.summary["cache_control"]
    assert ctl["group_shrinks"] >= 1 and ctl["active_groups"] <= 4
    assert ctl["group_concurrency"] >= 1
    # Learning costs misses on a run this short: the ratio is about the old fixed default's
    # (measured 0.70-0.75 vs 0.70-0.78 over three runs), not better; see bench_cache.py.
    learned, old = out.summary["cache_hit_ratio"], fixed.summary["cache_hit_ratio"]
    assert learned >= 0.6 and learned >= old - 0.15, (learned, old, ctl)


async def test_a_slow_probe_follower_does_not_hold_the_other_groups(tmp_path: Path) -> None:
    """The probe's primer answers fast and its followers take long (long replies): once they
    have had time to start on the server, the pipeline stops waiting for their verdict. No
    answer arrives to wake it then: the scheduler's deadline must (Scheduler.wake_in)."""
    rng = random.Random(3)
    with (tmp_path / "contexts.jsonl").open("wb") as fh:
        for c in range(3):
            text = " ".join([f"Contract {c}.", *(rng.choice(WORDS) for _ in range(800))])
            fh.write(orjson.dumps({"cache_id": f"doc{c}", "system": text}) + b"\n")
    jobs = tmp_path / "jobs.jsonl"
    with jobs.open("wb") as fh:
        for c in range(3):
            for q in range(4):  # one short reply (the primer), three long ones
                line = {"id": f"c{c}-q{q}", "cache_id": f"doc{c}", "query": f"question {q}?"}
                line["params"] = {"max_tokens": 1 if q == 0 else 200}  # type: ignore[assignment]
                fh.write(orjson.dumps(line) + b"\n")
    mock = MockConfig(
        base_ms=5,
        prefill_ms_per_token=0.02,
        cached_prefill_ms_per_token=0.0,
        decode_ms_per_token=5,  # a long reply: about 1 s
        jitter=0.0,
        cache_block_tokens=16,
        cache_min_prefix_tokens=256,
        seed=4,
    )
    async with serve(mock) as url:
        out = await run(jobs, config(tmp_path, url, concurrency=8))
    assert out.exit_code == 0
    recs = [orjson.loads(line) for line in (tmp_path / "l.jsonl").read_bytes().splitlines()]
    first = min(recs, key=lambda r: r["started_at"])
    probe = [
        r for r in recs if r["cache_id"] == first["cache_id"] and r["cache_role"] == "follower"
    ]
    probe.sort(key=lambda r: r["started_at"])
    probe_end = min(r["ended_at"] for r in probe[:2])
    others = [r["started_at"] for r in recs if r["cache_id"] != first["cache_id"]]
    # The other groups went while the probe's followers were still out...
    assert min(others) < probe_end, (min(others), probe_end)
    # ...and its verdict, read after other traffic had gone, is not taken for a shared cache.
    assert out.summary["cache_control"]["cache_shape"] == "unknown"
