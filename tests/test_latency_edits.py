"""What a hand edit of the latency file does (docs/FORMATS.md, "Latency records"): it is the
source of the whole-output summary a re-run rebuilds, so an edited record changes the summary
and the exit code; the results file alone decides what is sent again. Putting the record back
undoes it. (A crash's torn or cut tail is another matter: tests/test_resume_properties.py.)"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from promise_helpers import load, run_fast, write_jobs


def test_an_edited_record_changes_the_rebuilt_summary_and_exit_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    assert run_fast(capsys, jobs, "-q")[0] == 0
    results = tmp_path / "jobs.results.jsonl"
    latency = tmp_path / "jobs.latency.jsonl"
    good_latency, good_results = latency.read_bytes(), results.read_bytes()
    lines = good_latency.splitlines()
    rec = orjson.loads(lines[1])
    rec |= {"outcome": "error", "error_code": "timeout"}
    latency.write_bytes(b"\n".join([lines[0], orjson.dumps(rec), *lines[2:]]) + b"\n")

    code, err = run_fast(capsys, jobs, "-q")
    assert code == 1, err
    summary = load(tmp_path / "jobs.summary.json")
    assert summary["jobs"]["ok"] == 3 and summary["jobs"]["by_error"] == {"timeout": 1}
    assert summary["this_run"]["ok"] == 0  # nothing was sent: R has every job
    # --retry-failed reads R, where that job succeeded: nothing to send, still exit 1
    assert run_fast(capsys, jobs, "-q", "--retry-failed")[0] == 1
    assert results.read_bytes() == good_results

    latency.write_bytes(good_latency)  # the record put back
    assert run_fast(capsys, jobs, "-q")[0] == 0
    assert load(tmp_path / "jobs.summary.json")["jobs"]["ok"] == 4
