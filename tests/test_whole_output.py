"""The exit code and the summary describe the whole output, not the last invocation (issue 9)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, load, write_jobs

from runner.providers._http import status_error
from runner.sinks import RETRIABLE_ERROR_CODES

PRICES = '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\n'


def test_a_rerun_over_failures_exits_1_and_its_summary_covers_every_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 30)
    with jobs.open("a") as fh:
        fh.write('{"id": "broken", "query": 5}\n')
    config = fast_config(tmp_path, 'cache = "none"\n' + PRICES)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 1, err
    first = load(tmp_path / "jobs.summary.json")
    for extra in ([], ["--retry-failed"]):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *extra)
        assert code == 1, err  # the output still holds a permanent failure
        summary = load(tmp_path / "jobs.summary.json")
        assert summary["jobs"]["total"] == 31
        assert summary["jobs"]["ok"] == 30 and summary["jobs"]["failed"] == 1
        assert summary["jobs"]["by_error"] == {"invalid_input": 1}
        assert summary["tokens"] == first["tokens"]  # not 0
        assert summary["cost"]["billed"] == pytest.approx(first["cost"]["billed"])
        assert summary["exit_code"] == 1
        # Nothing was sent: the file keeps the run that did the work (runner/noop.py)...
        assert summary == first and summary["this_run"]["ok"] == 30
        assert "30 ok, 1 failed" in err  # the table shows the whole output too
        assert "this run 0 ok, 0 failed, 31 already done" in err  # ...the table this one


def test_an_interrupted_then_resumed_run_reports_the_whole_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fast_config(tmp_path, 'cache = "none"\n' + PRICES)
    full = write_jobs(tmp_path, 40, name="full.jsonl")
    assert cli_run(capsys, "run", str(full), "-c", str(config))[0] == 0
    whole = load(tmp_path / "full.summary.json")
    part = tmp_path / "part.jsonl"  # the first run got through 25 jobs, the resume the rest
    part.write_bytes(b"".join(full.read_bytes().splitlines(keepends=True)[:25]))
    assert cli_run(capsys, "run", str(part), "-c", str(config))[0] == 0
    part.write_bytes(full.read_bytes())
    assert cli_run(capsys, "run", str(part), "-c", str(config))[0] == 0
    resumed = load(tmp_path / "part.summary.json")
    assert resumed["tokens"] == whole["tokens"]
    assert resumed["cost"]["billed"] == pytest.approx(whole["cost"]["billed"])
    assert resumed["this_run"]["ok"] == 15


def test_the_summary_says_who_when_why_and_never_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = write_jobs(tmp_path, 5)
    monkeypatch.setenv("I9A_TEST_KEY", "sk-test-secret-4242")
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "--api-key-env", "I9A_TEST_KEY"
    )
    assert code == 0, err
    raw = (tmp_path / "jobs.summary.json").read_text()
    assert "sk-test-secret-4242" not in raw
    s = load(tmp_path / "jobs.summary.json")
    started = datetime.fromisoformat(s["started_at"].replace("Z", "+00:00"))
    ended = datetime.fromisoformat(s["ended_at"].replace("Z", "+00:00"))
    assert started.utcoffset() is not None and started <= ended
    assert s["provider"] == "mock" and s["model"] == "mock-1" and s["models"] == {"mock-1": 5}
    assert s["base_url_host"] is None  # the built-in mock
    assert s["exit_code"] == 0 and s["stopped"] is None
    assert s["runner_version"]
    assert s["limiter_wait_summed"] is True and "limiter_wait_mean_ms" in s
    assert "summed over requests" in err


def test_a_409_is_retried_by_retry_failed() -> None:
    info = status_error(409, "Conflict", {})
    assert info.retriable and info.code in RETRIABLE_ERROR_CODES


def test_base_url_host_is_recorded_without_path_or_credentials() -> None:
    from runner.config import RunConfig
    from runner.totals import describe_run

    config = RunConfig(provider="openai", base_url="https://u:p@api.example.com/v1")
    assert describe_run(config, base_url=config.base_url)["base_url_host"] == "api.example.com"
