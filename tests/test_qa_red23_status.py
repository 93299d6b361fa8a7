"""Red team of ``runner status``'s exit codes: a stale summary beside the results, a
``--workers`` run before its merge, and lock files of garbage."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner import cli


def _status(capsys: pytest.CaptureFixture[str], results: Path) -> tuple[int, str]:
    capsys.readouterr()
    code = cli.main(["status", str(results)])
    return code, capsys.readouterr().out


def test_a_summary_written_elsewhere_is_not_read_from_an_earlier_runs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # R.summary.json of an earlier run that ended with every job done stayed beside R when the
    # next run, given --summary elsewhere, failed: status said 0 ("done") on the old file.
    jobs = write_jobs(tmp_path, 4)
    config = str(fast_config(tmp_path))
    out = tmp_path / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0
    assert _status(capsys, out)[0] == 0
    summary = tmp_path / "r.summary.json"
    for path in (out, summary):  # the first run ended a while ago
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))
    with jobs.open("ab") as fh:
        fh.write(b"{not json\n")
    elsewhere = str(tmp_path / "elsewhere.json")
    code, _ = cli_run(
        capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q", "--summary", elsewhere
    )
    assert code == 1
    code, said = _status(capsys, out)
    assert code == 1, said
    assert "the results were written after it" in said


def test_a_workers_run_before_its_merge_is_running_not_unknown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A --workers run holds R.lock while its shards write R.shard-K-of-N.jsonl; R and its
    # meta file come at the merge. status said 2, "not a runner output", while it ran and
    # after it was killed -9.
    out = tmp_path / "r.jsonl"
    lock = tmp_path / "r.jsonl.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid} {socket.gethostname()}\n")
        code, said = _status(capsys, out)
        assert code == 3, said
        assert f"running: yes, pid {holder.pid}" in said
    finally:
        holder.kill()
        holder.wait()
    code, said = _status(capsys, out)
    assert code == 1, said
    assert "(not running)" in said
    lock.unlink()
    assert cli_run(capsys, "status", str(out))[0] == 2  # no lock either: not an output


@pytest.mark.parametrize("garbage", ["99999999999999999999999 {host}", "\u00b2 {host}"])
def test_a_lock_file_of_garbage_is_no_holder_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], garbage: str
) -> None:
    # int('²') raised ValueError ('²'.isdigit() is true), os.kill(10**22, 0) OverflowError:
    # status and a run taking the lock over printed a traceback.
    jobs = write_jobs(tmp_path, 3)
    config = str(fast_config(tmp_path))
    out = tmp_path / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0
    lock = tmp_path / "r.jsonl.lock"
    lock.write_text(garbage.format(host=socket.gethostname()) + "\n")
    code, said = _status(capsys, out)
    assert code == 1, said
    assert "left by pid unknown" in said
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0


def test_a_fifo_at_the_lock_name_does_not_hang_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    config = str(fast_config(tmp_path))
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0
    os.mkfifo(tmp_path / "r.jsonl.lock")
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(out)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("name", "code"), [("r.summary.json", 1), ("r.jsonl.meta.json", 1), ("r.jsonl", 2)]
)
def test_a_fifo_at_an_outputs_name_does_not_hang_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, code: int
) -> None:
    # Each was read with a blocking open: status waited for a writer, forever (a sensor that
    # polls it hung with it). A summary or meta file that is no file says nothing (1); a
    # results path that is none is no runner output (2).
    jobs = write_jobs(tmp_path, 3)
    out = tmp_path / "r.jsonl"
    config = str(fast_config(tmp_path))
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0
    (tmp_path / name).unlink()
    os.mkfifo(tmp_path / name)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(out)],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr


def test_jobs_without_a_result_are_not_done_whatever_the_last_summary_says(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The status line said "2 without a result" and the exit code said 0, done: jobs added to
    # the input after the last run (the next day's), or results cut from R (a `head` by hand).
    jobs = write_jobs(tmp_path, 4)
    config = str(fast_config(tmp_path))
    out = tmp_path / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out), "-q")[0] == 0
    assert _status(capsys, out)[0] == 0
    whole = jobs.read_bytes()
    jobs.write_bytes(whole + b'{"id": "later", "query": "q"}\n')
    code, said = _status(capsys, out)
    assert code == 1 and "1 without a result" in said, said
    jobs.write_bytes(whole)
    assert _status(capsys, out)[0] == 0
    results = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(results[:-1]))
    st = (tmp_path / "r.summary.json").stat()  # as if cut before the summary was written
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    assert _status(capsys, out)[0] == 1


def test_a_workers_rerun_that_sent_nothing_is_still_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The merge of a re-run that sent nothing writes R again but keeps the summary (the one of
    # the run that did the work): a summary older than its results must not then read as an
    # earlier run's.
    jobs = write_jobs(tmp_path, 6)
    config = str(fast_config(tmp_path))
    out = tmp_path / "r.jsonl"
    argv = ["run", str(jobs), "-c", config, "-o", str(out), "-q", "--workers", "2"]
    argv += ["--concurrency", "2"]
    assert cli_run(capsys, *argv)[0] == 0
    summary = tmp_path / "r.summary.json"
    kept = summary.read_bytes()
    for path in (out, summary):  # the first run ended a while ago
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - 10**10))
    assert cli_run(capsys, *argv)[0] == 0
    assert summary.read_bytes() == kept  # kept, so the check below means it
    code, said = _status(capsys, out)
    assert code == 0, said
