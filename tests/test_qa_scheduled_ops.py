"""Left over from the "new user running scheduled jobs" pass (cron, Kubernetes, Airflow): what a
scheduler, its alerts and the operator at the terminal see of a run that is refused, stopped or
still going."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from helpers import mock_process, run_until_requests
from promise_helpers import cli_run, load, write_jobs

from runner.shards import ShardSpec, shard_path

PRICED = """progress = "off"
[mock]
latency = "zero"
[prices."mock-1"]
input = 1.0
cached_input = 0.1
output = 4.0
"""


def _rate_limited_run(url: str, jobs: Path, *flags: str) -> subprocess.Popen[str]:
    """A run that sent its first request and waits a minute on its rate limit for the next."""
    args = [str(jobs), "--provider", "openai", "--base-url", url, "--cache", "none"]
    args += ["--rpm", "1", "--concurrency", "1", *flags]
    proc = run_until_requests(url, args, 1, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the mock answers in 1 ms: that reply is written
    return proc


def test_a_stop_signal_is_said_at_once_without_a_progress_display(tmp_path: Path) -> None:
    # The "stopping" line was the progress display's note or the JSON log's event: with
    # --progress off (a scheduler's log wants no progress lines) Ctrl-C said nothing until the
    # summary, and a user who saw no reaction pressed it again.
    jobs = write_jobs(tmp_path, 5)
    with mock_process("--base-ms", "1") as url:
        proc = _rate_limited_run(url, jobs, "--progress", "off")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    said = [ln for ln in err.splitlines() if ln.startswith("runner: stopping")]
    assert len(said) == 1, err
    assert "after SIGINT" in said[0] and "Ctrl-C again stops at once" in said[0]
    assert err.index(said[0]) < err.index("run summary")  # when it came, not at the end


async def test_a_stop_signal_is_said_with_no_request_in_flight() -> None:
    # The line (or event) came only while requests were in flight: a run between requests
    # (reading ahead, waiting on a cache probe's deadline) said nothing on Ctrl-C.
    import asyncio
    from types import SimpleNamespace
    from typing import Any

    from runner.api import _install_signals, _remove_signals

    stops: list[tuple[str, int, bool]] = []
    engine: Any = SimpleNamespace(
        stats=SimpleNamespace(in_flight=0),
        config=SimpleNamespace(drain_s=30.0),
        request_stop=lambda why, code, hard: stops.append((why, code, hard)),
    )
    said: list[tuple[str, dict[str, Any]]] = []
    _install_signals(engine, lambda message, **fields: said.append((message, fields)))
    try:
        signal.raise_signal(signal.SIGTERM)
        for _ in range(20):
            await asyncio.sleep(0.01)
            if stops:
                break
    finally:
        _remove_signals()
    assert stops == [("signal", 128 + signal.SIGTERM, False)]
    ((message, fields),) = said
    assert message == "stopping after SIGTERM: no requests in flight, writing the summary"
    assert fields == {"signal": "SIGTERM", "in_flight": 0, "drain_s": 30.0}


def test_a_stop_is_said_as_a_line_or_an_event_and_not_under_quiet(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from runner.config import RunConfig
    from runner.observe import Observer

    for fmt, quiet in (("text", False), ("text", True), ("json", False)):
        obs = Observer(RunConfig(log_format=fmt, quiet=quiet, progress="off"), jobs_path=None)
        obs.stopping("stopping after SIGINT: no requests", signal="SIGINT", in_flight=0)
        obs.close()
        err = capsys.readouterr().err
        if quiet:
            assert err == ""  # -q: nothing but errors (the end's "interrupted" is one)
        elif fmt == "text":
            assert err == "runner: stopping after SIGINT: no requests\n"
        else:
            (event,) = [orjson.loads(line) for line in err.splitlines()]
            assert event["event"] == "stopping" and event["in_flight"] == 0


def test_quiet_still_says_nothing_but_the_interruption(tmp_path: Path) -> None:
    # -q prints nothing but errors: no "stopping" line, only the end's "interrupted" (an exit
    # a scheduler alerts on), as before.
    jobs = write_jobs(tmp_path, 5)
    with mock_process("--base-ms", "1") as url:
        proc = _rate_limited_run(url, jobs, "-q")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping" not in err and "interrupted" in err, err


def _shard_jobs(jobs: Path, count: int) -> list[int]:
    """How many lines of ``jobs`` each of ``count`` shards gets (runner.shards.shard_of)."""
    from runner.jobs import read_jobs
    from runner.shards import shard_of

    per = [0] * count
    for item in read_jobs(jobs, contexts={}):
        per[shard_of(item, count)] += 1
    return per


@pytest.mark.parametrize("how", ["shard", "workers"])
def test_a_stopped_shard_counts_every_job_of_its_own_it_did_not_send(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    # A shard's not_sent after an early stop was the engine's count of the lines it had read
    # (its read-ahead window), not the jobs of that shard left: --shard 1/3 of 120 jobs
    # stopped before its first request said 4 not sent, where about 40 were; the --workers
    # run's run_end, the sum of its workers', likewise.
    config = tmp_path / "c.toml"
    config.write_text("read_ahead = 4\n" + PRICED)  # a window far smaller than a shard
    jobs = write_jobs(tmp_path, 120)
    with jobs.open("ab") as fh:
        fh.write(b"{not json\n\n")  # a bad line gets a result (an error) in one shard
    per = _shard_jobs(jobs, 3)
    assert sum(per) == 121 and min(per) > 4
    out = tmp_path / "out" / "r.jsonl"
    flags = ["-c", str(config), "-o", str(out), "--max-cost", "0.000001"]
    if how == "shard":
        code, err = cli_run(capsys, "run", str(jobs), *flags, "--shard", "1/3", "-q")
        assert code == 3, err
        summary = load(out.with_name("r.shard-1-of-3.summary.json"))
        assert summary["stopped"] == "max_cost" and summary["jobs"]["total"] == 0
        assert summary["not_sent"] == per[1]
        return
    code, err = cli_run(capsys, "run", str(jobs), *flags, "--workers", "3", "--log-format", "json")
    assert code == 3, err
    for k in range(3):
        summary = load(out.with_name(f"r.shard-{k}-of-3.summary.json"))
        assert summary["not_sent"] == per[k], k
    (end,) = [e for e in map(orjson.loads, err.splitlines()) if e.get("event") == "run_end"]
    assert end["not_sent"] == 121


def test_status_exit_codes_say_done_not_done_running_or_not_an_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `runner status` always exited 0: a script (a cron wrapper, an Airflow sensor) had to
    # parse its text to know whether the last run finished, failed or is still going.
    import socket

    from runner import cli

    def status(results: Path) -> int:
        capsys.readouterr()
        return cli.main(["status", str(results)])

    config = tmp_path / "c.toml"
    config.write_text(PRICED)
    jobs = write_jobs(tmp_path, 6)
    out = tmp_path / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "-q")[0] == 0
    assert status(out) == 0  # every job done
    # A lock held on another host (cannot be told from here): a run may hold it.
    lock = tmp_path / "r.jsonl.lock"
    lock.write_text("1 some-other-host.example\n")
    assert socket.gethostname() != "some-other-host.example"
    assert status(out) == 3
    lock.unlink()
    # A line that is no job: its result is an error, the run's exit 1, and so is status's.
    with jobs.open("ab") as fh:
        fh.write(b"{not json\n")
    assert cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(out), "-q")[0] == 1
    assert status(out) == 1
    # No summary beside the output (removed, or a kill -9 before it was written): not known
    # to have ended.
    out.with_name("r.summary.json").unlink()
    assert status(out) == 1
    # Not a runner output, and a usage error: 2, as every command's.
    stray = tmp_path / "stray.jsonl"
    stray.write_text("{}\n")
    assert status(stray) == 2
    assert cli_run(capsys, "status")[0] == 2


def _gauges(prom: Path) -> dict[str, float]:
    """The textfile's samples by name (one identity in these tests)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = prom.read_text()
    return {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("why", ["no_jobs_file", "bad_config", "refused_output", "no_price"])
def test_a_run_refused_with_exit_2_still_writes_the_metrics_textfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], why: str
) -> None:
    # An exit-2 run wrote no --metrics-textfile: node-exporter kept the last good run's
    # runner_exit_code 0, and the alert on it never saw that last night's run failed.
    config = tmp_path / "c.toml"
    config.write_text('metrics_job = "nightly"\n' + PRICED)
    jobs = write_jobs(tmp_path, 4)
    out = tmp_path / "out" / "r.jsonl"
    prom = tmp_path / "m.prom"
    args = ["run", str(jobs), "-c", str(config), "-o", str(out), "--metrics-textfile", str(prom)]
    assert cli_run(capsys, *args, "-q")[0] == 0
    good = _gauges(prom)
    assert good["runner_exit_code"] == 0 and good["runner_last_run_timestamp_seconds"] > 0
    if why == "no_jobs_file":
        args[1] = str(tmp_path / "missing.jsonl")
    elif why == "bad_config":  # a key refused, after the lines naming the metrics
        config.write_text('metrics_job = "nightly"\nconcurrency = -1\n' + PRICED)
    elif why == "refused_output":
        args += ["--latency", str(config)]  # an input: refused before anything is opened
    else:
        args += ["--max-cost", "1", "--model", "no-price-model"]  # no price: exit 2
    before = _tree(tmp_path)
    time.sleep(0.01)
    code, err = cli_run(capsys, *args, "-q")
    assert code == 2, err
    now = _gauges(prom)
    assert now["runner_exit_code"] == 2
    assert now["runner_last_run_timestamp_seconds"] > good["runner_last_run_timestamp_seconds"]
    assert (
        now["runner_last_success_timestamp_seconds"]
        == (good["runner_last_success_timestamp_seconds"])
    )  # moves only on success
    # the other figures are the last run's, as a re-run that sends nothing keeps them
    moved = {"runner_exit_code", "runner_last_run_timestamp_seconds"}
    assert {k: v for k, v in now.items() if k not in moved} == {
        k: v for k, v in good.items() if k not in moved
    }
    # nothing else was touched: the results, latency, summary, the config and jobs
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k != "m.prom"} == {
        k: v for k, v in before.items() if k != "m.prom"
    }
    assert 'job_name="nightly"' in prom.read_text()  # the identity of the config file


