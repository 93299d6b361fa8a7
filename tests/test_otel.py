"""OpenTelemetry GenAI metrics: names, units and attributes exactly as the conventions define.

Needs the ``otel`` extra (``pip install -e '.[otel]'``; ``make install`` includes it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

pytest.importorskip(
    "opentelemetry.sdk.metrics", reason="the otel extra is not installed: pip install '.[otel]'"
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as ga
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics as gm
from opentelemetry.semconv.attributes import error_attributes

from runner.api import run
from runner.config import RunConfig
from runner.mock import MockConfig, serve


def points(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    out: dict[str, Any] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                out[m.name] = m
    return out


async def test_run_records_genai_metrics_with_convention_names(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(
            orjson.dumps({"id": f"q{i}", "query": f"q{i}?", "params": {"max_tokens": 5}}) + b"\n"
            for i in range(60)
        )
        + b'{"id": "bad", "query": 5}\n'  # never sent: no operation recorded
    )
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    async with serve(
        MockConfig(latency="zero", fault_http_500=0.2, fault_reset=0.1, seed=5)
    ) as url:
        cfg = RunConfig(
            provider="openai", base_url=url, model="mock-1", max_attempts=1, progress="off",
            output=tmp_path / "r.jsonl", latency=tmp_path / "l.jsonl", summary=tmp_path / "s.json",
        )  # fmt: skip
        outcome = await run(jobs, cfg, meter_provider=provider)
    s = outcome.summary
    assert s["jobs"]["failed"] > 0
    got = points(reader)
    # The names come from the semantic-conventions package itself, not from our own constants.
    usage = got[gm.GEN_AI_CLIENT_TOKEN_USAGE]
    duration = got[gm.GEN_AI_CLIENT_OPERATION_DURATION]
    assert usage.unit == "{token}" and duration.unit == "s"
    base = {
        ga.GEN_AI_OPERATION_NAME: "chat",
        ga.GEN_AI_PROVIDER_NAME: "openai",
        ga.GEN_AI_REQUEST_MODEL: "mock-1",
    }
    by_type = {dp.attributes[ga.GEN_AI_TOKEN_TYPE]: dp for dp in usage.data.data_points}
    assert set(by_type) == {"input", "output"}
    for t, key in (("input", "prompt"), ("output", "completion")):
        dp = by_type[t]
        assert {k: v for k, v in dp.attributes.items() if k != ga.GEN_AI_TOKEN_TYPE} == base
        assert dp.sum == s["tokens"][key]
    err = error_attributes.ERROR_TYPE
    ok = [dp for dp in duration.data.data_points if err not in dp.attributes]
    failed = [dp for dp in duration.data.data_points if err in dp.attributes]
    assert len(ok) == 1 and dict(ok[0].attributes) == base and ok[0].count == s["jobs"]["ok"]
    sent_errors = {k: v for k, v in s["jobs"]["by_error"].items() if k != "invalid_input"}
    assert {"connection", "http_5xx"} <= set(sent_errors)  # with and without a response
    assert {dp.attributes[err]: dp.count for dp in failed} == sent_errors
    assert list(duration.data.data_points[0].explicit_bounds)[:3] == [0.01, 0.02, 0.04]


def test_otel_endpoint_builds_an_otlp_exporter() -> None:
    from opentelemetry.sdk.metrics import MeterProvider as Sdk

    from runner.otel import otlp_meter_provider

    provider = otlp_meter_provider("http://127.0.0.1:9/v1/metrics")
    try:
        assert isinstance(provider, Sdk)
    finally:
        provider.shutdown(timeout_millis=100)  # type: ignore[attr-defined]


def test_a_collector_that_is_down_neither_holds_the_exit_nor_breaks_json_logs(
    tmp_path: Path,
) -> None:
    # Found by QA: with the collector unreachable, a finished one-job run waited about 16 s at
    # exit (the exporter's 10 s per export, for the last flush and again for the shutdown), and
    # its retry warnings reached a --log-format json stderr as bare text lines.
    import socket
    import subprocess
    import sys
    import time

    from helpers import mock_process

    with socket.socket() as s:  # a loopback port that refuses connections
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id":"a","query":"hi"}\n')
    with mock_process("--latency", "zero") as url:
        cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--provider", "openai"]
        cmd += ["--base-url", url, "--log-format", "json", "--no-resume"]
        cmd += ["--otel-endpoint", f"http://127.0.0.1:{dead}/v1/metrics"]
        t0 = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
        took = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stderr.splitlines()
    events = [orjson.loads(line) for line in lines]  # every stderr line is one JSON object
    assert any(e["event"] == "run_end" for e in events)
    assert any(e["level"] in ("warning", "error") and "export" in e["event"] for e in events)
    assert took < 12.0, took  # bounded by EXPORT_TIMEOUT_S (5 s) and a 1 s shutdown, not ~16 s


def test_the_cli_run_delivers_its_measurements_to_a_live_collector(tmp_path: Path) -> None:
    # close() shuts an owned provider down instead of flushing it first (the shutdown's own
    # final export is the one whose last log lines land while the run's log is open): the
    # measurements must still reach the collector, once, before the process exits.
    import http.server
    import subprocess
    import sys
    import threading

    from helpers import mock_process

    posts: list[tuple[str, int]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            n = int(self.headers.get("content-length", 0))
            posts.append((self.path, len(self.rfile.read(n))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id":"a","query":"hi"}\n')
    try:
        with mock_process("--latency", "zero") as url:
            cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--provider", "openai"]
            cmd += ["--base-url", url, "--no-resume", "--progress", "off"]
            cmd += ["--otel-endpoint", f"http://127.0.0.1:{srv.server_port}/v1/metrics"]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr[-2000:]
    assert [p for p, _ in posts] == ["/v1/metrics"] and posts[0][1] > 100, posts
