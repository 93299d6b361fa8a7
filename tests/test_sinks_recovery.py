"""Crash recovery the sinks promise beyond the basics of ``test_sinks.py``.

* ``--order input`` holds finished results in memory until the jobs before them end; a crash
  (simulated by abandoning the open files without ``close``) must lose none of them.
* A bad line without an id of its own is keyed by its line number, so its error can never stand
  in for a real job's result on resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from sink_helpers import crash, ten_jobs

from runner.config import RunConfig
from runner.models import LatencyRecord
from runner.results import ResultLine
from runner.sinks import Outputs, open_outputs


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return ten_jobs(tmp_path)


def open_(jobs: Path, **config: Any) -> Outputs:
    return open_outputs(RunConfig(**config), jobs_path=jobs, model="m", flush_every=1, fsync=False)


def put(out: Outputs, cid: str | None, line: int, code: str | None = None) -> None:
    res = ResultLine("x", cid, line, error_code=code, error_message=None if code is None else "m")
    out.sink.write(res, LatencyRecord(custom_id=cid, error_code=code))


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def keys(path: Path) -> list[Any]:
    return [r["custom_id"] if r["custom_id"] is not None else r["line"] for r in rows(path)]


@pytest.mark.parametrize("order", ["input", "completion"])
def test_order_input_crash_loses_no_finished_result(jobs: Path, order: str) -> None:
    out = open_(jobs, order="input")
    for line in range(1, 6):
        assert not out.sink.done(f"j{line}")
    for line in (2, 3, 4, 5):  # job 1 stalls: 2-5 are answered, paid for and held
        put(out, f"j{line}", line)
    assert keys(out.results_path) == []
    crash(out)

    with open_(jobs, order=order) as again:
        sent = []
        for line in range(1, 8):
            cid = f"j{line}"
            if again.sink.done(cid):
                continue
            sent.append(cid)
            put(again, cid, line)
    assert sent == ["j1", "j6", "j7"]  # only the stalled job and the unread ones go out again
    want = [f"j{i}" for i in range(1, 8)]
    got = keys(again.results_path)
    assert (got if order == "input" else sorted(got)) == want
    assert sorted(keys(again.latency_path)) == sorted(want)
    assert not again.pending_path or not again.pending_path.exists()


def test_order_input_journal_is_emptied_when_nothing_is_held(jobs: Path) -> None:
    out = open_(jobs, order="input")
    assert not out.sink.done("j1")
    assert not out.sink.done("j2")
    put(out, "j2", 2)
    assert out.pending_path is not None and out.pending_path.stat().st_size > 0
    put(out, "j1", 1)
    assert out.pending_path.stat().st_size == 0  # all of it is in R now
    out.close()
    assert not out.pending_path.exists()


def test_line_keyed_bad_line_never_counts_as_the_job_with_that_id(jobs: Path) -> None:
    """A duplicate of j1 (line 5) fails at read time, before j1 itself has an answer; after
    an interrupt, j1 must still be sent. Nor may a job whose id is "line-5" be skipped."""
    out = open_(jobs)
    put(out, None, 5, "invalid_input")
    out.close()
    lat = rows(out.latency_path)
    assert lat[0]["custom_id"] is None and lat[0]["line"] == 5
    with open_(jobs, retry_failed=True) as again:
        assert not again.done("j1") and not again.done("line-5")
        assert again.done(5)  # the bad line itself is not reported twice
        put(again, "j1", 1)
    assert keys(again.results_path) == [5, "j1"]
    assert keys(again.latency_path) == [5, "j1"]


def test_report_reads_a_line_keyed_latency_record_without_a_warning(jobs: Path) -> None:
    from runner.report import read_records

    with open_(jobs) as out:
        put(out, None, 5, "invalid_input")
        put(out, "j1", 1)
    warnings: list[str] = []
    recs = list(read_records(out.latency_path, warn=lambda p, n, why: warnings.append(why)))
    assert warnings == [] and [
        r["line"] if r["custom_id"] is None else r["custom_id"] for _, r in recs
    ] == [5, "j1"]
