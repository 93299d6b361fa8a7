"""Found by the fifth red team (scale-out paths): each test failed on the code before its fix."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from runner.cli import main
from runner.config import RunConfig
from runner.limits import RateController
from runner.models import Attempt, RateInfo
from runner.redis_limits import (
    FileStore,
    Grant,
    SharedLimiter,
    StoreUnavailable,
    open_shared_limiter,
)
from runner.sinks import acquire_lock, release_lock

ROOT = Path(__file__).resolve().parent.parent


def _fast_cfg(d: Path) -> Path:
    """``d/cfg.toml``: the built-in mock, answering in a few ms."""
    cfg = d / "cfg.toml"
    cfg.write_text("[mock]\nbase_ms = 5.0\ndecode_ms_per_token = 0.1\n")
    return cfg


def _two_jobs(d: Path) -> tuple[Path, Path]:
    """``d/jobs.jsonl`` (ids a and b) and :func:`_fast_cfg`."""
    jobs = d / "jobs.jsonl"
    jobs.write_bytes(b'{"id":"a","query":"x"}\n{"id":"b","query":"y"}\n')
    return jobs, _fast_cfg(d)


def _two_shards(d: Path, *flags: str) -> str:
    """:func:`_two_jobs` run as ``--shard 0/2`` and ``1/2`` (with ``flags``); the glob of the
    shards' results (the default output names)."""
    jobs, cfg = _two_jobs(d)
    for k in range(2):
        assert main(["run", str(jobs), "-c", str(cfg), "-q", *flags, "--shard", f"{k}/2"]) == 0
    return str(d / "jobs.shard-*-of-2.results.jsonl")


async def test_a_store_that_forgot_a_learned_limit_is_taught_again_not_a_traceback(
    tmp_path: Path,
) -> None:
    """No --rpm: the limit was learned from headers. Redis restarted (or the limit file started
    afresh, or the learned limit aged out) answers the next lease at rate 0; that divided by
    zero and ended the run with a traceback (exit 1). The lease goes on at the rate this
    process learned, and the store is taught it again."""
    path = tmp_path / "limits.json"
    lim = SharedLimiter(
        RateController(concurrency=64, rpm=None, tpm=None),
        FileStore(path, "p"),
        rpm=None,
        tpm=None,
        lease_s=0.25,
        policy="fail_closed",
    )
    lim.release(1, Attempt(status=200, rate=RateInfo(limit_requests=6000.0)))
    await asyncio.sleep(0.05)  # the learned limit is published
    assert orjson.loads(path.read_bytes())["lim_r"] == 6000.0
    await lim.acquire(1)  # a lease at the learned rate: 25 requests
    path.write_bytes(b"{}")  # the store restarted: it knows no limit
    for _ in range(60):  # past the lease in hand: the next lease is granted at rate 0
        await asyncio.wait_for(lim.acquire(1), 5)
    await asyncio.sleep(0.05)
    assert orjson.loads(path.read_bytes())["lim_r"] == 6000.0, "the store was not taught again"
    assert lim.report()["rpm"] == 6000.0
    await lim.aclose()


