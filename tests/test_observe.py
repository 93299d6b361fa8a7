"""Scheduled-run operations end to end: JSON events, Prometheus metrics, exit 75, quiet mode.

In-process runs use the simulated provider started in the test's own loop; the CLI tests start
``python -m runner.mock`` on 127.0.0.1 and stop it by pid.
"""

from __future__ import annotations

import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import mock_config, mock_process
from metrics_helpers import samples

from runner.api import run
from runner.config import RunConfig
from runner.logs import LOGGER_NAME
from runner.mock import MockConfig, serve
from runner.models import Price

PY = sys.executable
PRICE = {"mock-1": Price(input=2.0, cached_input=0.5, output=8.0)}
PRICE_TOML = '[prices."mock-1"]\ninput = 2.0\ncached_input = 0.5\noutput = 8.0\n'


def write_jobs(tmp: Path, n: int) -> Path:
    path = tmp / "jobs.jsonl"
    with path.open("wb") as fh:
        for i in range(n):
            line = {"id": f"q{i}", "query": f"question {i}?", "params": {"max_tokens": 6}}
            fh.write(orjson.dumps(line) + b"\n")
    return path


def config(tmp: Path, url: str, **kw: Any) -> RunConfig:
    return mock_config(tmp, url, **{"concurrency": 16, "prices": PRICE, "resume": False, **kw})


def value(smp: dict[Any, float], name: str, **labels: str) -> float:
    want = {"job_name": "nightly", "team": "ml", **labels}
    return smp[(name, tuple(sorted(want.items())))]


def assert_counters_match_summary(text: str, summary: dict[str, Any]) -> None:
    smp = samples(text)
    jobs = summary["jobs"]
    assert value(smp, "runner_requests_total", outcome="ok", error_code="") == jobs["ok"]
    errors = {
        dict(labels)["error_code"]: v
        for (name, labels), v in smp.items()
        if name == "runner_requests_total" and dict(labels)["outcome"] == "error"
    }
    assert errors == jobs["by_error"]
    tok = summary["tokens"]
    for t, k in (("input", "prompt"), ("cached", "cached"), ("cache_write", "cache_write")):
        assert value(smp, "runner_tokens_total", type=t) == tok[k]
    assert value(smp, "runner_tokens_total", type="output") == tok["completion"]
    assert value(smp, "runner_cost_usd_total", kind="billed") == summary["cost"]["billed"]
    assert value(smp, "runner_cost_usd_total", kind="uncached") == summary["cost"]["uncached"]
    assert value(smp, "runner_retries_total") == summary["retries"]
    assert value(smp, "runner_limiter_wait_seconds_total") == summary["limiter_wait_s"]
    assert value(smp, "runner_jobs", state="done") == jobs["ok"]
    assert value(smp, "runner_jobs", state="failed") == jobs["failed"]
    assert value(smp, "runner_jobs", state="pending") == summary["not_sent"]
    assert value(smp, "runner_run_duration_seconds") == summary["wall_s"]
    assert value(smp, "runner_request_duration_seconds_count") == jobs["ok"]
    assert value(smp, "runner_request_duration_seconds_bucket", le="+Inf") == jobs["ok"]


# -- in-process --------------------------------------------------------------------------------


async def test_textfile_parses_and_agrees_exactly_with_the_summary(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 300)
    prom = tmp_path / "runner.prom"
    mock = MockConfig(latency="zero", fault_http_500=0.15, seed=3)
    async with serve(mock) as url:
        cfg = config(
            tmp_path, url, max_attempts=2, metrics_textfile=prom, metrics_job="nightly",
            metrics_labels={"team": "ml"},
        )  # fmt: skip
        outcome = await run(jobs, cfg)
    summary = orjson.loads((tmp_path / "s.json").read_bytes())
    assert summary["jobs"]["failed"] > 0 and summary["retries"] > 0  # both paths exercised
    text = prom.read_text()
    assert_counters_match_summary(text, summary)
    smp = samples(text)
    assert value(smp, "runner_exit_code") == outcome.exit_code == 1
    assert ("runner_last_success_timestamp_seconds", ()) not in smp
    assert not any(n.startswith("runner_last_success") for n, _ in smp)  # failed: not set
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # renamed away


