"""A shard's ``S.state`` (runner/partstate.py): the merge sums the shards' builders instead of
parsing every latency record again, and gets the same summary byte for byte; a state that no
longer describes its latency file is not used."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from shard_helpers import fast_mock, run_shard, run_shards

from runner.merge import merge
from runner.models import Price
from runner.partstate import read_state, state_path, write_state
from runner.stats import SummaryBuilder

FAST_MOCK = {
    "base_ms": 2.0,
    "prefill_ms_per_token": 0.001,
    "cached_prefill_ms_per_token": 0.0001,
    "decode_ms_per_token": 0.2,
}
ROOT = Path(__file__).resolve().parent.parent
PRICES = {"cheap-1": Price(1.0, 2.0, 0.5), "dear-1": Price(30.0, 60.0, 15.0)}


@pytest.fixture(autouse=True)
def _fast_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_mock(monkeypatch, FAST_MOCK)


# -- the builder's state ---------------------------------------------------------------------


def _records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    out = []
    for i in range(n):
        ok = rng.random() > 0.2
        rec: dict[str, Any] = {
            "custom_id": f"j{i}",
            "outcome": "ok" if ok else "error",
            "error_code": None if ok else rng.choice(["timeout", "http_500", "rate_limited"]),
            "cache_role": rng.choice(["primer", "follower", "none", None]),
            "attempts": rng.randint(1, 3),
            "queued_at": 1e9 + rng.random() * 100,
            "ended_at": 1e9 + 100 + rng.random() * 100,
            "limiter_ms": round(rng.random() * 50, 3),
            "ttft_ms": round(rng.random() * 300, 3) if rng.random() > 0.3 else None,
            "latency_ms": round(rng.random() * 900, 3) if ok else None,
            "total_ms": round(rng.random() * 1000, 3),
            "prompt_tokens": rng.randint(0, 5000),
            "cached_tokens": rng.choice([None, 0, rng.randint(0, 1000)]),
            "cache_write_tokens": rng.randint(0, 100),
            "completion_tokens": rng.randint(0, 300),
            "itl_ms": [round(rng.random() * 20, 3) for _ in range(rng.randint(0, 4))] or None,
            "model": rng.choice(["cheap-1", "dear-1", None]),
        }
        out.append(rec)
    return out


@pytest.mark.parametrize("exact_limit", [100_000, 7])  # 7: some parts fold into buckets
def test_absorbed_states_give_the_summary_of_the_parts_records(exact_limit: int) -> None:
    rng = random.Random(5)
    parts = [_records(rng, n) for n in (40, 3, 0, 25)]

    def price_of(m: str | None) -> Price | None:
        return PRICES[m or "cheap-1"]

    def builder_of(recs: list[dict[str, Any]]) -> SummaryBuilder:
        b = SummaryBuilder(None, exact_limit=exact_limit)
        for rec in recs:
            b.add(rec)
        return b

    parsed = SummaryBuilder(None, price_of=price_of, exact_limit=exact_limit)
    restored = SummaryBuilder(None, price_of=price_of, exact_limit=exact_limit)
    for recs in parts:
        part = builder_of(recs)
        part.summary()  # a run writes its summary first: the state survives it
        parsed.absorb(builder_of(recs))
        head, samples = part.state()
        head = orjson.loads(orjson.dumps(head))  # as written and read back
        restored.absorb(SummaryBuilder.from_state(head, samples, exact_limit=exact_limit))
    a, b = parsed.summary(), restored.summary()
    assert orjson.dumps(a) == orjson.dumps(b)
    # and what one builder fed every record says (the float sums may differ in the last bit
    # in general; these records round to the same figures)
    whole = SummaryBuilder(None, price_of=price_of, exact_limit=exact_limit)
    for recs in parts:
        for rec in recs:
            whole.add(rec)
    assert orjson.dumps(whole.summary()) == orjson.dumps(a)
    assert a["jobs"]["ok"] + a["jobs"]["failed"] == 68 and a["cost"]["billed"] > 0
    assert set(a["models"]) == {"cheap-1", "dear-1"}
    assert a["itl_ms"] is not None and a["jobs"]["by_error"]
    assert restored.latency.exact == (exact_limit > 68)


# -- shards and the merge --------------------------------------------------------------------


def _inputs(d: Path) -> tuple[Path, Path, Path]:
    ctx, jobs, cfg = d / "ctx.jsonl", d / "jobs.jsonl", d / "cfg.toml"
    with open(ctx, "wb") as fh:
        for g in range(4):
            fh.write(orjson.dumps({"cache_id": f"c{g}", "system": f"{g} " + "words " * 1300}))
            fh.write(b"\n")
    with open(jobs, "wb") as fh:
        for q in range(6):
            for g in range(4):
                job = {"id": f"c{g}-q{q}", "cache_id": f"c{g}", "query": f"q{q}"}
                if q % 3 == 0:
                    job["model"] = "dear-1"
                fh.write(orjson.dumps(job) + b"\n")
        for i in range(12):
            fh.write(orjson.dumps({"id": f"loose-{i}", "query": f"loose {i}"}) + b"\n")
        fh.write(b"{not json}\n")  # a failure
    cfg.write_text(
        'model = "cheap-1"\n'
        + "".join(
            f'[prices."{m}"]\ninput = {p.input}\noutput = {p.output}\ncached_input = '
            f"{p.cached_input}\n"
            for m, p in PRICES.items()
        )
    )
    return jobs, ctx, cfg


def _shards(d: Path, n: int = 3) -> tuple[list[Path], Path]:
    jobs, ctx, cfg = _inputs(d)
    return run_shards(jobs, n, "--contexts", str(ctx), "-c", str(cfg), codes=(0, 1)), cfg


def _price_of(m: str | None) -> Price | None:
    return PRICES[m or "cheap-1"]


def _merge(d: Path, parts: list[Path], name: str) -> tuple[bytes, tuple[int, ...]]:
    rep = merge(d / f"{name}.results.jsonl", parts, price_of=_price_of)
    summary = dict(rep.summary)
    summary["shards"] = {k: v for k, v in summary["shards"].items() if k != "from_state"}
    return orjson.dumps(summary, option=orjson.OPT_SORT_KEYS), rep.from_state


def _summary_of_records(latency: Path) -> dict[str, Any]:
    b = SummaryBuilder(None, price_of=_price_of)
    for raw in latency.read_bytes().splitlines():
        b.add(orjson.loads(raw))
    return b.summary()


def test_the_merge_sums_the_shards_states_and_gets_the_records_summary(tmp_path: Path) -> None:
    parts, _ = _shards(tmp_path)
    summaries = [p.with_name(p.name.replace(".results.jsonl", ".summary.json")) for p in parts]
    assert all(state_path(s).exists() for s in summaries)
    fast, used = _merge(tmp_path, parts, "fast")
    assert used == (0, 1, 2)
    for s in summaries:
        state_path(s).unlink()
    slow, used = _merge(tmp_path, parts, "slow")
    assert used == ()
    assert fast == slow
    merged = orjson.loads(fast)
    assert merged["jobs"]["failed"] == 1 and merged["cache_hit_ratio"] > 0.1
    assert set(merged["models"]) == {"cheap-1", "dear-1"}
    assert (tmp_path / "fast.latency.jsonl").read_bytes() == (
        tmp_path / "slow.latency.jsonl"
    ).read_bytes()
    # the same as one builder over the merged latency file
    whole = _summary_of_records(tmp_path / "fast.latency.jsonl")
    assert all(merged[k] == v for k, v in whole.items() if k not in ("wall_s", "requests_per_s"))


def test_a_state_that_no_longer_describes_its_latency_file_is_not_used(tmp_path: Path) -> None:
    parts, _ = _shards(tmp_path, 2)
    latency = tmp_path / "jobs.shard-0-of-2.latency.jsonl"
    # the same size, another latency: the longest latency_ms becomes all nines (the new max)
    data = latency.read_bytes()
    found = max(re.findall(rb'"latency_ms":([0-9.]+)', data), key=len)
    nines = re.sub(rb"[0-9]", b"9", found)
    latency.write_bytes(data.replace(b'"latency_ms":' + found, b'"latency_ms":' + nines, 1))
    summary = orjson.loads(_merge(tmp_path, parts, "m")[0])
    assert _merge(tmp_path, parts, "m2")[1] == (1,)
    assert summary["latency_ms"]["max"] == float(nines)


def test_a_resumed_shard_leaves_no_state_and_its_records_are_read(tmp_path: Path) -> None:
    parts, cfg = _shards(tmp_path, 2)
    jobs, ctx = tmp_path / "jobs.jsonl", tmp_path / "ctx.jsonl"
    res = parts[0]
    lines = res.read_bytes().splitlines(keepends=True)
    res.write_bytes(b"".join(lines[: len(lines) // 2]))  # as if killed halfway
    run_shard(jobs, 0, 2, "--contexts", str(ctx), "-c", str(cfg), codes=(0, 1))
    summary0 = tmp_path / "jobs.shard-0-of-2.summary.json"
    assert not state_path(summary0).exists()  # its builder covers half the records
    fast, used = _merge(tmp_path, parts, "fast")
    assert used == (1,)
    state_path(tmp_path / "jobs.shard-1-of-2.summary.json").unlink()
    slow, used = _merge(tmp_path, parts, "slow")
    assert used == () and fast == slow
    assert orjson.loads(fast)["jobs"]["ok"] + orjson.loads(fast)["jobs"]["failed"] == len(
        (tmp_path / "fast.latency.jsonl").read_bytes().splitlines()
    )


def test_read_state_checks_its_stamp_and_shape(tmp_path: Path) -> None:
    latency, summary = tmp_path / "x.latency.jsonl", tmp_path / "x.summary.json"
    b = SummaryBuilder(None)
    rec = _records(random.Random(1), 1)[0]
    b.add(rec)
    latency.write_bytes(orjson.dumps(rec) + b"\n")
    assert write_state(summary, b, latency)
    got = read_state(summary, latency)
    assert got is not None and got.summary() == b.summary()
    with open(latency, "ab") as fh:  # a record more
        fh.write(orjson.dumps(rec) + b"\n")
    assert read_state(summary, latency) is None
    assert write_state(summary, b, latency)
    raw = state_path(summary).read_bytes()
    state_path(summary).write_bytes(raw[:-3])  # torn samples
    assert read_state(summary, latency) is None
    state_path(summary).write_bytes(b"{not json\n")
    assert read_state(summary, latency) is None
    b.add_usage(10, 0, 0, 5)  # a pre-warm is billed but has no latency record: no state
    assert not write_state(summary, b, latency)


def test_a_shard_killed_mid_run_leaves_no_state_of_its_earlier_run(tmp_path: Path) -> None:
    parts, cfg = _shards(tmp_path, 2)
    summary0 = tmp_path / "jobs.shard-0-of-2.summary.json"
    assert state_path(summary0).exists()
    slow = tmp_path / "slow.toml"
    slow.write_text(cfg.read_text() + "[mock]\nbase_ms = 300.0\n")
    jobs, ctx = tmp_path / "jobs.jsonl", tmp_path / "ctx.jsonl"
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx), "-c"]
    cmd += [str(slow), "--progress", "off", "--no-resume", "--shard", "0/2", "--concurrency", "2"]
    before = parts[0].read_bytes().count(b"\n")

    def lines() -> int:
        return parts[0].read_bytes().count(b"\n")

    proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not 2 <= lines() < before:  # the new run's
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert 2 <= lines() < before
    assert not state_path(summary0).exists()  # removed when the killed run started
    rep = merge(tmp_path / "m.results.jsonl", parts, price_of=_price_of, partial=True)
    assert rep.unfinished == (0,) and rep.from_state == (1,)
    merged = (tmp_path / "m.latency.jsonl").read_bytes().count(b"\n")
    assert rep.summary["jobs"]["ok"] + rep.summary["jobs"]["failed"] == merged
