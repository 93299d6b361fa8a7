"""Problems a second user-level QA pass found, each pinned by the test that would have caught it."""

from __future__ import annotations

from pathlib import Path

import orjson
from test_shards import _fast_mock_config, _ids, _workers, _write_input

ROOT = Path(__file__).resolve().parent.parent
CONTEXTS = ROOT / "examples" / "contexts.jsonl"


def test_workers_with_order_input_write_the_results_in_input_order(tmp_path: Path) -> None:
    # Found by QA: `--workers 3 --order input` wrote the merged results shard after shard (each
    # shard in input order, the whole not), so the option was silently ignored. The input has a
    # duplicate id and a bad line, whose results are keyed by their line number.
    jobs, ctx = _write_input(tmp_path)
    with open(jobs, "ab") as fh:
        fh.write(b'{"id": "c0-q0", "query": "a duplicate id"}\n')
        fh.write(b'{"id": "tail", "query": "the last line"}\n')
    keys = []
    for n, raw in enumerate(jobs.read_bytes().splitlines(), 1):
        try:
            key = orjson.loads(raw)["id"]
        except orjson.JSONDecodeError:
            key = None
        keys.append(f"line:{n}" if key is None or key in keys else key)
    r = _workers(jobs, ctx, 3, "--order", "input")
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the bad line and the duplicate
    assert _ids(tmp_path / "jobs.results.jsonl") == keys
    # resumed (nothing to send) and merged again: still in input order
    r = _workers(jobs, ctx, 3, "--order", "input")
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    assert _ids(tmp_path / "jobs.results.jsonl") == keys


def _table(tmp_path: Path, lines: list[dict[str, str]]) -> str:
    import asyncio

    import runner
    from runner.config import load_config
    from runner.report import render_summary

    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    config = load_config(ROOT / "configs" / "mock.toml").with_overrides(
        mock={"latency": "zero"}, progress="off", contexts=ROOT / "examples" / "contexts.jsonl"
    )
    outcome = asyncio.run(runner.run(jobs, config))
    assert outcome.exit_code == 0
    return " ".join(render_summary(outcome.summary).split())


def test_cache_ctl_line_claims_no_learned_limits_without_groups(tmp_path: Path) -> None:
    # Found by QA: 20 jobs without a cache_id ran 20 at a time, yet the table said
    # "cache ctl 1 groups x 1 in flight each (learned, unknown cache)": the probe's starting
    # limits, which nothing ever used, shown as learned.
    table = _table(tmp_path, [{"id": f"n{i}", "query": f"question {i}"} for i in range(20)])
    assert "cache ctl nothing learned (no follower answer to learn from)" in table, table
    assert "learned, unknown" not in table


def test_cache_ctl_line_says_no_verdict_when_groups_are_too_small(tmp_path: Path) -> None:
    # Found by QA: groups of one or two jobs never release two followers together, so the
    # shape stays unknown and the scheduler keeps the fixed limits, shown as "learned".
    ids = [orjson.loads(raw)["cache_id"] for raw in (CONTEXTS).read_bytes().splitlines()]
    lines = [
        {"id": f"s{i}-{j}", "cache_id": cid, "query": f"q {j}"}
        for i, cid in enumerate(ids)
        for j in range(1 + i % 2)
    ]
    table = _table(tmp_path, lines)
    assert "in flight each (no verdict, fixed limits)" in table, table
    assert "learned, unknown" not in table


def test_workers_summary_says_when_who_and_how_it_ended(tmp_path: Path) -> None:
    # Found by QA: the merged summary of a --workers run (the run's own summary, also what
    # `--summary -` prints) had no provider, model, base_url_host, runner_version,
    # started_at/ended_at, stopped or exit_code, which README promises of every summary.
    jobs, ctx = _write_input(tmp_path)
    r = _workers(jobs, ctx, 2)
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the one bad line
    s = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    part = orjson.loads((tmp_path / "jobs.shard-0-of-2.summary.json").read_bytes())
    for key in ("provider", "model", "base_url_host", "runner_version"):
        assert s[key] == part[key], key
    assert s["provider"] == "mock" and s["runner_version"]
    assert s["started_at"] <= part["started_at"] <= part["ended_at"] <= s["ended_at"]
    assert s["stopped"] is None and s["exit_code"] == 1


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    # Found by QA: after `kill -9` of a --workers parent its workers ran on unsupervised (and
    # kept spending), and re-running the command was refused while they held their locks. Each
    # worker now gets SIGTERM when its parent dies: it drains, and a re-run resumes and merges.
    import os
    import signal
    import subprocess
    import sys
    import time

    jobs, ctx = _write_input(tmp_path, groups=4, per=40)
    slow = tmp_path / "slow.toml"
    slow.write_text("concurrency = 2\n[mock]\nbase_ms = 200.0\n")
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx)]
    cmd += ["-c", str(slow), "--progress", "off", "--workers", "2", "-q"]
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    # Orphans come to this process (PR_SET_CHILD_SUBREAPER), so it can reap them: whether the
    # container's init reaps zombies does not matter.
    assert libc.prctl(36, 1, 0, 0, 0) == 0
    try:
        parent = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
        locks = [tmp_path / f"jobs.shard-{k}-of-2.results.jsonl.lock" for k in range(2)]
        deadline = time.monotonic() + 30
        while not all(lock.exists() and lock.read_text().strip() for lock in locks):
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        pids = [int(lock.read_text().split()[0]) for lock in locks]
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        left = set(pids)
        deadline = time.monotonic() + 15
        while left and time.monotonic() < deadline:
            left = {pid for pid in left if os.waitpid(pid, os.WNOHANG)[0] == 0}
            time.sleep(0.05)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    finally:
        libc.prctl(36, 0, 0, 0, 0)
    assert not left, "workers outlived their parent"
    fast = [*cmd, "-c", str(_fast_mock_config(tmp_path)), "--concurrency", "64"]
    r = subprocess.run(fast, cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the one bad line
    ids = _ids(tmp_path / "jobs.results.jsonl")
    assert len(ids) == len(set(ids)) == 4 * 40 + 10 + 1


def test_workers_refuse_to_start_over_shards_of_another_count(tmp_path: Path) -> None:
    # Found by QA: `--workers 3` after a finished `--workers 2` on the same output sent every
    # job again (a new set of shards, nothing to resume from) and merged over the paid results.
    jobs, ctx = _write_input(tmp_path)
    r = _workers(jobs, ctx, 2)
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = _workers(jobs, ctx, 3)
    assert r.returncode == 2, r.stderr.decode()[-2000:]
    assert b"--workers 2" in r.stderr, r.stderr
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert after == before  # nothing touched


def test_workers_name_a_bad_contexts_file_once(tmp_path: Path) -> None:
    # Found by QA: each of N workers read the contexts file and printed the same error, then
    # the parent added "a worker stopped with exit code 2": N + 1 lines for one bad line.
    jobs, ctx = _write_input(tmp_path)
    ctx.write_text("{not json\n")
    r = _workers(jobs, ctx, 3)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.count("ctx.jsonl:1: invalid JSON") == 1 and "a worker stopped" not in err, err
    assert not list(tmp_path.glob("jobs.shard-*"))
