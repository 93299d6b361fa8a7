"""Found by a new user following the README (second pass), each test holding one fix:

* ``runner report A --compare B | head`` ended in a ``BrokenPipeError`` traceback once ``head``
  had read its lines: a reader of standard output that goes away is now a quiet exit 141 (the
  status a SIGPIPE gives, as ``cat`` has), for every subcommand.
* ``--log-format json``'s ``run_start`` event said ``"output": null`` for a run without ``-o``,
  though the run wrote ``JOBS.results.jsonl``: it names the results file the run writes.
* ``runner run --via batch --summary -`` stopped by Ctrl-C printed its ``runner status`` hint
  on standard output after the JSON, and its table called the jobs in running batches "not
  sent"; a breaker of transient failures (exit 75) did not say to run again later.
* ``--workers N``: a worker killed (the OOM killer's SIGKILL) was said only after every other
  worker had finished its shard, maybe an hour later, while the progress kept counting towards
  an end the run would never reach; the parent now says at once which shard's worker died, that
  the others finish their shards, and that nothing will be merged.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner import workers
from runner.config import RunConfig

FIXTURE = Path(__file__).parent / "fixtures" / "latency_sample.jsonl"


def test_a_stdout_reader_that_goes_away_is_a_quiet_exit_141_not_a_traceback() -> None:
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first write: every write is EPIPE
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "report", str(FIXTURE), "--compare", str(FIXTURE)],
            stdout=w,
            stderr=subprocess.PIPE,
            timeout=60,
            check=False,
        )
    finally:
        os.close(w)
    err = proc.stderr.decode()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert proc.returncode == 141


def test_run_start_names_the_default_results_file(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    command = ["run", str(jobs), "-c", str(config), "--log-format", "json"]
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    events = [orjson.loads(line) for line in proc.stderr.splitlines()]
    start = next(e for e in events if e["event"] == "run_start")
    assert start["output"] == str(tmp_path / "jobs.results.jsonl")
    assert (tmp_path / "jobs.results.jsonl").exists()


class _Clocked(io.StringIO):
    """Standard error that notes when each line was written."""

    def __init__(self) -> None:
        super().__init__()
        self.at: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        if text.strip():
            self.at.append((time.monotonic(), text))
        return super().write(text)


def _spawn(code: str) -> workers._Child:
    pid = os.posix_spawn(sys.executable, [sys.executable, "-c", code], os.environ)
    return workers._Child(pid, forked=False)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_killed_worker_is_said_at_once_not_after_the_others_finish(
    monkeypatch: pytest.MonkeyPatch, log_format: str
) -> None:
    # Shard 0's worker runs on for 3 s; shard 1's is killed by SIGKILL at once. The old
    # supervisor waited for shard 0 first and said nothing of shard 1 until the end.
    slow = _spawn("import time; time.sleep(3)")
    killed = _spawn("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    err = _Clocked()
    monkeypatch.setattr(sys, "stderr", err)
    t0 = time.monotonic()
    config = RunConfig(progress="off", log_format=log_format)
    code = workers._supervise([slow, killed], [], Path("jobs.jsonl"), config, names=["0/2", "1/2"])
    ended = time.monotonic()
    assert code == 137  # as a shell reports a SIGKILL
    said = [(t, text) for t, text in err.at if "shard 1/2" in text]
    assert said, err.getvalue()
    when, text = said[0]
    assert "killed by signal 9" in text and "run the same command again" in text
    assert "nothing is merged" in text
    assert when - t0 < 2.0 < ended - t0  # said while shard 0's worker still ran
    if log_format == "json":
        event = orjson.loads(text)
        assert event["level"] == "error" and "shard 1/2" in event["message"]


def test_a_breaker_of_transient_failures_says_run_again_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Exit 75 means "re-run later", but the line said only "stopped by a guard", as exit 3's
    # ("alert, do not retry") does.
    jobs = write_jobs(tmp_path, 60)
    config = tmp_path / "flaky.toml"
    config.write_text(
        'progress = "off"\nmax_attempts = 1\nconcurrency = 4\nbreaker_min_requests = 10\n'
        '[mock]\nlatency = "zero"\nfault_http_503 = 1.0\n'
    )
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "-q")
    assert code == 75, err
    line = next(x for x in err.splitlines() if "stopped by a guard" in x)
    assert "only transient failures: run again later to resume" in line


def test_an_interrupted_batch_run_keeps_standard_output_to_the_summary(tmp_path: Path) -> None:
    # `runner run --via batch --summary -` then Ctrl-C: the "runner status ... shows the
    # batches" hint went to standard output after the JSON summary, so it no longer parsed.
    serve = ["mock", "--port", "0", "--latency", "zero", "--batch", '{"duration_s": 60}']
    mock = subprocess.Popen(
        [sys.executable, "-m", "runner", *serve],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert mock.stdout is not None
        url = mock.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:"), url
        jobs = write_jobs(tmp_path, 5)
        out = tmp_path / "summary.out"
        with out.open("wb") as fh:
            command = ["run", str(jobs), "--provider", "openai", "--base-url", url]
            command += ["--via", "batch", "--poll-interval", "0.2", "--summary", "-"]
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", *command, "--progress", "off"],
                stdout=fh,
                stderr=subprocess.PIPE,
            )
            meta = tmp_path / "jobs.results.jsonl.meta.json"
            deadline = time.monotonic() + 30
            # A submitted batch's id, not merely "batch_": the meta file names the jobs file,
            # whose directory (pytest's tmp_path, "test_an_interrupted_batch_run_0") holds
            # "batch_" too, and SIGINT then came before the run's handlers were installed.
            while b'"batch_id": "' not in (meta.read_bytes() if meta.exists() else b""):
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err.decode()
        assert b"shows the batches" in err
        # the 5 jobs are in a batch still running, not unsent
        assert b"5 not collected" in err and b"not sent" not in err
        summary = orjson.loads(out.read_bytes())  # the summary and nothing else
        assert summary["stopped"] == "signal"
    finally:
        mock.terminate()
        mock.wait(timeout=10)
        assert mock.stdout is not None
        mock.stdout.close()
