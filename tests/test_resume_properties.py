"""Properties of resume: whatever a crash leaves, resuming and finishing writes every job once.

A crash is modelled at the level of the bytes the writer hands the OS: the flushes form one
stream (latency chunk, results chunk, latency chunk, ...), and a crash at byte ``k`` of that
stream leaves every earlier write on disk and the one in progress torn at ``k``. A real
``kill -9`` of a writing process checks the same thing end to end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.config import RunConfig
from runner.models import LatencyRecord
from runner.results import ResultLine
from runner.sinks import RETRIABLE_ERROR_CODES, Outputs, open_outputs

REPO = Path(__file__).resolve().parents[1]

job_ids = st.lists(
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=6),
    unique=True,
    max_size=30,
)
codes = st.sampled_from([None, None, "http_4xx", "timeout"])


def result(cid: str, code: str | None, line: int) -> ResultLine:
    if code is not None:
        return ResultLine("x", cid, line, error_code=code, error_message="failed")
    return ResultLine("x", cid, line, 200, None, "é" * 3)


def write(out: Outputs, cid: str, line: int, code: str | None = None) -> None:
    out.sink.write(result(cid, code, line), LatencyRecord(custom_id=cid, error_code=code))


def complete_lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "partial last line"
    return [orjson.loads(raw) for raw in data.splitlines()]


def open_(root: Path, **kw: Any) -> Outputs:
    flush_every = kw.pop("flush_every", 64)
    config = RunConfig(output=root / "r.jsonl", latency=root / "l.jsonl", **kw)
    return open_outputs(
        config, jobs_path=root / "jobs.jsonl", model="m", flush_every=flush_every, fsync=False
    )


def crash_at(out: Outputs, flush_every: int, cut: int) -> None:
    """Leave the files as a crash at byte ``cut`` of the write stream would have left them."""
    lat = out.latency_path.read_bytes().splitlines(keepends=True)
    res = out.results_path.read_bytes().splitlines(keepends=True)
    kept = {out.latency_path: b"", out.results_path: b""}
    for i in range(0, len(res), flush_every):
        for path, chunk in (
            (out.latency_path, b"".join(lat[i : i + flush_every])),
            (out.results_path, b"".join(res[i : i + flush_every])),
        ):
            kept[path] += chunk[:cut]
            cut -= min(cut, len(chunk))
    for path, data in kept.items():
        path.write_bytes(data)


def finish(root: Path, cids: list[str], *, retry_failed: bool) -> Outputs:
    """Resume and write every job not yet done, successfully this time."""
    with open_(root, retry_failed=retry_failed) as out:
        for line, cid in enumerate(cids, 1):
            if not out.done(cid):
                write(out, cid, line)
    return out


@settings(max_examples=80, deadline=None)
@given(
    cids=job_ids,
    data=st.data(),
    flush_every=st.integers(1, 5),
    retry_failed=st.booleans(),
)
def test_resume_after_any_crash_writes_every_job_exactly_once(
    cids: list[str], data: st.DataObject, flush_every: int, retry_failed: bool
) -> None:
    job_codes = [data.draw(codes) for _ in cids]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "jobs.jsonl").write_text('{"custom_id": "x"}\n')
        with open_(root, resume=False, flush_every=flush_every) as out:
            for line, (cid, code) in enumerate(zip(cids, job_codes, strict=True), 1):
                write(out, cid, line, code)
        total = out.results_path.stat().st_size + out.latency_path.stat().st_size
        crash_at(out, flush_every, data.draw(st.integers(0, total), label="cut"))

        finish(root, cids, retry_failed=retry_failed)

        res = complete_lines(out.results_path)
        assert Counter(r["custom_id"] for r in res) == Counter(cids)
        assert Counter(r["custom_id"] for r in complete_lines(out.latency_path)) == Counter(cids)
        for r in res:
            code = r["error"] and r["error"]["code"]
            if code is not None:  # a failure kept must be one this resume had no reason to retry
                assert not (retry_failed and code in RETRIABLE_ERROR_CODES)


@settings(max_examples=100, deadline=None)
@given(cids=job_ids, data=st.data())
def test_resume_after_arbitrary_truncation_keeps_results_exactly_once(
    cids: list[str], data: st.DataObject
) -> None:
    # Cuts that no crash of this writer produces (say, a disk restored from an older backup):
    # results still end exactly once, and latency never holds a job twice or one without result.
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "jobs.jsonl").write_text('{"custom_id": "x"}\n')
        with open_(root, resume=False, flush_every=3) as out:
            for line, cid in enumerate(cids, 1):
                write(out, cid, line)
        for path in (out.results_path, out.latency_path):
            blob = path.read_bytes()
            path.write_bytes(blob[: data.draw(st.integers(0, len(blob)))])

        finish(root, cids, retry_failed=False)

        assert Counter(r["custom_id"] for r in complete_lines(out.results_path)) == Counter(cids)
        latency = Counter(r["custom_id"] for r in complete_lines(out.latency_path))
        assert set(latency) <= set(cids)
        assert all(n == 1 for n in latency.values())


@settings(max_examples=100, deadline=None)
@given(order=st.permutations(range(1, 25)), flush_every=st.integers(1, 4))
def test_order_input_writes_input_order_whatever_the_completion_order(
    order: list[int], flush_every: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "jobs.jsonl").write_text('{"custom_id": "x"}\n')
        with open_(root, order="input", flush_every=flush_every) as out:
            expected = iter(range(1, 25))
            for line in order:
                # The reader announces lines ahead of the completions that need them.
                for ahead in expected:
                    assert not out.sink.done(f"j{ahead}")
                    if ahead == line:
                        break
                write(out, f"j{line}", line)
                written = [r["custom_id"] for r in complete_lines(out.results_path)]
                assert written == [f"j{i}" for i in range(1, len(written) + 1)]
        assert [r["custom_id"] for r in complete_lines(out.results_path)] == [
            f"j{i}" for i in range(1, 25)
        ]


WRITER = """
import sys
from pathlib import Path
from runner.config import RunConfig
from runner.models import LatencyRecord
from runner.results import ResultLine
from runner.sinks import open_outputs

