"""What the operator QA of scheduled runs (cron, Kubernetes, Airflow) reported and left unfixed.

Each test names the defect it holds fixed: ``--progress log`` that ignored ``--log-interval``,
a no-op re-run that replaced the real run's summary and metrics, a warning printed before an
error that ends the run, and a full disk that was exit 1.
"""

from __future__ import annotations

import errno
import io
import os
import re
from pathlib import Path

import pytest
from metrics_helpers import samples
from promise_helpers import cli_run, fast_config, lines, load, write_jobs

from runner.pipeline import LiveStats
from runner.progress import ProgressDisplay, make_progress

PROGRESS_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[runner\] \d+/\d+ done, ", re.M)


# -- --progress log honours --log-interval -----------------------------------------------------


def test_the_progress_log_writes_a_line_every_log_interval_on_its_clock() -> None:
    out = io.StringIO()
    now = [100.0]
    display = ProgressDisplay("log", out, interval_s=2.0, clock=lambda: now[0])
    written = []
    for t in (100.5, 101.9, 102.0, 103.0, 103.9, 104.1, 110.0):
        now[0] = t
        display.tick(LiveStats(total=10, done=1))
        written.append(len(PROGRESS_LINE.findall(out.getvalue())))
    # a line once 2 s have passed since the last one (or the start), never in between
    assert written == [0, 0, 1, 1, 1, 2, 3]
    shown = make_progress("log", out, interval_s=0.25)
    assert shown is not None and shown._interval == 0.25


@pytest.mark.parametrize("where", ["flag", "config"])
def test_progress_log_honours_the_log_interval_flag_and_config_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    # Found by QA: `--progress log --log-interval 1` in a cron job still logged every 5 s (the
    # display had its own constant; only the JSON progress events read the setting).
    jobs = write_jobs(tmp_path, 2)
    slow = fast_config(tmp_path, "log_interval_s = 0.05\n" if where == "config" else "")
    slow.write_text(slow.read_text().replace('latency = "zero"', "base_ms = 1200.0\njitter = 0.0"))
    flag = ["--log-interval", "0.05"] if where == "flag" else []
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(slow), "--progress", "log", *flag)
    assert code == 0, err
    # About 1.2 s at a 0.2 s tick: a line on (nearly) every tick; at 5 s, none.
    assert len(PROGRESS_LINE.findall(err)) >= 3, err


# -- an error that stops the run is its one message --------------------------------------------

SIMULATED = "no provider configured: using the built-in simulated provider"


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--contexts", "missing.jsonl"], "missing.jsonl: cannot open"),
        (["--max-cost", "1"], "--max-cost 1.0 needs a price for every model"),
        (["-o", "file/x.jsonl"], "file/x.jsonl: file is not a directory"),
        (["--model", "other"], "it was written with model 'mock-1', not 'other'"),
        (["--via", "batch", "--contexts", "missing.jsonl"], "missing.jsonl: cannot open"),
    ],
)
@pytest.mark.parametrize("log_format", ["text", "json"])
def test_an_error_before_the_run_starts_is_the_only_message(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    error: str,
    log_format: str,
) -> None:
    # Found by QA: with no provider named, "warning: no provider configured" came first and
    # the error that stopped the run second; a scheduler's alert shows the first line.
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 2)
    (tmp_path / "file").write_text("a file where a directory is asked for\n")
    resumed = "--model" in flags  # outputs of another model: refused once they are opened
    if resumed:
        assert cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "-q")[0] == 0
    args = ["run", str(jobs), "--progress", "off", "--log-format", log_format, *flags]
    code, err = cli_run(capsys, *args)
    assert code == 2
    assert len(err.splitlines()) == 1 and error in err and SIMULATED not in err, err
    assert (tmp_path / "jobs.results.jsonl").exists() == resumed  # untouched


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_run_that_starts_still_says_once_that_replies_are_simulated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    args = ["run", str(jobs), "--progress", "off", "--log-format", log_format]
    code, err = cli_run(capsys, *args, "-c", str(fast_config(tmp_path)))
    assert code == 0 and err.count(SIMULATED) == 1, err
    first = err.splitlines()[0]
    assert SIMULATED in first, err  # before the run's own lines (run_start, the table)


