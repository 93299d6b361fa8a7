"""What a new user running runner as a scheduled job (cron, a Kubernetes Job, Airflow, Slurm,
a systemd timer) met that no test covered: the machine-readable results a scheduler and an
operator read after a run that stopped early, and what the log says when a stop signal comes.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import orjson
import pytest
from helpers import mock_process, run_until_requests, runner
from promise_helpers import cli_run, load, write_jobs

PRICED = """progress = "off"
[mock]
latency = "zero"
[prices."mock-1"]
input = 1.0
cached_input = 0.1
output = 4.0
"""


def _metric(text: str, name: str) -> float:
    (line,) = [ln for ln in text.splitlines() if ln.startswith(name)]
    return float(line.rsplit(" ", 1)[1])


def test_a_run_stopped_early_counts_every_job_of_the_file_it_did_not_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The engine reads a window ahead and counted only the jobs it had read: a run of 20,000
    # jobs stopped (SIGTERM, a guard) after 16 said "16,376 not sent" in its table, its summary
    # file, its run_end event and runner_jobs{state="pending"}; one stopped by --max-cost before
    # its first request said 1 of 200.
    config = tmp_path / "c.toml"
    config.write_text(PRICED)
    jobs = write_jobs(tmp_path, 10)
    out = tmp_path / "out" / "r.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "-q")
    assert code == 0, err
    # The next night's file has 40 more jobs, a blank and a whitespace-only line (no jobs) and
    # a line that is not JSON (a job whose result is an error).
    more = [orjson.dumps({"id": f"n{i}", "query": f"n {i}?"}) for i in range(40)]
    with jobs.open("ab") as fh:
        fh.write(b"\n".join([*more[:20], b"", b"  \t", *more[20:], b"{not json"]) + b"\n")
    prom = tmp_path / "m.prom"
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "--max-cost", "0.000001",
        "--metrics-textfile", str(prom), "--log-format", "json",
    )  # fmt: skip
    assert code == 3, err
    summary = load(out.with_name("r.summary.json"))
    assert summary["stopped"] == "max_cost" and summary["jobs"]["total"] == 10
    assert summary["not_sent"] == 41
    (end,) = [e for e in map(orjson.loads, err.splitlines()) if e["event"] == "run_end"]
    assert end["not_sent"] == 41
    assert _metric(prom.read_text(), 'runner_jobs{job_name="runner",state="pending"}') == 41
    # The same run told to finish sends exactly those 41 and leaves none.
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "-q")
    assert code == 1, err  # the line that is not JSON failed
    summary = load(out.with_name("r.summary.json"))
    assert summary["jobs"]["total"] == 51 and summary["this_run"]["ok"] == 40
    assert summary["not_sent"] == 0 and summary["stopped"] is None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_the_stopping_event_names_the_signal_and_what_the_drain_waits_for(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # A pod's log (--log-format json) said only "stopping: ... Ctrl-C again stops at once" on
    # the kubelet's SIGTERM: no field said which signal came, how many requests the drain
    # waited for or how long it may take, and the advice named a key nobody can press there.
    jobs = write_jobs(tmp_path, 4)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--log-format", "json"]
        proc = run_until_requests(url, [*args, "--cache", "none"], 4, stderr=subprocess.PIPE)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err
    events = [orjson.loads(line) for line in err.splitlines()]
    (stopping,) = [e for e in events if e["event"] == "stopping"]
    assert stopping["signal"] == sig.name
    assert stopping["in_flight"] == 4 and stopping["drain_s"] == 30
    assert f"(at most 30 s) after {sig.name};" in stopping["message"]
    assert f"a second {sig.name} stops at once" in stopping["message"]


@pytest.mark.parametrize("workers", [1, 2])
def test_quiet_says_in_one_line_that_jobs_failed(tmp_path: Path, workers: int) -> None:
    # cron mails what a job prints; `-q` ("print nothing but errors") printed nothing at all
    # for exit 1 (jobs failed), so a crontab with -q and MAILTO never heard of it, while the
    # same run under --log-format json -q logs run_end as an error. Under --workers, each
    # worker is quiet and the parent says it once, over all of them.
    config = tmp_path / "c.toml"
    config.write_text(PRICED)
    jobs = write_jobs(tmp_path, 30)
    with jobs.open("ab") as fh:
        fh.write(b'{"id": "bad", "query": 5}\n{not json\n')
    r = runner("run", str(jobs), "-c", str(config), "-q", "--workers", str(workers))
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr == "runner: error: 2 of 32 jobs failed (invalid_input 2)\n"


def test_quiet_says_that_a_signal_interrupted_the_run(tmp_path: Path) -> None:
    # exit 143 under -q was silent too (its JSON run_end is an error event).
    jobs = write_jobs(tmp_path, 4)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "-q", "--cache", "none"]
        proc = run_until_requests(url, args, 4, stderr=subprocess.PIPE, text=True)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert err == "runner: interrupted; run the same command again to resume\n"


def test_a_batch_run_with_no_usable_temporary_directory_spools_beside_its_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pod with readOnlyRootFilesystem and a writable volume for the outputs has no usable
    # TMPDIR, /tmp or /var/tmp: `--via batch` stopped with a traceback (exit 1, "No usable
    # temporary directory found") at its first upload, after the outputs had been opened.
    # tempfile is told that every directory it would try is unusable, as it finds there.
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # not the directory found earlier
    monkeypatch.setattr(tempfile, "_candidate_tempdir_list", lambda: [str(tmp_path / "ro")])
    with pytest.raises(FileNotFoundError):
        tempfile.gettempdir()
    config = tmp_path / "c.toml"
    config.write_text("poll_interval = 0.02\n" + PRICED)
    jobs = write_jobs(tmp_path, 12)
    out = tmp_path / "out" / "r.jsonl"
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(config), "--via", "batch", "-o", str(out), "-q"
    )
    assert code == 0, err
    assert len(out.read_bytes().splitlines()) == 12
    assert load(out.with_name("r.summary.json"))["jobs"]["ok"] == 12
    # the spooled files are gone: only the outputs (and the meta file) are left
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "r.jsonl", "r.jsonl.meta.json", "r.latency.jsonl", "r.summary.json",
    ]  # fmt: skip


def test_status_tells_an_operator_whether_a_run_is_going_and_how_the_last_one_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `runner status R` of a direct run said only "N result lines" and "no batch journal":
    # not how many jobs the input has, whether a run is writing the output now, nor how the
    # last one ended; and of a merged output, "not a runner output".
    import socket
    import sys

    config = tmp_path / "c.toml"
    config.write_text(PRICED)
    jobs = write_jobs(tmp_path, 10)
    out = tmp_path / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "-q")[0] == 0
    with jobs.open("ab") as fh:
        fh.write(b"".join(orjson.dumps({"id": f"n{i}", "query": "?"}) + b"\n" for i in range(5)))
    args = ["run", str(jobs), "-c", str(config), "-o", str(out), "--max-cost", "0.000001"]
    assert cli_run(capsys, *args, "-q")[0] == 3
    lock = tmp_path / "r.jsonl.lock"
    text = _status(capsys, out, 1)  # exit 1: the last run left jobs unsent
    assert f"input: {jobs}, 15 jobs; 5 without a result" in text
    assert "running: no (no lock)" in text
    assert "exit 3 (stopped: max_cost), 10 ok, 0 failed, 5 not sent" in text
    # A run holding the lock on this host (a live pid), then the lock a kill -9 left.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{other.pid} {socket.gethostname()}\n")
        said = _status(capsys, out, 3)  # exit 3: a run holds it
        assert f"running: yes, pid {other.pid} on {socket.gethostname()}" in said
    finally:
        other.kill()
        other.wait()
    assert f"{lock} was left by pid {other.pid}" in _status(capsys, out, 1)  # it never ended
    lock.unlink()
    # A merged output: two shards, then runner merge.
    for k in (0, 1):
        args = ["run", str(jobs), "-c", str(config), "-o", str(out), "--shard", f"{k}/2", "-q"]
        assert cli_run(capsys, *args)[0] == 0
    merged = tmp_path / "m.jsonl"
    parts = [str(tmp_path / f"r.shard-{k}-of-2.jsonl") for k in (0, 1)]
    assert cli_run(capsys, "merge", str(merged), *parts)[0] == 0
    text = _status(capsys, merged, 0)
    assert "15 result lines" in text and "merged: shards 0, 1 of 2" in text
    assert "exit 0, 15 ok, 0 failed" in text


def _status(capsys: pytest.CaptureFixture[str], results: Path, code: int) -> str:
    """``runner status``'s standard output; its exit code must be ``code``."""
    from runner import cli

    capsys.readouterr()
    assert cli.main(["status", str(results)]) == code
    return capsys.readouterr().out


