"""Tests for ``runner report``: text, --json, --compare, prices, malformed lines, exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner import report

FIXTURE = Path(__file__).parent / "fixtures" / "latency_sample.jsonl"
PRICES = ["--price-input", "2", "--price-cached-input", "0.5", "--price-cache-write", "2.5",
          "--price-output", "8"]  # fmt: skip


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.main(parser.parse_args([str(a) for a in argv]))


def json_out(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> Any:
    assert run(*argv, "--json") == 0
    return orjson.loads(capsys.readouterr().out)


def test_json_has_exactly_the_spec_keys_plus_documented_extras(
    capsys: pytest.CaptureFixture[str],
) -> None:
    s = json_out(capsys, FIXTURE, *PRICES)
    assert list(s) == [
        # docs/FORMATS.md ("Summary"), in its order
        "jobs", "wall_s", "requests_per_s", "retries", "limiter_wait_s", "tokens",
        "cache_hit_ratio", "latency_ms", "ttft_ms", "cost",
        # extras
        "total_ms", "tpot_ms", "itl_ms", "throughput", "cache", "wall", "source",
    ]  # fmt: skip
    assert list(s["jobs"]) == ["total", "ok", "failed", "skipped_resumed", "by_error"]
    assert list(s["tokens"]) == ["prompt", "cached", "cache_write", "completion"]
    pct = ["mean", "p50", "p90", "p95", "p99", "p999", "max"]
    assert list(s["latency_ms"]) == pct and list(s["ttft_ms"]) == pct
    assert list(s["cost"]) == ["currency", "billed", "uncached", "saving"]
    assert s["cost"]["billed"] == 0.006576
    assert s["latency_ms"]["p99"] == 1095.0
    assert s["source"] == {"file": str(FIXTURE), "records": 8, "malformed_lines": 0}


def test_text_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FIXTURE) == 0
    out = capsys.readouterr().out
    assert "6 ok, 2 failed (http_5xx 1, timeout 1)" in out
    assert "cost" not in out  # no prices given


def write(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def fixture_records() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines()]


def test_compare_ratios_are_b_over_a(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # B: the same jobs twice as slow, nothing served from the cache, prices unchanged
    slow = []
    for r in fixture_records():
        r = dict(r)
        for k in ("ttft_ms", "latency_ms"):
            if r[k] is not None:
                r[k] *= 2
        if r["itl_ms"]:
            r["itl_ms"] = [v * 2 for v in r["itl_ms"]]
        r["cached_tokens"] = 0
        slow.append(r)
    b = write(tmp_path / "b.jsonl", slow)
    doc = json_out(capsys, FIXTURE, "--compare", b, *PRICES)
    ratios = {row["metric"]: row["ratio"] for row in doc["compare"]}
    assert ratios["requests/s"] == 1.0
    assert ratios["latency p50 ms"] == 2.0
    assert ratios["latency p99 ms"] == 2.0
    assert ratios["ttft p50 ms"] == 2.0
    assert ratios["ttft p99 ms"] == 2.0
    assert ratios["itl p50 ms"] == 2.0
    assert ratios["cache hit ratio"] == 0.0
    # B read nothing from the cache: A's 2700 cached tokens cost B the full input price
    billed_b = (4700 - 1300) * 2 + 1300 * 2.5 + 72 * 8
    assert ratios["cost billed USD"] == round(billed_b / 6576, 4)
    assert ratios["cost uncached USD"] == 1.0
    assert doc["a"]["latency_ms"]["p50"] * 2 == doc["b"]["latency_ms"]["p50"]

    assert run(FIXTURE, "--compare", b, *PRICES) == 0
    text = capsys.readouterr().out
    assert f"A = {FIXTURE}" in text and f"B = {b}" in text
    row = next(line for line in text.splitlines() if line.startswith("latency p50 ms"))
    assert row.split() == ["latency", "p50", "ms", "700", "1,400", "2.000"]


def test_compare_ratio_is_none_when_a_is_zero() -> None:
    rows = report.compare_rows({"retries": 0}, {"retries": 4})
    assert next(r for r in rows if r["metric"] == "retries")["ratio"] is None


def test_malformed_lines_are_skipped_and_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = FIXTURE.read_bytes().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad_lines = [
        lines[0],
        b"{not json",
        b"",
        b"[1, 2]",
        lines[1],
        b'{"custom_id": "x", "latency_ms": "slow"}',
        lines[2][:40],  # a partial last line, as a crash leaves it
    ]
    bad.write_bytes(b"\n".join(bad_lines))
    assert run(bad, "--json") == 0
    captured = capsys.readouterr()
    s, err = orjson.loads(captured.out), captured.err
    assert s["source"] == {"file": str(bad), "records": 2, "malformed_lines": 4}
    assert s["jobs"]["total"] == 2
    for lineno in (2, 4, 6, 7):
        assert f"{bad}:{lineno}: skipped malformed line" in err
    assert "latency_ms is not a number" in err


def test_a_record_without_an_outcome_is_malformed_not_ok(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record that says neither ok nor error must not be counted as a success."""
    lines = FIXTURE.read_bytes().splitlines()
    rec = orjson.loads(lines[0])
    rec.pop("outcome")
    path = tmp_path / "no-outcome.jsonl"
    path.write_bytes(b"\n".join([orjson.dumps(rec), lines[1]]) + b"\n")
    assert run(path, "--json") == 0
    captured = capsys.readouterr()
    s = orjson.loads(captured.out)
    assert s["source"]["malformed_lines"] == 1 and s["jobs"]["total"] == 1
    assert f"{path}:1: skipped malformed line" in captured.err
    assert 'outcome is not "ok" or "error"' in captured.err