# -- a full disk is exit 75, and leaves whole lines ---------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_mid_run_is_exit_75_naming_the_file_and_the_rerun_resumes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    code: int,
) -> None:
    # Found by QA: ENOSPC while writing results was exit 1 (a failed job: alert, do not
    # retry) and left half a line at the end of the results file. A full disk is a condition
    # of the machine; the lines written are whole, so a re-run with room resumes: exit 75.
    monkeypatch.chdir(tmp_path)
    jobs, config = write_jobs(tmp_path, 300), fast_config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    real, calls = os.write, [0]

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        if results.exists() and os.path.samestat(os.fstat(fd), results.stat()):
            calls[0] += 1
            if calls[0] == 3:  # as a file system does: first a short write, then the error
                return real(fd, bytes(data)[: len(data) // 2])
            if calls[0] > 3:
                raise OSError(code, os.strerror(code))
        return real(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    status, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    monkeypatch.setattr(os, "write", real)
    assert status == 75, err
    assert f"jobs.results.jsonl: cannot write: {os.strerror(code)}" in err, err
    assert "results already written are whole lines and safe" in err
    assert "run the same command again to resume" in err
    raw = results.read_bytes()
    assert raw.endswith(b"\n")  # no half line
    done = [r["custom_id"] for r in lines(results)]  # every line is JSON
    assert 0 < len(done) < 300 and len(done) == len(set(done))
    timed = {r["custom_id"] for r in lines(tmp_path / "jobs.latency.jsonl")}
    assert timed == set(done)  # the latency records of the lost flush were cut back too
    status, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert status == 0, err
    assert sorted(r["custom_id"] for r in lines(results)) == sorted(f"q{i}" for i in range(300))
    summary = load(tmp_path / "jobs.summary.json")
    assert summary["this_run"]["skipped_resumed"] == len(done)  # it resumed


# -- a re-run with nothing to send keeps the real run's summary and metrics --------------------

PRICES = '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\n'


def test_a_rerun_with_every_job_done_keeps_the_summary_and_moves_only_the_end_gauges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: an hourly cron over a daily input re-ran after the real run, sent nothing,
    # and replaced the summary (wall 0 s, 0 req/s, this_run all zeros) and the textfile
    # (duration 0, an empty latency histogram) that users and dashboards read the run from.
    jobs = write_jobs(tmp_path, 30)
    config = fast_config(tmp_path, PRICES)
    prom, summary = tmp_path / "runner.prom", tmp_path / "jobs.summary.json"
    args = ["run", str(jobs), "-c", str(config), "--metrics-textfile", str(prom)]
    assert cli_run(capsys, *args)[0] == 0
    first_summary, first_prom = summary.read_bytes(), samples(prom.read_text())
    assert load(summary)["this_run"]["ok"] == 30 and load(summary)["cost"]["billed"] > 0
    code, err = cli_run(capsys, *args)
    assert code == 0, err
    assert summary.read_bytes() == first_summary  # the real run's, byte for byte
    assert "nothing sent: the summary file is left as it was" in err, err
    again = samples(prom.read_text())
    for name in ("runner_last_success_timestamp_seconds", "runner_last_run_timestamp_seconds"):
        last = (name, (("job_name", "runner"),))
        assert again.pop(last) > first_prom.pop(last)  # the cron job ran and succeeded
    assert again == first_prom  # every other figure is the real run's (duration, histogram)


def test_a_rerun_with_nothing_to_send_writes_a_summary_that_is_missing_or_stale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only a summary that already describes the output is kept: after a kill -9 before the
    # summary (none, or an interrupted invocation's) the re-run writes the whole output's.
    import orjson

    jobs = write_jobs(tmp_path, 12)
    args = ["run", str(jobs), "-c", str(fast_config(tmp_path, PRICES))]
    summary = tmp_path / "jobs.summary.json"
    assert cli_run(capsys, *args)[0] == 0
    real = load(summary)
    summary.unlink()
    assert cli_run(capsys, *args)[0] == 0
    written = load(summary)
    assert written["jobs"]["ok"] == 12 and written["this_run"]["skipped_resumed"] == 12
    assert written["tokens"] == real["tokens"] and written["cost"] == real["cost"]
    stale = {**real, "stopped": "signal", "not_sent": 5, "exit_code": 130}
    stale["jobs"] = {**real["jobs"], "total": 7, "ok": 7}
    summary.write_bytes(orjson.dumps(stale))
    code, err = cli_run(capsys, *args)
    assert code == 0 and "left as it was" not in err
    rewritten = load(summary)
    assert rewritten["stopped"] is None and rewritten["exit_code"] == 0
    assert rewritten["jobs"]["ok"] == 12


def test_a_workers_rerun_with_every_job_done_keeps_the_merged_summary(tmp_path: Path) -> None:
    # The merged summary of --workers was rewritten by a re-run that sent nothing (wall 0 s,
    # 0 req/s, this_run zeros, the workers' CPU of the no-op), while a plain run keeps its own.
    import subprocess
    import sys

    jobs = write_jobs(tmp_path, 40)
    args = [sys.executable, "-m", "runner", "run", str(jobs), "-c"]
    args += [str(fast_config(tmp_path, PRICES)), "--workers", "2"]
    summary = tmp_path / "jobs.summary.json"
    first = subprocess.run(args, capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()[-2000:]
    real = summary.read_bytes()
    assert load(summary)["this_run"]["ok"] == 40 and load(summary)["workers"]["processes"] == 2
    again = subprocess.run(args, capture_output=True, timeout=120)
    err = again.stderr.decode()
    assert again.returncode == 0, err[-2000:]
    assert summary.read_bytes() == real, load(summary)["this_run"]
    assert "nothing sent: the summary file is left as it was" in err, err[-2000:]
    summary.unlink()  # none to keep: the re-run writes the whole output's
    assert subprocess.run(args, capture_output=True, timeout=120).returncode == 0
    written = load(summary)
    assert written["jobs"]["ok"] == 40 and written["this_run"]["skipped_resumed"] == 40


def test_a_rerun_with_nothing_to_send_pushes_only_the_end_gauges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The Pushgateway keeps what a push leaves out (POST): the re-run pushes its exit code and
    # success time alone, so the gateway keeps the real run's figures.
    import http.server
    import threading

    from test_observe import _Gateway

    seen: list[tuple[str, str, bytes]] = []
    srv = http.server.HTTPServer(("127.0.0.1", 0), type("H", (_Gateway,), {"seen": seen}))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        jobs = write_jobs(tmp_path, 10)
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        args = ["run", str(jobs), "-c", str(fast_config(tmp_path)), "--pushgateway", url]
        assert cli_run(capsys, *args)[0] == 0
        assert cli_run(capsys, *args)[0] == 0
    finally:
        srv.shutdown()
        srv.server_close()
    assert [m for m, _, _ in seen] == ["POST", "POST"]
    full, end = (samples(body.decode()) for _, _, body in seen)
    assert (
        "runner_requests_total",
        (("error_code", ""), ("job_name", "runner"), ("outcome", "ok")),
    ) in full
    assert {name for name, _ in end} == {
        "runner_exit_code",
        "runner_last_success_timestamp_seconds",
        "runner_last_run_timestamp_seconds",
    }