def test_a_shard_count_past_any_orchestrator_is_exit_2_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--shard 0/99999999999999999999`` created the outputs, then the manifest's count did
    not fit 64 bits: a traceback, exit 1, and a shard's files left behind."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"custom_id": "a", "body": {"messages": [{"role": "user", "content": "q"}]}}')
    huge = "99999999999999999999"
    assert main(["run", str(jobs), "-q", "--shard", f"0/{huge}"]) == 2
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    assert main(["run", str(jobs), "-q", "--shard-count", huge]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.jsonl"]


def test_the_merged_summary_of_workers_keeps_the_shared_limit_and_the_limiter_labels(
    tmp_path: Path,
) -> None:
    """Each worker's summary has its ``shared_limit`` section (store, leases, outages: how a
    Redis outage was lived through) and ``limiter_wait_summed``; the merged summary, the one a
    ``--workers`` user reads, had neither."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"j{i}", "query": f"q {i}?"}) + b"\n" for i in range(40))
    )
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--workers", "2", "--rpm", "6000"]
    r = subprocess.run([*cmd, "-q"], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    parts = [
        orjson.loads((tmp_path / f"jobs.shard-{k}-of-2.summary.json").read_bytes()) for k in (0, 1)
    ]
    merged = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    shared = merged["shared_limit"]
    assert shared["store"] == "file" and shared["rpm"] == 6000.0
    assert shared["leases"] == sum(p["shared_limit"]["leases"] for p in parts) > 0
    assert merged["limiter_wait_summed"] is True
    done = merged["jobs"]["ok"] + merged["jobs"]["failed"]
    assert merged["limiter_wait_mean_ms"] == round(merged["limiter_wait_s"] * 1000.0 / done, 3)


def test_a_merge_by_hand_is_refused_while_a_run_writes_its_output_even_with_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``runner merge OUT parts --force`` while a run (here: its lock, as a live run holds it)
    was writing OUT replaced OUT under it: the run's answers went on into the unlinked file."""
    parts = _two_shards(tmp_path)
    out = tmp_path / "out" / "run.results.jsonl"
    out.parent.mkdir()
    out.write_bytes(b'{"custom_id":"being written"}\n')
    capsys.readouterr()
    for locked in (out, out.with_name("run.summary.json")):
        lock = locked.with_name(locked.name + ".lock")
        fd = acquire_lock(lock, locked)
        try:
            assert main(["merge", str(out), parts, "--force"]) == 2
        finally:
            release_lock(lock, fd)
        assert "being written by another runner" in capsys.readouterr().err
        assert out.read_bytes() == b'{"custom_id":"being written"}\n'
    assert main(["merge", str(out), parts, "--force"]) == 0  # free again: replaced as asked
    assert len(out.read_bytes().splitlines()) == 2
    assert not list(out.parent.glob("*.lock")), "the merge left its locks behind"


def test_a_merge_of_shards_that_read_different_contexts_is_refused_naming_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contexts file was edited between two shards' runs: a cache group is keyed by its
    text, so groups moved between shards, and the merge either claimed an id twice or, with
    no id in both, exited 0 with jobs that neither shard sent (22 of 40 on the examples) and
    answers from two different contexts."""
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_bytes(
        b"".join(
            orjson.dumps({"cache_id": f"c{g}", "system": f"context {g}: " + "text " * 40}) + b"\n"
            for g in range(8)
        )
    )
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(
            orjson.dumps({"id": f"j{i}", "cache_id": f"c{i % 8}", "query": f"q {i}?"}) + b"\n"
            for i in range(32)
        )
    )
    cfg = _fast_cfg(tmp_path)
    args = ["run", str(jobs), "--contexts", str(ctx), "-c", str(cfg), "-q"]
    assert main([*args, "--shard", "0/2"]) == 0
    ctx.write_bytes(ctx.read_bytes().replace(b"context ", b"edited context "))
    assert main([*args, "--shard", "1/2"]) == 0
    capsys.readouterr()
    out = tmp_path / "m.results.jsonl"
    assert main(["merge", str(out), str(tmp_path / "jobs.shard-*-of-2.results.jsonl")]) == 2
    assert "contexts file" in capsys.readouterr().err
    assert not out.exists()


def test_a_merge_by_hand_names_its_latency_and_summary_as_a_run_does(tmp_path: Path) -> None:
    """``-o out.jsonl`` writes ``out.latency.jsonl`` and ``out.summary.json``; ``runner merge
    out.jsonl`` wrote ``out.jsonl.latency.jsonl`` and ``out.jsonl.summary.json`` beside them,
    so the directory held two summaries of the same run."""
    out = tmp_path / "out.jsonl"
    _two_shards(tmp_path, "-o", str(out))
    assert main(["merge", str(out), str(tmp_path / "out.shard-*-of-2.jsonl")]) == 0
    assert len(out.read_bytes().splitlines()) == 2
    assert len((tmp_path / "out.latency.jsonl").read_bytes().splitlines()) == 2
    assert orjson.loads((tmp_path / "out.summary.json").read_bytes())["jobs"]["ok"] == 2
    assert not (tmp_path / "out.jsonl.latency.jsonl").exists()
    assert not (tmp_path / "out.jsonl.summary.json").exists()


def test_a_lease_longer_than_the_longest_span_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A lease is waited for (past the 1 s burst) before it is spent: ``--lease-s 20 --workers
    2`` held a 3-job run at 600 RPM for 40 s (the default: 1.2 s), with no word why."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id":"a","query":"x"}\n')
    args = ["run", str(jobs), "-q", "--rpm", "600", "--lease-s"]
    assert main([*args, "20"]) == 2
    assert "lease_s must be > 0 and at most 2 s" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["jobs.jsonl"]
    assert main([*args, "2", "-o", str(tmp_path / "out.results.jsonl")]) == 0


def test_workers_with_no_provider_say_the_replies_are_synthetic_once(tmp_path: Path) -> None:
    """A plain run with no provider says so on stderr (issue 9); ``--workers`` said nothing in
    text mode (its workers run quiet), so a user saw fake answers merged without a word."""
    jobs, cfg = _two_jobs(tmp_path)
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(cfg), "--workers", "2"]
    r = subprocess.run([*cmd, "--progress", "off"], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert r.stderr.decode().count("built-in simulated provider") == 1
    r = subprocess.run([*cmd, "--provider", "mock"], cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0 and b"simulated provider" not in r.stderr


class _DownStore:
    """A store that never answers (Redis unreachable from the start)."""

    name = "redis"

    async def take(self, *_a: object, **_k: object) -> Grant:
        raise StoreUnavailable("ConnectionError: refused")

    async def publish(self, **_k: object) -> None:
        raise StoreUnavailable("ConnectionError: refused")

    async def leave(self) -> None:
        raise StoreUnavailable("ConnectionError: refused")

    async def close(self) -> None:
        return None


async def test_fail_open_from_the_start_splits_the_rate_over_the_shards_and_counts_the_outage(
    tmp_path: Path,
) -> None:
    """``--workers 4 --redis-policy fail_open`` with Redis down from the start: each worker
    split the rate over the processes the store had counted, none, so each took the whole rate
    (80 jobs at 600 RPM in 2.0 s instead of 7.2 s: four times the limit). And ``degraded_s``
    said 0 for an outage that lasted the whole run (counted only when it ended)."""
    config = RunConfig(
        rpm=600.0, limit_file=tmp_path / "l.json", redis_policy="fail_open", shard="1/4"
    )
    local = RateController(concurrency=8, rpm=None, tpm=None)
    async with open_shared_limiter(
        config, base_url="http://x/v1", api_key=None, local=local
    ) as lim:
        lim.store = _DownStore()
        await asyncio.wait_for(lim.acquire(1), 5)
        assert lim._fallback["r"].per_minute == 600.0 / 4
        await asyncio.sleep(0.2)
        rep = lim.report()
        assert rep["outages"] == 1 and rep["degraded_s"] >= 0.2
    assert lim.report()["degraded_s"] == pytest.approx(rep["degraded_s"], abs=0.1)  # once


def test_a_merge_into_a_path_ending_in_slash_is_refused_not_a_file_named_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``runner merge newdir/ parts`` wrote a FILE named ``newdir`` (and ``newdir.latency.jsonl``
    beside it): argparse's Path dropped the slash. It is exit 2, as ``--latency d1/`` is (and
    as an existing directory for OUT is)."""
    parts = _two_shards(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "merge",
                str(tmp_path / "merged") + "/",
                parts,
            ]
        )
    assert exc.value.code == 2
    assert "give a file name, not a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("sidecar", [".results.jsonl.meta.json", ".results.jsonl.shard.json"])
