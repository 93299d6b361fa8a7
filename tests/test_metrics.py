"""Units of the metrics and logs modules: bucket counts, families, the JSON formatter."""

from __future__ import annotations

import io
import logging
import random

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.logs import EventLog, JsonFormatter
from runner.metrics import BUCKETS_S, Figures, RunMetrics, hist_of
from runner.stats import Distribution


def test_count_le_is_exact_while_exact_and_close_once_bucketed() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5, 1.5) for _ in range(5000)]
    bounds = [10.0, 100.0, 1000.0, 10000.0]
    want = [sum(v <= b for v in values) for b in bounds]
    exact = Distribution(exact_limit=10_000)
    exact.extend(values)
    assert exact.count_le(bounds) == want
    folded = Distribution(exact_limit=100)
    folded.extend(values)
    assert not folded.exact
    # A 0.2%-wide bucket straddling a bound may land on either side of it.
    for got, w in zip(folded.count_le(bounds), want, strict=True):
        assert abs(got - w) <= 0.005 * len(values)


def test_histogram_family_is_cumulative_in_seconds() -> None:
    d = Distribution()
    d.extend([5.0, 30.0, 30.0, 700.0, 500_000.0])  # milliseconds
    m = RunMetrics(job_name="j")
    m.update(Figures(ok=5, latency=hist_of(d)))
    fams = {f.name: f for f in text_string_to_metric_families(m.exposition())}
    buckets = {
        s.labels["le"]: s.value
        for s in fams["runner_request_duration_seconds"].samples
        if s.name.endswith("_bucket")
    }
    assert buckets["0.01"] == 1 and buckets["0.05"] == 3 and buckets["1.0"] == 4
    assert buckets[repr(BUCKETS_S[-1])] == 4 and buckets["+Inf"] == 5
    (total,) = (s.value for s in fams["runner_request_duration_seconds"].samples
                if s.name.endswith("_sum"))  # fmt: skip
    assert abs(total - 500.765) < 1e-9


def test_json_formatter_one_object_per_line_with_utc_time() -> None:
    out = io.StringIO()
    log = EventLog(out)
    try:
        log.emit("progress", done=3, path=io)  # an odd value is stringified, not lost
        log.emit("guard_tripped", logging.ERROR, code="max_cost")
    finally:
        log.close()
    a, b = (orjson.loads(line) for line in out.getvalue().splitlines())
    assert a["event"] == "progress" and a["done"] == 3 and a["level"] == "info"
    assert a["ts"].endswith("Z") and len(a["ts"]) == len("2026-01-01T00:00:00.000Z")
    assert b["level"] == "error" and b["code"] == "max_cost"
    assert logging.getLogger("runner.events").propagate  # closed: host logging as before


def test_quiet_event_log_keeps_only_errors() -> None:
    out = io.StringIO()
    log = EventLog(out, quiet=True)
    try:
        log.emit("progress", done=1)
        log.emit("run_end", logging.ERROR, exit_code=3)
    finally:
        log.close()
    (line,) = out.getvalue().splitlines()
    assert orjson.loads(line)["event"] == "run_end"


def test_formatter_includes_traceback() -> None:
    rec = logging.LogRecord("runner.events", logging.ERROR, __file__, 1, "boom", None, None)
    try:
        raise ValueError("x")
    except ValueError:
        import sys

        rec.exc_info = sys.exc_info()
    doc = orjson.loads(JsonFormatter().format(rec))
    assert doc["event"] == "boom" and "ValueError" in doc["traceback"]


def test_json_mode_turns_an_unexpected_error_into_one_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner import cli

    def boom(ns: object) -> int:
        raise RuntimeError("defect")

    monkeypatch.setattr(cli, "_cmd_run", boom)
    assert cli.main(["run", "jobs.jsonl", "--log-format", "json"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    doc = orjson.loads(line)
    assert doc["event"] == "error" and "RuntimeError: defect" in doc["message"]
    assert "Traceback" in doc["traceback"] and doc["exit_code"] == 1
    with pytest.raises(RuntimeError):  # text mode: the traceback as usual
        cli.main(["run", "jobs.jsonl"])
