"""``runner merge``'s wall is the busy time of the parts' records (runner.stats.BusyTime, the
rule ``runner report`` uses), not the span from the first record to the last: the idle time
between a resumed shard's invocations is not run time. A shard's ``S.state`` keeps its busy
intervals, so a merge from the states gets the same wall as one that parses the records."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from shard_helpers import fast_mock, query_jobs, run_shards

from runner.merge import merge, merged_paths
from runner.partstate import state_path, write_state
from runner.report import load_run
from runner.stats import SummaryBuilder

GAP_S = 30.0


@pytest.fixture(autouse=True)
def _fast_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_mock(monkeypatch, {"base_ms": 1.0, "decode_ms_per_token": 0.05})


def _shards(d: Path, n: int = 2, jobs_n: int = 20) -> list[Path]:
    return run_shards(query_jobs(d, jobs_n), n)


def _resumed_later(latency: Path, gap_s: float) -> list[dict[str, Any]]:
    """The shard's records as if its second half had been sent by a resume ``gap_s`` later."""
    recs = [orjson.loads(raw) for raw in latency.read_bytes().splitlines()]
    for rec in recs[len(recs) // 2 :]:
        for key in ("queued_at", "started_at", "ended_at"):
            if rec.get(key) is not None:
                rec[key] += gap_s
    latency.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in recs))
    return recs


def _busy(recs: list[dict[str, Any]], join_s: float = 1.0) -> float:
    """The union of the records' [queued_at, ended_at], pauses up to join_s bridged: written
    out again here, independently of runner.stats."""
    spans = sorted((r["queued_at"], max(r["ended_at"], r["queued_at"])) for r in recs)
    total, (lo, hi) = 0.0, spans[0]
    for a, b in spans[1:]:
        if a <= hi + join_s:
            hi = max(hi, b)
        else:
            total += hi - lo
            lo, hi = a, b
    return float(total + hi - lo)


def test_the_merged_wall_leaves_out_a_resumed_shards_idle_time(tmp_path: Path) -> None:
    parts = _shards(tmp_path)
    latency1 = tmp_path / "jobs.shard-1-of-2.latency.jsonl"
    moved = _resumed_later(latency1, GAP_S)
    state_path(tmp_path / "jobs.shard-1-of-2.summary.json").unlink()  # a resumed shard has none
    out = tmp_path / "all.results.jsonl"
    summary = merge(out, parts).summary
    recs = moved + [
        orjson.loads(raw)
        for raw in (tmp_path / "jobs.shard-0-of-2.latency.jsonl").read_bytes().splitlines()
    ]
    span = max(r["ended_at"] for r in recs) - min(r["queued_at"] for r in recs)
    assert span > GAP_S
    assert summary["wall_s"] == round(_busy(recs), 3)
    assert summary["wall_s"] < span - GAP_S + 1.0  # the 30 s are not run time
    assert summary["wall"]["pauses"] == 1 and summary["wall"]["idle_s"] >= GAP_S - 1.0
    done = summary["jobs"]["ok"] + summary["jobs"]["failed"]
    assert summary["requests_per_s"] == round(done / _busy(recs), 3)
    # the rule runner report applies to the merged latency file, figure for figure
    report = load_run(merged_paths(out)[1], None).summary
    assert report["wall_s"] == summary["wall_s"] and report["wall"] == summary["wall"]
    assert orjson.loads(merged_paths(out)[2].read_bytes())["wall_s"] == summary["wall_s"]


def test_a_states_busy_intervals_give_the_wall_of_its_records(tmp_path: Path) -> None:
    # A state that describes records with an idle pause inside: the merge from the states and
    # the merge from the records write the same summary, wall included.
    parts = _shards(tmp_path)
    latency0 = tmp_path / "jobs.shard-0-of-2.latency.jsonl"
    summary0 = tmp_path / "jobs.shard-0-of-2.summary.json"
    recs = _resumed_later(latency0, GAP_S)
    b = SummaryBuilder(None)
    for rec in recs:
        b.add(rec)
    assert write_state(summary0, b, latency0)
    from_states = merge(tmp_path / "a.results.jsonl", parts)
    assert from_states.from_state == (0, 1)
    for k in range(2):
        state_path(tmp_path / f"jobs.shard-{k}-of-2.summary.json").unlink()
    from_records = merge(tmp_path / "b.results.jsonl", parts)
    assert from_records.from_state == ()
    a, r = dict(from_states.summary), dict(from_records.summary)
    a["shards"], r["shards"] = {**a["shards"], "from_state": []}, {**r["shards"], "from_state": []}
    assert a == r
    assert a["wall"]["pauses"] >= 1 and a["wall"]["idle_s"] >= GAP_S - 1.0


def test_a_shard_keeps_its_busy_intervals_as_it_goes_and_they_are_the_records_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S.state's intervals come from the shard's own builder, not from reading its latency file
    # back at the end (2.7 us a record, in the serial tail of every --workers run) ...
    from runner import partstate

    def no_read_back(latency: Path) -> None:
        raise AssertionError(f"read back {latency}")

    monkeypatch.setattr(partstate, "busy_spans", no_read_back)
    parts = _shards(tmp_path, jobs_n=40)
    monkeypatch.undo()
    # ... and they are what reading the records back gives
    for part in parts:
        _, latency, summary = merged_paths(part)
        got = partstate.read_part(summary, latency)
        assert got is not None
        assert got[1] == partstate.busy_spans(latency) and got[1]