def test_a_first_run_refused_writes_only_the_end_gauges(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prom = tmp_path / "m.prom"
    code, err = cli_run(
        capsys, "run", str(tmp_path / "missing.jsonl"), "--metrics-textfile", str(prom),
        "--metrics-label", "team=eval",
    )  # fmt: skip
    assert code == 2 and "no such file" in err
    assert _gauges(prom) == {
        "runner_exit_code": 2,
        "runner_last_run_timestamp_seconds": pytest.approx(time.time(), abs=60),
    }
    assert 'runner_exit_code{job_name="runner",team="eval"} 2.0' in prom.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["m.prom"]  # no temporary left


@pytest.mark.parametrize(
    "case",
    ["is_jobs", "is_results", "no_dir", "not_prometheus", "toml_broken", "worker_part", "journal"],
)
def test_a_refused_run_writes_no_textfile_whose_path_is_not_known_and_valid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    # Only a textfile whose path and identity are sure is written: never over an input,
    # another output, a file that is no Prometheus text, nor in a directory the run would
    # have created; not when the config naming its identity is unreadable, nor over a file a
    # --workers run writes (a shard's results, empty here) or a --via batch run's journal.
    config = tmp_path / "c.toml"
    config.write_text(PRICED)
    jobs = write_jobs(tmp_path, 2)
    out = tmp_path / "r.jsonl"
    out.write_bytes(b"")  # an empty results file: Prometheus text, as far as a parser sees
    prom = tmp_path / "m.prom"
    args = ["run", str(jobs), "-c", str(config), "-o", str(out), "--model", "no-price-model"]
    args += ["--max-cost", "1"]  # refused with exit 2: no price for the model
    if case == "is_jobs":
        prom = jobs
    elif case == "is_results":
        prom = out
    elif case == "no_dir":
        prom = tmp_path / "metrics" / "m.prom"
    elif case == "not_prometheus":
        prom.write_text("notes: keep these\n")
    elif case == "toml_broken":
        config.write_text("metrics_job = \n" + PRICED)
    elif case == "worker_part":
        args += ["--workers", "2"]
        prom = shard_path(out, ShardSpec(1, 2))
        prom.write_bytes(b"")
    else:
        args += ["--via", "batch"]
        prom = tmp_path / "r.jsonl.meta.json"  # where the batch journal goes
    before = _tree(tmp_path)
    code, err = cli_run(capsys, *args, "--metrics-textfile", str(prom))
    assert code == 2, err
    assert _tree(tmp_path) == before
    assert not (tmp_path / "metrics").exists()


@pytest.mark.parametrize("flags", [("--workers", "2"), ("--via", "batch")])
def test_a_scaled_run_refused_for_its_metrics_flag_still_writes_the_textfile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, str]
) -> None:
    # A --workers or --via batch run exports no metrics: the flag added to a scheduled command
    # with --metrics-textfile is refused (exit 2) on every run, and the textfile kept the last
    # good run's runner_exit_code 0, so the alert on it never fired.
    config = tmp_path / "c.toml"
    config.write_text('metrics_job = "nightly"\n' + PRICED)
    jobs = write_jobs(tmp_path, 4)
    prom = tmp_path / "m.prom"
    args = ["run", str(jobs), "-c", str(config), "-o", str(tmp_path / "r.jsonl")]
    args += ["--metrics-textfile", str(prom), "--metrics-label", "team=eval"]
    assert cli_run(capsys, *args, "-q")[0] == 0
    good = _gauges(prom)
    before = _tree(tmp_path)
    time.sleep(0.01)
    code, err = cli_run(capsys, *args, *flags)
    assert code == 2 and "metrics" in err, err
    now = _gauges(prom)
    assert now["runner_exit_code"] == 2
    assert now["runner_last_run_timestamp_seconds"] > good["runner_last_run_timestamp_seconds"]
    moved = {"runner_exit_code", "runner_last_run_timestamp_seconds"}
    assert {k: v for k, v in now.items() if k not in moved} == {
        k: v for k, v in good.items() if k not in moved
    }
    assert 'runner_exit_code{job_name="nightly",team="eval"} 2.0' in prom.read_text()
    after = _tree(tmp_path)
    assert {k: v for k, v in after.items() if k != "m.prom"} == {
        k: v for k, v in before.items() if k != "m.prom"
    }
    # a worker never says the run's end: its parent does
    prom.unlink()
    assert cli_run(capsys, *args, "--as-worker", "--max-cost", "1", "--model", "nope")[0] == 2
    assert not prom.exists()