def test_many_malformed_lines_are_summarised(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.jsonl"
    # one record, last: the warnings held until it shows this is a latency file are all said
    record = FIXTURE.read_bytes().splitlines()[0]
    bad.write_bytes(b"oops\n" * (report.MAX_WARNINGS + 5) + record + b"\n")
    assert run(bad) == 0
    err = capsys.readouterr().err
    assert err.count("skipped malformed line") == report.MAX_WARNINGS
    assert f"{report.MAX_WARNINGS + 5} malformed lines skipped in all" in err


def test_unreadable_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(tmp_path / "missing.jsonl") == 2
    assert "cannot read latency file" in capsys.readouterr().err
    assert run(FIXTURE, "--compare", tmp_path / "missing.jsonl") == 2


def test_prices_from_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "runner.toml"
    cfg.write_text(
        'model = "m1"\n[prices.m1]\ninput = 2.0\noutput = 8.0\ncached_input = 0.5\n'
        "cache_write = 2.5\n[prices.m2]\ninput = 1.0\noutput = 1.0\n"
    )
    assert json_out(capsys, FIXTURE, "-c", cfg)["cost"]["billed"] == 0.006576
    assert json_out(capsys, FIXTURE, "-c", cfg, "--model", "m2")["cost"]["uncached"] == 0.004772


def test_bad_prices_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(FIXTURE, "--price-input", "2") == 2
    assert "--price-output" in capsys.readouterr().err
    assert run(FIXTURE, "--price-input", "-1", "--price-output", "1") == 2
    cfg = tmp_path / "bad.toml"
    cfg.write_text("prices = 3\n")
    assert run(FIXTURE, "-c", cfg) == 2


def test_slo_flags_add_goodput(capsys: pytest.CaptureFixture[str]) -> None:
    s = json_out(capsys, FIXTURE, "--slo-ttft-ms", "150")
    assert s["goodput"]["requests"] == 3


def test_html_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.html"
    capsys.readouterr()
    assert run(FIXTURE, "--compare", FIXTURE, "--html", out, *PRICES) == 0
    said = capsys.readouterr()
    assert f"runner report: wrote the HTML report to {out}" in said.err  # a new user asked where
    assert str(out) not in said.out
    page = out.read_text()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for chart in ("latency", "ttft", "cdf", "throughput", "inflight", "groups", "cache", "cost"):
        assert f'id="chart-{chart}"' in page
    assert run(FIXTURE, "--html", tmp_path / "no-such-dir" / "r.html") == 2


def test_html_stays_small_for_long_runs(tmp_path: Path) -> None:
    base = 1_700_000_000.0
    recs = [
        {"custom_id": str(i), "queued_at": base, "started_at": base + i * 0.01,
         "ended_at": base + i * 0.01 + 0.3, "latency_ms": 300.0 + i % 97, "ttft_ms": 50.0 + i % 13,
         "prompt_tokens": 100, "cached_tokens": 50, "completion_tokens": 10, "outcome": "ok"}
        for i in range(20_000)
    ]  # fmt: skip
    path = write(tmp_path / "long.jsonl", recs)
    run_ = report.load_run(path, None)
    # Without "outcome" every record was skipped as malformed and the page was small because
    # it was empty (found when a file of no latency records became an error).
    assert run_.records == 20_000 and run_.malformed == 0
    assert len(run_.series["t_s"]) <= 300
    page = report.render_html([run_])
    assert len(page) < 200_000


def test_read_records_keeps_keyed_records_and_warns_about_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "lat.jsonl"
    path.write_bytes(
        b'{"custom_id": "a", "attempts": 1, "outcome": "ok"}\n'
        b'{"custom_id": null, "line": 2, "outcome": "error"}\n'  # a bad line keyed by its line
        b'{"attempts": 1}\n'
        b'{"custom_id": null, "line": "4"}\n'
        b"[1]\n"
        b'{"custom_id": 5}\n'
    )
    warned: list[tuple[int, str]] = []
    got = list(report.read_records(path, warn=lambda _p, n, msg: warned.append((n, msg))))
    assert [n for n, _rec in got] == [1, 2]
    assert [n for n, _msg in warned] == [3, 4, 5, 6]
    assert all("not a latency record" in msg for _n, msg in warned)