def test_a_merge_never_writes_over_a_shards_meta_file_or_manifest_even_with_force(
    tmp_path: Path, sidecar: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its results, latency and summary were refused as OUT; ``runner merge
    X.shard-0-of-2.results.jsonl.meta.json parts --force`` replaced shard 0's meta file with
    the merged results, so shard 0 could no longer be resumed as it was written."""
    parts = _two_shards(tmp_path)
    target = tmp_path / f"jobs.shard-0-of-2{sidecar}"
    before = target.read_bytes()
    capsys.readouterr()
    assert main(["merge", str(target), parts, "--force"]) == 2
    assert "choose another output path" in capsys.readouterr().err
    assert target.read_bytes() == before


@pytest.mark.parametrize("which", ["results.jsonl", "latency.jsonl", "summary.json"])
def test_a_merge_refuses_an_out_that_is_not_a_regular_file(
    tmp_path: Path, which: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A FIFO (or, as root, a device such as /dev/null) at OUT or at its latency or summary
    path was replaced by the merge's rename, or blocked it; a run refuses them
    (runner/outputs.py), and so does ``runner merge``, before it writes anything."""
    parts = _two_shards(tmp_path)
    out = tmp_path / "m.results.jsonl"
    target = tmp_path / f"m.{which}"
    os.mkfifo(target)
    capsys.readouterr()
    assert main(["merge", str(out), parts]) == 2
    assert "is not a regular file" in capsys.readouterr().err
    assert stat.S_ISFIFO(target.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.glob("m.*")) == [target.name]


def test_holds_no_jobs_is_said_of_the_file_by_the_run_never_by_a_shard(tmp_path: Path) -> None:
    """``--workers 4 --log-format json`` over 3 jobs: a worker whose shard was empty warned
    "jobs.jsonl holds no jobs" of a file that holds 3; and ``--workers`` over an empty file
    said nothing in text mode (a plain run warns, issue 9)."""
    cfg = _fast_cfg(tmp_path)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(b'{"id":"j%d","query":"q %d?"}\n' % (i, i) for i in range(3)))
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    base = [sys.executable, "-m", "runner", "run", "-c", str(cfg), "--progress", "off"]
    for path, fmt, said in ((jobs, "json", 0), (empty, "text", 1), (empty, "json", 1)):
        cmd = [*base, str(path), "--workers", "4", "--concurrency", "8", "--log-format", fmt]
        out = tmp_path / f"{path.stem}-{fmt}"
        r = subprocess.run([*cmd, "-o", f"{out}/"], cwd=ROOT, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        assert r.stderr.decode().count("holds no jobs") == said, (path, fmt, r.stderr.decode())