root, n = Path(sys.argv[1]), int(sys.argv[2])
config = RunConfig(output=root / "r.jsonl", latency=root / "l.jsonl")
out = open_outputs(config, jobs_path=root / "jobs.jsonl", model="m", flush_every=7, fsync=False)
body = "x" * 3000
for i in range(n):
    cid = f"job-{i}"
    if out.done(cid):
        continue
    if i % 5 == 0:
        sys.stdin.readline()  # one token per five jobs: the test sets how far this run may get
        print(i, flush=True)
    out.write(ResultLine("x", cid, i + 1, 200, None, body), LatencyRecord(custom_id=cid))
out.close()
"""


def test_kill_9_at_random_moments_then_resume_writes_every_job_once(tmp_path: Path) -> None:
    rng = random.Random(20240605)
    n = 2000
    (tmp_path / "jobs.jsonl").write_text('{"custom_id": "x"}\n')
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(n)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert proc.stdin is not None and proc.stdout is not None
        # Hand it a few tokens of work up front, then kill it while it still has some left:
        # the kill lands while it is writing, at a moment the scheduler picks.
        tokens = rng.randint(2, 30)
        proc.stdin.write("\n" * tokens)
        proc.stdin.flush()
        for _ in range(rng.randint(1, tokens - 1)):
            assert proc.stdout.readline()
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
    # A kill may land mid-write: one partial last line is allowed (README, Reliability) and is
    # cut by the resume below, whose files must then end on a complete line.
    before = (tmp_path / "r.jsonl").read_bytes().count(b"\n")
    assert 0 < before < n  # the crashes really happened mid-run

    out = finish(tmp_path, [f"job-{i}" for i in range(n)], retry_failed=False)
    expected = Counter(f"job-{i}" for i in range(n))
    assert Counter(r["custom_id"] for r in complete_lines(out.results_path)) == expected
    assert Counter(r["custom_id"] for r in complete_lines(out.latency_path)) == expected
