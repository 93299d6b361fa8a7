"""What a new user following the README ran into that no test covered (found by QA).

Each test names the everyday mistake or message: a base URL without ``/v1`` (the summary said the
jobs file held no jobs), a base URL without ``http://`` (exit 75, "run again later", forever),
``-o -`` / ``--latency -`` (a file named ``-``), ``runner run -`` ("-: no such file"), and a
latency table that mixed seconds into its millisecond columns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import mock_process, run_until_requests
from promise_helpers import cli_run, fast_config, load, run_fast, write_jobs

from runner.report import render_summary


def test_a_run_stopped_before_its_first_result_does_not_call_the_jobs_file_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's classic mistake: the base URL without /v1. The run stops at the first 404
    # (exit 2) with every job unsent; it used to end with "warning: jobs.jsonl holds no jobs"
    # under a table of "0 ok, 0 failed", sending the user to check a file that was fine.
    jobs = write_jobs(tmp_path, 30)
    with mock_process("--latency", "zero") as url:
        code, err = run_fast(
            capsys, jobs, "--provider", "openai", "--base-url", url.removesuffix("/v1")
        )
    assert code == 2, err
    assert "does it end in /v1?" in err
    assert "holds no jobs" not in err
    summary = load(tmp_path / "jobs.summary.json")
    assert summary["not_sent"] == 30
    # The table says what the summary file says: the jobs were never sent.
    assert "0 ok, 0 failed, 30 not sent" in err


def test_an_empty_jobs_file_still_warns_with_nothing_unsent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "empty.jsonl"
    jobs.write_bytes(b"")
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 0 and "holds no jobs" in err and "not sent" not in err


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("127.0.0.1:8000/v1", "no scheme"),
        ("localhost:8000/v1", "no scheme"),
        ("ftp://user:s3cret@example.com/v1", "the scheme 'ftp'"),
    ],
)
@pytest.mark.parametrize("command", ["run", "bench", "config file"])
def test_a_base_url_without_http_is_misuse_not_a_transient_failure(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    url: str,
    said: str,
) -> None:
    # It was exit 75 after three probes ("unreachable ... run again later"): a scheduler that
    # retries 75 would retry a typo forever.
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 3)
    args = ["--provider", "openai", "--base-url", url]
    if command == "bench":
        code, err = cli_run(capsys, "bench", *args, "--requests", "1")
    elif command == "run":
        code, err = cli_run(capsys, "run", str(jobs), *args)
    else:
        config = tmp_path / "c.toml"
        config.write_text(f'provider = "openai"\nbase_url = "{url}"\n')
        code, err = cli_run(capsys, "validate", str(jobs), "-c", str(config))
        config.unlink()
    assert code == 2, err
    assert "base_url must start with http:// or https://" in err and said in err
    assert "s3cret" not in err  # the URL is not echoed: it may carry credentials
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]  # nothing written


@pytest.mark.parametrize(
    ("flags", "said"),
    [(["-o", "-"], "-o/--output -: the results file"), (["--latency", "-"], "--latency -")],
)
def test_dash_as_the_results_or_latency_file_is_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    flags: list[str],
    said: str,
) -> None:
    # `--summary -` prints the summary; `-o -` wrote a file named "-" (and "-.latency.jsonl").
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 3)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), *flags)
    assert code == 2, err
    assert said in err and "cannot be standard output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "jobs.jsonl"]


@pytest.mark.parametrize("command", ["run", "validate"])
def test_dash_as_the_jobs_file_says_standard_input_is_not_read(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = cli_run(capsys, command, "-", "-c", str(fast_config(tmp_path)))
    assert code == 2, err
    assert "standard input" in err and "no such file" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml"]


def test_a_file_named_dash_is_still_a_jobs_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_jobs(tmp_path, 2).rename(tmp_path / "-")
    code, err = cli_run(capsys, "run", "-", "-c", str(fast_config(tmp_path)), "-o", "r.jsonl")
    assert code == 0, err
    assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == 2


def _summary_with_latency(ms: dict[str, float]) -> dict[str, object]:
    return {
        "jobs": {"total": 3, "ok": 3, "failed": 0, "skipped_resumed": 0, "by_error": {}},
        "wall_s": 12.0,
        "requests_per_s": 0.25,
        "tokens": {"prompt": 10, "cached": 0, "cache_write": 0, "completion": 3},
        "cache_hit_ratio": 0.0,
        "retries": 0,
        "limiter_wait_s": 0.0,
        "latency_ms": ms,
        "ttft_ms": None,
    }


def test_the_latency_table_is_all_milliseconds_as_its_header_says() -> None:
    # A slow server (llama-server, Anthropic) gave "9606.0 10.31 s 11.23 s" under "ms": the
    # mean in milliseconds, the percentiles beside it in seconds.
    ms = {
        "mean": 9606.0,
        "p50": 10_310.4,
        "p90": 11_230.0,
        "p95": 11_330.0,
        "p99": 11_420.0,
        "p999": 11_430.0,
        "max": 123_440.0,
    }
    text = render_summary(_summary_with_latency(ms))
    header, latency = (ln.split() for ln in text.splitlines() if ln.startswith(("ms ", "latency")))
    assert header[0] == "ms"
    assert latency == [
        "latency",
        "9606.0",
        "10,310",
        "11,230",
        "11,330",
        "11,420",
        "11,430",
        "123,440",
    ]


def test_every_option_of_every_command_has_help() -> None:
    # `runner status --help` listed --provider, --base-url and --api-key-env with no word of what
    # they do (so did report's cache prices, bench's workload sizes, mock's --host).
    import argparse

    from runner import cli

    parser = cli.build_parser(None)  # every subcommand's options filled in
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bare = {
        name: [a.dest for a in sub._actions if not a.help] for name, sub in subs.choices.items()
    }
    assert bare == {name: [] for name in subs.choices}


def test_ctrl_c_says_at_once_that_it_waits_for_the_requests_in_flight(tmp_path: Path) -> None:
    # The first Ctrl-C drains (up to drain_s, 30 s by default) and printed nothing until the
    # end: a user who saw no reaction pressed it again, throwing away answers already paid for.
    import signal
    import subprocess

    jobs = write_jobs(tmp_path, 4)
    with mock_process("--base-ms", "2500") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--progress", "log"]
        args += ["--cache", "none"]
        proc = run_until_requests(url, args, 4, stderr=subprocess.PIPE, text=True)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    said = [ln for ln in err.splitlines() if "stopping: waiting for 4 requests in flight" in ln]
    assert len(said) == 1, err
    assert "Ctrl-C again stops at once" in said[0]
    # said when the signal came, not with the summary at the end
    assert err.index(said[0]) < err.index("run summary")


@pytest.mark.parametrize("given", ["results", "summary", "jobs"])
def test_report_on_a_file_that_is_not_latency_records_names_the_file_it_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    # `runner report out/demo.results.jsonl` (the results, not the latency records) printed
    # twenty "skipped malformed line" warnings and a table of zeros, exit 0.
    jobs = write_jobs(tmp_path, 3)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 0, err
    path = {
        "results": tmp_path / "jobs.results.jsonl",
        "summary": tmp_path / "jobs.summary.json",
        "jobs": jobs,
    }[given]
    code, err = cli_run(capsys, "report", str(path))
    assert code == 2, err
    assert f"{path}: not a latency file" in err and "skipped malformed line" not in err
    if given != "jobs":  # a run's own file: the latency file beside it is named
        assert f"here: {tmp_path / 'jobs.latency.jsonl'}" in err
    code, err = cli_run(
        capsys, "report", str(tmp_path / "jobs.latency.jsonl"), "--compare", str(path)
    )
    assert code == 2 and f"{path}: not a latency file" in err
    # the latency file itself still reports, and an empty one is an empty run, not an error
    assert cli_run(capsys, "report", str(tmp_path / "jobs.latency.jsonl"))[0] == 0
    (tmp_path / "empty.jsonl").write_bytes(b"")
    assert cli_run(capsys, "report", str(tmp_path / "empty.jsonl"))[0] == 0


def test_a_401_to_a_run_that_sent_no_key_says_where_the_key_is_read_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # `export OPENAI_API_KEY` forgotten: the run stopped with the server's 401 text only.
    jobs = write_jobs(tmp_path, 2)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_KEY", "wrong-key")
    with mock_process("--api-key", "right-key", "--latency", "zero") as url:
        args = ["run", str(jobs), "--provider", "openai", "--base-url", url, "--progress", "off"]
        code, err = cli_run(capsys, *args)
        assert code == 3, err
        assert "HTTP 401" in err
        assert "no API key was sent: OPENAI_API_KEY is not set" in err and "--api-key-env" in err
        # a key that was sent and refused is another matter: no word about a missing key
        code, err = cli_run(capsys, *args, "--api-key-env", "MY_KEY")
        assert code == 3 and "HTTP 401" in err and "no API key was sent" not in err
        assert "wrong-key" not in err


@pytest.mark.parametrize(
    ("before", "appended", "joined"),
    [
        (b'{"id":"a"}', b'{"id":"b"}\n', True),  # `echo >>` onto a file without a final newline
        (b'{"id":"a"}', b' {"id":"b"}\n', True),
        (b'{"id":"a"}', b'\n{"id":"b"}\n', False),  # the newline put between them
        (b'{"id":"a"}', b'\r\n{"id":"b"}\r\n', False),
        (b'{"id":"a"}\n', b'{"id":"b"}\n', False),  # an ordinary append
        (b'{"id":"a"}', b"", False),  # unchanged
        (b"", b'{"id":"b"}', False),  # an empty file that got jobs
    ],
)
def test_the_fingerprint_sees_an_append_that_continues_the_last_line(
    tmp_path: Path, before: bytes, appended: bytes, joined: bool
) -> None:
    from runner.fingerprint import fingerprint

    path = tmp_path / "jobs.jsonl"
    path.write_bytes(before)
    old = fingerprint(path).now
    path.write_bytes(before + appended)
    check = fingerprint(path, old)
    assert check.starts_with_old
    assert check.continues_last_line is joined


def test_jobs_echoed_onto_a_last_line_without_newline_are_refused_then_resume_once_fixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A one-line file without a trailing newline, then `echo '{"id": "two", ...}' >> jobs.jsonl`:
    # the byte-prefix check passed, line 1 became invalid JSON and ended in the results as a
    # line-keyed invalid_input (exit 1), job "two" was never sent, and fixing the file by hand
    # then read as an edit.
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "one", "query": "hello?", "params": {"max_tokens": 4}}')
    config = str(fast_config(tmp_path))
    assert cli_run(capsys, "run", str(jobs), "-c", config)[0] == 0
    results = tmp_path / "jobs.results.jsonl"
    first = results.read_bytes()
    two = b'{"id": "two", "query": "again?", "params": {"max_tokens": 4}}\n'
    jobs.write_bytes(jobs.read_bytes() + two)
    code, err = cli_run(capsys, "run", str(jobs), "-c", config)
    assert code == 2, err
    assert "had no newline after its last line" in err and "put a newline between" in err
    assert results.read_bytes() == first  # nothing touched
    jobs.write_bytes(jobs.read_bytes().replace(b"}{", b"}\n{"))  # what the message says to do
    code, err = cli_run(capsys, "run", str(jobs), "-c", config)
    assert code == 0, err
    ids = [line["custom_id"] for line in map(orjson_loads, results.read_bytes().splitlines())]
    assert ids == ["one", "two"]


def orjson_loads(raw: bytes) -> dict[str, object]:
    import orjson

    value: dict[str, object] = orjson.loads(raw)
    return value


def test_a_gemini_base_url_ending_in_v1_gets_the_gemini_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Gemini's API lives under /v1beta; the wrong-endpoint hint asked "does it end in /v1?" of a
    # base URL that did.
    monkeypatch.setenv("GEMINI_API_KEY", "k")
    jobs = write_jobs(tmp_path, 2)
    with mock_process("--latency", "zero") as url:
        code, err = cli_run(
            capsys,
            *("run", str(jobs), "--provider", "gemini", "--base-url", url),
            *("--model", "gemini-2.5-flash", "--progress", "off"),
        )
    assert code == 2, err
    assert "Gemini's ends in /v1beta" in err and "does it end in /v1?" not in err


def test_workers_with_no_resume_replace_a_plain_runs_output_instead_of_refusing_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--workers 2` on a plain run's output is refused up front, and the message offered no way
    # to replace it; with --no-resume the workers then sent every job and the merge refused
    # ("exists and is not an earlier merge of this input"), exit 2 after the spend, each time.
    from helpers import runner

    jobs = write_jobs(tmp_path, 6)
    config = str(fast_config(tmp_path))
    assert cli_run(capsys, "run", str(jobs), "-c", config)[0] == 0
    results = tmp_path / "jobs.results.jsonl"
    before = results.read_bytes()
    r = runner("run", str(jobs), "-c", config, "--workers", "2")
    assert r.returncode == 2 and "replace it with --no-resume" in r.stderr, r.stderr
    assert results.read_bytes() == before
    r = runner("run", str(jobs), "-c", config, "--workers", "2", "--no-resume")
    assert r.returncode == 0, r.stderr[-2000:]
    after = sorted(str(orjson_loads(raw)["custom_id"]) for raw in results.read_bytes().splitlines())
    assert after == sorted(f"q{i}" for i in range(6))
    assert (tmp_path / "jobs.results.jsonl.merged.json").exists()  # now the workers' merge
    r = runner("run", str(jobs), "-c", config, "--workers", "2")  # and it resumes as one
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("port", ["busy", "99999", "-5"])
def test_runner_mock_on_a_bad_or_busy_port_is_one_line_and_exit_2(port: str) -> None:
    # docs/MOCK.md: exit 2 on an invalid option. --port 99999 served on port 34463 (99999 wrapped
    # to 16 bits), --port -5 and a port in use were tracebacks with exit 1.
    import socket
    import subprocess
    import sys

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        if port == "busy":
            port = str(held.getsockname()[1])
        r = subprocess.run(
            [sys.executable, "-m", "runner", "mock", "--host", "127.0.0.1", "--port", port],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stdout == ""  # no URL: nothing is served
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("runner mock: ") and port in r.stderr