async def test_textfile_keeps_the_last_success_time_across_a_failed_run(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 20)
    prom = tmp_path / "runner.prom"
    labels = {"metrics_job": "nightly", "metrics_labels": {"team": "ml"}}
    async with serve(MockConfig(latency="zero")) as url:
        ok = await run(jobs, config(tmp_path, url, metrics_textfile=prom, **labels))
    assert ok.exit_code == 0
    first = value(samples(prom.read_text()), "runner_last_success_timestamp_seconds")
    assert abs(first - time.time()) < 60
    async with serve(MockConfig(latency="zero", fault_http_500=1.0)) as url:
        bad = await run(
            jobs, config(tmp_path, url, metrics_textfile=prom, max_attempts=1, **labels)
        )
    assert bad.exit_code == 1
    smp = samples(prom.read_text())
    assert value(smp, "runner_last_success_timestamp_seconds") == first
    assert value(smp, "runner_exit_code") == 1


class _Gateway(http.server.BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        self.seen.append((self.command, self.path, body))
        self.send_response(200)
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def gateway() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    seen: list[tuple[str, str, bytes]] = []
    handler = type("H", (_Gateway,), {"seen": seen})
    srv = http.server.HTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


async def test_pushgateway_gets_last_success_only_on_success(
    tmp_path: Path, gateway: tuple[str, list[tuple[str, str, bytes]]]
) -> None:
    url_gw, seen = gateway
    jobs = write_jobs(tmp_path, 20)
    kw: dict[str, Any] = {"pushgateway": url_gw, "metrics_job": "nightly",
                          "metrics_labels": {"team": "ml"}}  # fmt: skip
    async with serve(MockConfig(latency="zero")) as url:
        assert (await run(jobs, config(tmp_path, url, **kw))).exit_code == 0
    async with serve(MockConfig(latency="zero", fault_http_500=1.0)) as url:
        assert (await run(jobs, config(tmp_path, url, max_attempts=1, **kw))).exit_code == 1
    assert [(m, p) for m, p, _ in seen] == [("POST", "/metrics/job/nightly/team/ml")] * 2
    good, bad = (b.decode() for _, _, b in seen)
    assert "runner_last_success_timestamp_seconds" in good
    assert "runner_last_success_timestamp_seconds" not in bad
    assert 'runner_exit_code{job_name="nightly",team="ml"} 1.0' in bad


async def test_breaker_opened_by_transient_failures_exits_75(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 200)
    async with serve(MockConfig(latency="zero", fault_http_503=1.0)) as url:
        cfg = config(tmp_path, url, max_attempts=1, breaker_min_requests=10, concurrency=4)
        outcome = await run(jobs, cfg)
    assert outcome.summary["guard"]["code"] == "circuit_open"
    assert outcome.summary["guard"]["transient"] is True
    assert outcome.exit_code == 75


@contextmanager
def host_records() -> Iterator[list[logging.LogRecord]]:
    """The runner's log records as a handler that an embedding host adds to its logger sees
    them, while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign,assignment]
    logging.getLogger(LOGGER_NAME).addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger(LOGGER_NAME).removeHandler(handler)


async def test_rate_limit_pause_past_max_pause_exits_75(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 50)
    mock = MockConfig(latency="zero", fault_http_429=1.0, fault_429_retry_ms=3000)
    with host_records() as records:
        async with serve(mock) as url:
            cfg = config(tmp_path, url, max_pause_s=1.0, drain_s=1.0, log_format="json")
            t0 = time.perf_counter()
            outcome = await run(jobs, cfg)
    assert outcome.exit_code == 75 and outcome.stopped == "rate_limit_pause"
    assert time.perf_counter() - t0 < 10
    events = [r.getMessage() for r in records]
    assert "rate_limit_pause" in events and "transient_stop" in events
    assert events[-1] == "run_end" and records[-1].fields["exit_code"] == 75  # type: ignore[attr-defined]


async def test_progress_retries_and_pause_events_reach_host_logging(tmp_path: Path) -> None:
    """An embedding host (Airflow) sees the events through its own logging handlers."""
    jobs = write_jobs(tmp_path, 100)
    mock = MockConfig(base_ms=20, decode_ms_per_token=0, fault_http_500=0.2, seed=1)
    with host_records() as records:
        async with serve(mock) as url:
            cfg = config(tmp_path, url, concurrency=4, log_format="json", log_interval_s=0.2)
            await run(jobs, cfg)
    events = [r.getMessage() for r in records]
    assert events[0] == "run_start" and events[-1] == "run_end"
    progress = [r.fields for r in records if r.getMessage() == "progress"]  # type: ignore[attr-defined]
    assert len(progress) >= 2
    assert [p["done"] for p in progress] == sorted(p["done"] for p in progress)
    retries = [r.fields for r in records if r.getMessage() == "retries"]  # type: ignore[attr-defined]
    # Summarised: far fewer lines than retries, and their counts add up to the ticks' totals.
    assert retries and sum(r["count"] for r in retries) == retries[-1]["total"]
    assert len(retries) < retries[-1]["total"]


# -- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def mock_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with mock_process(*getattr(request, "param", ["--latency", "zero"])) as url:
        yield url


def cli(url: str, jobs: Path, *extra: str) -> list[str]:
    return [
        PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
        "--model", "mock-1", "--no-resume", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "mock_url", [["--latency", "zero", "--fault-http-500", "0.1", "--seed", "2"]], indirect=True
)
def test_json_mode_every_stderr_line_is_an_event_and_summary_goes_to_stdout(
    tmp_path: Path, mock_url: str
) -> None:
    jobs = write_jobs(tmp_path, 400)
    cfg = tmp_path / "c.toml"
    cfg.write_text(PRICE_TOML)
    prom = tmp_path / "m.prom"
    r = subprocess.run(
        cli(mock_url, jobs, "-c", str(cfg), "--log-format", "json", "--summary", "-",
            "--metrics-textfile", str(prom), "--metrics-job", "nightly",
            "--metrics-label", "team=ml", "--max-attempts", "2", "--concurrency", "4",
            "--log-interval", "0.2"),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = r.stderr.splitlines()
    events = [orjson.loads(line) for line in lines]  # every line parses
    for e in events:
        assert set(e) >= {"ts", "level", "event"} and e["ts"].endswith("Z")
    names = [e["event"] for e in events]
    assert names[0] == "run_start" and names[-1] == "run_end"
    assert "progress" in names
    start, end = events[0], events[-1]
    assert start["limits"]["concurrency"] == 4 and start["base_url_host"].startswith("127.0.0.1")
    summary = orjson.loads(r.stdout)  # stdout is exactly the summary
    assert r.returncode == end["exit_code"] == (1 if summary["jobs"]["failed"] else 0)
    assert end["jobs"] == summary["jobs"] and end["cost"] == summary["cost"]
    assert not (tmp_path / "jobs.summary.json").exists()
    assert_counters_match_summary(prom.read_text(), summary)


def test_quiet_prints_nothing_but_errors(tmp_path: Path, mock_url: str) -> None:
    jobs = write_jobs(tmp_path, 30)
    r = subprocess.run(cli(mock_url, jobs, "--quiet"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "" and r.stdout == ""
    r = subprocess.run(
        cli(mock_url, jobs, "-q", "--log-format", "json"), capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and r.stderr == ""
    r = subprocess.run(
        cli(mock_url, tmp_path / "missing.jsonl", "-q", "--log-format", "json"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    (err,) = (orjson.loads(line) for line in r.stderr.splitlines())
    assert r.returncode == 2 and err["event"] == "error" and err["level"] == "error"
    assert "missing.jsonl" in err["message"] and err["exit_code"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_provider_exits_75_before_anything_is_sent(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 5)
    url = f"http://127.0.0.1:{_free_port()}/v1"  # nothing listens there
    r = subprocess.run(cli(url, jobs), capture_output=True, text=True, timeout=60)
    assert r.returncode == 75, r.stderr
    assert "unreachable after 3 attempts" in r.stderr  # retried before calling it transient
    assert (
        not (tmp_path / "jobs.results.jsonl").exists()
        or not (tmp_path / "jobs.results.jsonl").read_bytes()
    )


@pytest.mark.parametrize(
    "mock_url",
    [["--base-ms", "30", "--decode-ms-per-token", "0", "--prefill-ms-per-token", "0"]],
    indirect=True,
)
def test_scrape_during_a_run_sees_counters_rise(tmp_path: Path, mock_url: str) -> None:
    n = 150  # 2.3 s at two 30 ms requests at a time: the counter rises every ~15 ms
    jobs = write_jobs(tmp_path, n)
    proc = subprocess.Popen(
        cli(mock_url, jobs, "--log-format", "json", "--metrics-port", "0", "--concurrency", "2",
            "--metrics-job", "nightly", "--metrics-label", "team=ml"),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        start = orjson.loads(proc.stderr.readline())
        assert start["event"] == "run_start"
        url = start["metrics_url"]
        assert url.startswith("http://127.0.0.1:")  # loopback unless --metrics-host widens it
        seen: list[float] = []
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            with urllib.request.urlopen(url, timeout=5) as resp:
                smp = samples(resp.read().decode())
            seen.append(value(smp, "runner_requests_total", outcome="ok", error_code=""))
            if len(set(seen)) >= 2:
                break
            time.sleep(0.1)
        assert len(set(seen)) >= 2, seen  # different, rising readings while running
        assert seen == sorted(seen) and seen[-1] < n
        assert proc.poll() is None  # still running when the counters were seen rising
        rest = proc.stderr.read()
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    end = orjson.loads(rest.splitlines()[-1])
    assert end["event"] == "run_end" and end["jobs"]["ok"] == n


def test_bad_metrics_label_is_refused_before_anything_is_touched(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 3)
    for bad in ("outcome=x", "1abc=x", "noequals"):
        r = subprocess.run(
            [PY, "-m", "runner", "run", str(jobs), "--metrics-label", bad],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 2, (bad, r.stderr)
        assert not (tmp_path / "jobs.results.jsonl").exists()


def test_metrics_port_in_use_is_a_clear_error(tmp_path: Path, mock_url: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run(
            cli(mock_url, write_jobs(tmp_path, 3), "--metrics-port", str(port)),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert r.returncode == 2 and f"127.0.0.1:{port}" in r.stderr
    assert not (tmp_path / "jobs.results.jsonl").exists()  # refused before any output


def test_live_figures_price_each_model_as_the_summary_does() -> None:
    """The cost exported while a run lasts (metrics, progress) is the summary's, not None."""
    from types import SimpleNamespace

    from runner.models import Price
    from runner.observe import Observer
    from runner.pipeline import LiveStats
    from runner.stats import SummaryBuilder

    config = RunConfig(
        prices={"m1": Price(input=1.0, output=2.0), "m2": Price(input=10.0, output=0.0)}
    )
    sb = SummaryBuilder(None, price_of=config.price)
    for model, prompt in (("m1", 1_000_000), ("m2", 100_000)):
        rec = {"custom_id": model, "outcome": "ok", "model": model, "prompt_tokens": prompt}
        sb.add({**rec, "cached_tokens": 0, "completion_tokens": 0, "cache_role": "none"})
    obs = Observer(config, jobs_path=None)
    obs._engine = SimpleNamespace(summary=sb, stats=LiveStats(), limiter=None)  # type: ignore[assignment]
    cost = obs._figures(None).cost
    assert cost is not None and cost == pytest.approx((2.0, 2.0))
    assert cost[0] == pytest.approx(sb.summary(wall_s=1.0)["cost"]["billed"])