def test_a_utf8_file_name_under_an_ascii_locale_is_blamed_on_the_locale(tmp_path: Path) -> None:
    # cron and systemd start jobs with LANG unset; where UTF-8 mode is also off (PYTHONUTF8=0)
    # Python reads names in ASCII, and runner said of a UTF-8 name "the file name is not valid
    # UTF-8; rename it": renaming never helps there, the locale does.
    import os
    import sys

    jobs = write_jobs(tmp_path, 2, name="jöbs.jsonl")
    env = {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0", "PATH": os.defpath}
    r = subprocess.run(
        [sys.executable, "-m", "runner", "run", os.fsencode(jobs), "-q"],
        capture_output=True, env=env, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert b"the file name is UTF-8, but the locale's encoding is ascii" in r.stderr, r.stderr
    assert b"LC_ALL=C.UTF-8" in r.stderr and b"rename it" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jöbs.jsonl"]  # nothing written


def test_workers_stopped_by_a_signal_end_their_json_log_with_one_run_end(tmp_path: Path) -> None:
    # The README promises one run_end with workers: N after the workers' own events; a
    # --workers run stopped by SIGTERM (or exit 75, a guard) ended with an error event and no
    # run_end of its own, so a log alert on run_end never saw the pod's last run.
    jobs = write_jobs(tmp_path, 12)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--log-format", "json"]
        args += ["--cache", "none", "--workers", "2", "--concurrency", "4"]
        proc = run_until_requests(url, args, 4, stderr=subprocess.PIPE)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    events = [orjson.loads(line) for line in err.splitlines()]
    workers = [e for e in events if e["event"] == "run_end" and "workers" not in e]
    assert len(workers) == 2  # each worker's own
    last = events[-1]
    assert last["event"] == "run_end" and last["workers"] == 2, events[-2:]
    assert last["exit_code"] == 143 and last["stopped"] == "signal"
    assert last["jobs"]["total"] == sum(w["jobs"]["total"] for w in workers)
    assert last["jobs"]["total"] + last["not_sent"] == 12


@pytest.mark.parametrize("extra", [[], ["--workers", "2"], ["--via", "batch"]])
def test_summary_on_stdout_is_one_line_among_json_logs(tmp_path: Path, extra: list[str]) -> None:
    # A pod's log is stdout and stderr together, one record per line: with --log-format json
    # every stderr line is one JSON object, but `--summary -` printed the summary indented over
    # some sixty lines, each a broken record for the log collector.
    config = tmp_path / "c.toml"
    config.write_text("poll_interval = 0.02\n" + PRICED)
    jobs = write_jobs(tmp_path, 6)
    args = ["run", str(jobs), "-c", str(config), "--summary", "-", "--log-format", "json"]
    r = runner(*args, *extra)
    assert r.returncode == 0, r.stderr
    (line,) = r.stdout.splitlines()
    assert orjson.loads(line)["jobs"]["ok"] == 6
    assert all(orjson.loads(ln) for ln in r.stderr.splitlines())
    # the text format keeps the indented summary for a person
    r = runner(*args[:-2], *extra, "-q")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) > 10 and orjson.loads(r.stdout)["jobs"]["ok"] == 6


def test_a_resumed_batch_run_summarises_every_job_of_the_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A --via batch run detached by SIGTERM (or given appended jobs) and collected by the next
    # invocation wrote a summary of that invocation alone: ok 10 of 20 answered, total 20,
    # with 10 jobs' tokens and cost, unlike a direct run's (README, Output: every job in the
    # output, this invocation in this_run). The scheduler's machine-readable result was half.
    config = tmp_path / "c.toml"
    config.write_text("poll_interval = 0.02\n" + PRICED)
    jobs = write_jobs(tmp_path, 10)
    args = ["run", str(jobs), "-c", str(config), "--via", "batch", "-q"]
    assert cli_run(capsys, *args)[0] == 0
    first = load(tmp_path / "jobs.summary.json")
    with jobs.open("ab") as fh:
        fh.write(b"".join(orjson.dumps({"id": f"n{i}", "query": "?"}) + b"\n" for i in range(10)))
    assert cli_run(capsys, *args)[0] == 0
    s = load(tmp_path / "jobs.summary.json")
    assert s["jobs"]["total"] == s["jobs"]["ok"] == 20
    assert s["this_run"]["ok"] == 10 and s["this_run"]["skipped_resumed"] == 10
    assert (
        s["tokens"]["completion"]
        == first["tokens"]["completion"] + (s["this_run"]["tokens"]["completion"])
    )
    assert s["cost"]["billed"] == pytest.approx(
        first["cost"]["billed"] + s["this_run"]["cost"]["billed"]
    )
    at_list = s["batch"]["at_list_price"]["billed_usd"]
    assert at_list == pytest.approx(2 * s["cost"]["billed"], rel=1e-3)  # the 0.5 discount
    # A re-run with nothing left keeps that file.
    before = (tmp_path / "jobs.summary.json").read_bytes()
    assert cli_run(capsys, *args)[0] == 0
    assert (tmp_path / "jobs.summary.json").read_bytes() == before


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_run_started_with_sighup_ignored_outlives_its_session(
    tmp_path: Path, workers: str
) -> None:
    # `nohup runner run ... &` over ssh: nohup starts runner with SIGHUP ignored so that the
    # run outlives the session, but runner's own handler undid it and the session's end
    # stopped the run (exit 129). A signal ignored at the start now stays ignored.
    jobs = write_jobs(tmp_path, 4)
    out = tmp_path / "r.jsonl"
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # inherited by the child, as nohup
    try:
        with mock_process("--base-ms", "2500") as url:
            args = [str(jobs), "--provider", "openai", "--base-url", url, "-o", str(out), "-q"]
            args += ["--cache", "none", "--workers", workers]
            proc = run_until_requests(url, args, 4, stderr=subprocess.PIPE, text=True)
            proc.send_signal(signal.SIGHUP)  # the session closes
            _, err = proc.communicate(timeout=60)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert proc.returncode == 0, err
    assert len(out.read_bytes().splitlines()) == 4
