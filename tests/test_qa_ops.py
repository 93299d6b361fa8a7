"""What an operator of scheduled runs (cron, Kubernetes, Slurm, a closed terminal) met that no test
covered (found by QA as an operator).

Each test runs the real command as a scheduler would start it: with standard streams closed,
with standard error piped into a reader that goes away, hung up (SIGHUP), or over the lock a
``kill -9`` left behind whose pid a new, unrelated process now has.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import PY, mock_process, run_until_requests
from promise_helpers import fast_config, lines, load, write_jobs

from runner.config import RunConfig
from runner.sinks import open_outputs


def _ids(path: Path) -> list[str]:
    return sorted(r["custom_id"] for r in lines(path))


def test_a_run_started_with_its_standard_streams_closed_finishes_with_its_exit_code(
    tmp_path: Path,
) -> None:
    # `runner run ... <&- >&- 2>&-` (a supervisor or crontab line that closes them): the first
    # sockets took descriptors 0-2 and uvloop aborted closing one (exit 134, a core dump to
    # the scheduler) although every job had been answered.
    jobs = write_jobs(tmp_path, 20)
    config = fast_config(tmp_path)
    script = f'exec "{PY}" -m runner run "{jobs}" -c "{config}" <&- >&- 2>&-'
    proc = subprocess.run(["sh", "-c", script], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0
    assert _ids(tmp_path / "jobs.results.jsonl") == sorted(f"q{i}" for i in range(20))
    assert load(tmp_path / "jobs.summary.json")["exit_code"] == 0


@pytest.mark.parametrize("progress", ["log", "bar"])
def test_a_reader_of_stderr_that_goes_away_changes_no_exit_code(
    tmp_path: Path, progress: str
) -> None:
    # `runner run ... 2>&1 | head -1`: once head exits every write to stderr fails (EPIPE). The
    # summary table's print then turned a finished run into exit 1 with a traceback, and a
    # progress tick that raised stopped the engine's periodic flush of the outputs.
    jobs = write_jobs(tmp_path, 40)
    config = (
        fast_config(tmp_path, "concurrency = 4\n")
        .read_text()
        .replace('latency = "zero"', "base_ms = 100.0\ndecode_ms_per_token = 1.0")
    )
    (tmp_path / "slow.toml").write_text(config)
    proc = subprocess.Popen(
        [PY, "-m", "runner", "run", str(jobs), "-c", "slow.toml", "--progress", progress],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "no provider configured: ..." comes before any request
    assert b"simulated provider" in first
    proc.stderr.close()  # the reader is gone
    assert proc.wait(120) == 0
    assert _ids(tmp_path / "jobs.results.jsonl") == sorted(f"q{i}" for i in range(40))
    assert load(tmp_path / "jobs.summary.json")["exit_code"] == 0


def test_sighup_drains_writes_the_summary_and_exits_129_then_resumes_once(
    tmp_path: Path,
) -> None:
    # The terminal of a run started by hand closed: SIGHUP killed the run at once, the answers
    # in flight were lost and no summary was written. It now drains as SIGTERM does.
    jobs = write_jobs(tmp_path, 60)
    with mock_process("--base-ms", "300", "--decode-ms-per-token", "1") as url:
        args = ["run", str(jobs), "--provider", "openai", "--base-url", url]
        args += ["--model", "mock-1", "--concurrency", "4", "--progress", "off"]
        env = {**os.environ, "OPENAI_API_KEY": "k"}
        proc = subprocess.Popen([PY, "-m", "runner", *args], cwd=tmp_path, env=env)
        results = tmp_path / "jobs.results.jsonl"
        deadline = time.monotonic() + 60
        while not (results.exists() and results.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(60) == 129
        summary = load(tmp_path / "jobs.summary.json")
        assert summary["exit_code"] == 129 and summary["stopped"] == "signal"
        done = _ids(results)
        assert 0 < len(done) < 60 and len(done) == len(set(done))
        assert summary["jobs"]["total"] == len(done)  # the drained answers were kept
    # The resume sends the other ~55 jobs to an instant mock, not at four per 300 ms (a resume
    # checks the jobs file, not the URL).
    with mock_process("--latency", "zero") as fast:
        args[args.index(url)] = fast
        again = subprocess.run(
            [PY, "-m", "runner", *args], cwd=tmp_path, env=env, capture_output=True, timeout=120
        )
    assert again.returncode == 0, again.stderr
    assert _ids(results) == sorted(f"q{i}" for i in range(60))  # every job once


def test_a_stale_lock_whose_pid_a_new_process_reuses_is_taken_over(tmp_path: Path) -> None:
    # kill -9 left R.lock naming its pid; the number now belongs to an unrelated process (a
    # restarted container counts pids from 1 again, with the same host name). flock was free,
    # so the writer is gone, yet the run was refused as "being written by another runner"
    # (exit 2: do not retry) for as long as that process lived. (Without flock the pid is all
    # there is to go by: tests/test_sinks.py keeps that case.)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"custom_id": "j0", "query": "q"}\n')
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "jobs.results.jsonl.lock"
        lock.write_text(f"{other.pid} {socket.gethostname()}\n")
        with open_outputs(RunConfig(), jobs_path=jobs, model="m", fsync=False) as out:
            assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
            assert out.lock_path == lock
        assert not lock.exists()
    finally:
        other.kill()
        other.wait()


def test_sigterm_is_logged_as_it_comes_in_json_and_every_stderr_line_is_json(
    tmp_path: Path,
) -> None:
    # Kubernetes sends SIGTERM and waits terminationGracePeriodSeconds: with --log-format json
    # nothing was logged until run_end, up to drain_s (30 s) later, so the pod's log gave no
    # sign that the drain had started or what it waited for.
    import json

    jobs = write_jobs(tmp_path, 4)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--log-format", "json"]
        args += ["--cache", "none"]
        proc = run_until_requests(url, args, 4, stderr=subprocess.PIPE, text=True)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    events = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    names = [e["event"] for e in events]
    assert names.index("stopping") < names.index("run_end"), names
    stopping = events[names.index("stopping")]
    assert stopping["level"] == "warning"
    assert "waiting for 4 requests in flight (at most 30 s)" in stopping["message"]
    assert events[-1]["exit_code"] == 143


@pytest.mark.parametrize(
    "flags",
    [["--log-format", "json", "--bogus"], ["--log-format=json", "--order", "sideways"]],
)
def test_a_usage_error_under_log_format_json_is_one_json_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    # A typo on a crontab line that asks for JSON logs printed argparse's usage text, thirty
    # lines no log pipeline could parse, around the one that said what was wrong.
    import json

    from runner import cli

    jobs = write_jobs(tmp_path, 1)
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", str(jobs), *flags])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    (event,) = [json.loads(line) for line in err.splitlines()]
    assert event["event"] == "error" and event["exit_code"] == 2
    assert ("--bogus" if "--bogus" in flags else "'sideways'") in event["message"]


def test_a_bad_flag_is_a_json_error_when_the_config_file_asks_for_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # log_format = "json" in the config, a bad value on the command line: the error was the
    # text line "runner: error: ...", the one line of the run a JSON log pipeline dropped.
    import json

    from runner import cli

    jobs = write_jobs(tmp_path, 1)
    config = fast_config(tmp_path, 'log_format = "json"\n')
    code = cli.main(["run", str(jobs), "-c", str(config), "--concurrency", "0"])
    assert code == 2
    (event,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert event["event"] == "error" and "concurrency must be >= 1" in event["message"]


@pytest.mark.parametrize("which", ["jobs", "output"])
def test_a_file_name_that_is_not_utf8_is_exit_2_before_anything_is_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str
) -> None:
    # A Latin-1 name (b"jobs-\xe9.jsonl", from an old system or a zip) decodes with surrogates:
    # the run created its results and latency files, then the meta file's JSON refused the
    # path, a TypeError traceback with exit 1 (in JSON logs too).
    from promise_helpers import cli_run

    latin1 = os.fsdecode(b"x-\xe9.jsonl")
    jobs = write_jobs(tmp_path, 2, name=latin1 if which == "jobs" else "jobs.jsonl")
    config = fast_config(tmp_path)
    before = set(tmp_path.iterdir())
    extra = ["-o", str(tmp_path / latin1)] if which == "output" else []
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *extra)
    assert code == 2, err
    assert "x-\ufffd.jsonl: the file name is not valid UTF-8" in err
    assert set(tmp_path.iterdir()) == before


def test_workers_stopped_by_sigterm_say_so_in_json(tmp_path: Path) -> None:
    # `--workers 2 --log-format json` under SIGTERM: the parent's "a worker stopped ...; not
    # merging" and "run the same command again" were the only two text lines among the events.
    import json

    jobs = write_jobs(tmp_path, 80)
    config = fast_config(tmp_path, "concurrency = 2\n").read_text()
    (tmp_path / "slow.toml").write_text(config.replace('latency = "zero"', "base_ms = 200.0"))
    proc = subprocess.Popen(
        [
            *(PY, "-m", "runner", "run", str(jobs), "-c", "slow.toml"),
            *("--workers", "2", "--log-format", "json"),
        ],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size for p in tmp_path.glob("jobs.shard-*.results.jsonl")):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    events = [json.loads(line) for line in err.splitlines()]  # every line is one JSON object
    said = [e for e in events if "not merging" in e.get("message", "")]
    assert len(said) == 1 and "run the same command again to resume" in said[0]["message"]


def test_a_signal_to_the_process_group_drains_the_workers_in_flight_answers(
    tmp_path: Path,
) -> None:
    # Airflow (and `kill -- -PGID`, or Ctrl-C in a terminal) signals the whole process group:
    # each --workers child got SIGTERM from the group and again from the parent's forward, and
    # the second is "stop at once", so every answer in flight (paid for) was thrown away.
    import json
    import urllib.request

    jobs = write_jobs(tmp_path, 40)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1"]
        args += ["--cache", "none", "--concurrency", "4", "--workers", "2", "--progress", "off"]
        proc = run_until_requests(
            url,
            args,
            4,
            cwd=tmp_path,
            env={**os.environ, "OPENAI_API_KEY": "k"},
            start_new_session=True,
            stderr=subprocess.PIPE,
        )
        os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        stats = url.removesuffix("/v1") + "/stats"
        sent = json.load(urllib.request.urlopen(stats, timeout=5))["requests"]
    assert proc.returncode == 143, err
    answered = sum(len(lines(p)) for p in tmp_path.glob("jobs.shard-*-of-2.results.jsonl"))
    assert answered == sent >= 4  # every request in flight at the signal was drained and kept


def test_a_slurm_array_with_a_step_gives_every_shard_once() -> None:
    # `#SBATCH --array=0-6:2` runs tasks 0, 2, 4 and 6 (SLURM_ARRAY_TASK_STEP=2, COUNT=4): they
    # became shards 0 and 2, and 4 and 6 were refused as out of range, so shards 1 and 3 never
    # ran. A list of ids (--array=1,2,5) is refused, naming what works.
    from runner.errors import ConfigError
    from runner.shards import ShardSpec, shard_from_env

    def env(task: int, **more: str) -> dict[str, str]:
        base = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "6"}
        return {**base, "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_ID": str(task), **more}

    stepped = [shard_from_env(env(t, SLURM_ARRAY_TASK_STEP="2"), None) for t in (0, 2, 4, 6)]
    assert stepped == [ShardSpec(k, 4) for k in range(4)]
    listed = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "5"}
    listed |= {"SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_ID": "2"}
    with pytest.raises(ConfigError, match="not an evenly spaced range"):
        shard_from_env(listed, None)
    plain = {"SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "8"}
    plain |= {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "8"}
    assert shard_from_env(plain, None) == ShardSpec(7, 8)  # --array=1-8 as before
