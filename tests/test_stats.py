"""Tests for runner.stats: percentiles, the summary JSON, cost and the timeline.

Expected values are computed by hand from tests/fixtures/latency_sample.jsonl (8 records: two
primers, four followers, two unrelated requests; 6 ok, 2 failed). Percentiles use linear
interpolation: h = q * (n - 1), p = x[floor h] + frac(h) * (x[floor h + 1] - x[floor h]).
"""

from __future__ import annotations

import math
import random
import statistics
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.models import LatencyRecord, Price
from runner.report import render_summary
from runner.stats import Distribution, SummaryBuilder, Timeline, cost_of

FIXTURE = Path(__file__).parent / "fixtures" / "latency_sample.jsonl"
PRICE = Price(input=2.0, output=8.0, cached_input=0.5, cache_write=2.5)


def load_fixture() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines()]


def fixture_summary(price: Price | None = PRICE, **kw: Any) -> dict[str, Any]:
    b = SummaryBuilder(price, **kw)
    for rec in load_fixture():
        b.add(rec)
    return b.summary()


# --- Distribution --------------------------------------------------------------------------


def test_exact_percentiles_small_run() -> None:
    d = Distribution()
    for v in (100, 30, 10, 90, 20, 80, 40, 70, 50, 60):
        d.add(float(v))
    # sorted 10..100; h = q * 9
    assert d.quantile(0.5) == pytest.approx(55.0)  # h 4.5: 50 + .5 * 10
    assert d.quantile(0.9) == pytest.approx(91.0)  # h 8.1: 90 + .1 * 10
    assert d.quantile(0.99) == pytest.approx(99.1)  # h 8.91
    assert d.quantile(0.0) == 10.0
    assert d.quantile(1.0) == 100.0
    assert d.exact
    assert d.summary() == {
        "mean": 55.0,
        "p50": 55.0,
        "p90": 91.0,
        "p95": 95.5,
        "p99": 99.1,
        "p999": 99.91,
        "max": 100.0,
    }


def test_single_value_and_empty() -> None:
    d = Distribution()
    assert d.summary() is None
    assert math.isnan(d.quantile(0.5))
    d.add(42.5)
    assert d.summary() == dict.fromkeys(("mean", "p50", "p90", "p95", "p99", "p999", "max"), 42.5)


@given(st.lists(st.floats(0.0, 1e6, allow_nan=False), min_size=2, max_size=200))
def test_exact_mode_matches_statistics_inclusive(values: list[float]) -> None:
    # statistics.quantiles(method="inclusive") is the same linear interpolation, written
    # independently: cut point i of 100 is the quantile i / 100.
    d = Distribution()
    d.extend(values)
    ref = statistics.quantiles(values, n=100, method="inclusive")
    got = d.quantiles([i / 100 for i in range(1, 100)])
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_bucketed_percentiles_within_a_tenth_of_a_percent() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(5.0, 1.2) for _ in range(1_000_000)]
    d = Distribution()  # default exact limit: folds into buckets past 100,000 samples
    d.extend(values)
    assert not d.exact
    xs = sorted(values)
    qs = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 0.9999, 1.0]
    for q, got in zip(qs, d.quantiles(qs), strict=True):
        h = q * (len(xs) - 1)
        lo = int(h)
        want = xs[lo] + (h - lo) * (xs[min(lo + 1, len(xs) - 1)] - xs[lo])
        assert abs(got - want) <= 1e-3 * want, (q, got, want)
    assert d.max == xs[-1]
    assert d.mean == pytest.approx(statistics.fmean(values), rel=1e-9)


def test_bucketed_mode_keeps_zeros_and_bounds() -> None:
    d = Distribution(exact_limit=3)
    d.extend([0.0, 0.0, 0.0, 5.0, 1000.0])
    assert not d.exact
    assert d.quantile(0.0) == 0.0
    assert d.quantile(0.5) == 0.0
    assert d.quantile(1.0) == 1000.0  # the extremes are exact, not bucket midpoints
    assert d.quantile(0.75) == pytest.approx(5.0, rel=1e-3)
    assert d.quantile(0.875) == pytest.approx(5.0 + 0.5 * 995.0, rel=1e-3)


def test_histogram_counts_every_sample_in_both_modes() -> None:
    for limit in (100, 2):
        d = Distribution(exact_limit=limit)
        d.extend([1.5, 2.4, 2.6, 9.9, 50.0])
        counts = d.histogram(10, 0.0, 10.0)
        assert sum(counts) == 5
        assert counts[1] == 1 and counts[2] == 2
        assert counts[9] == 2  # 9.9 and the overflow 50.0


# --- SummaryBuilder on the fixture -----------------------------------------------------------


def test_jobs_wall_and_rates() -> None:
    s = fixture_summary()
    assert s["jobs"] == {
        "total": 8,
        "ok": 6,
        "failed": 2,
        "skipped_resumed": 0,
        "by_error": {"http_5xx": 1, "timeout": 1},
    }
    assert s["wall_s"] == 2.5  # last ended_at (n2, +2.5 s) - first queued_at
    assert s["requests_per_s"] == 3.2  # 8 / 2.5
    assert s["retries"] == 3  # f2 attempts 2, f3 attempts 3
    assert s["limiter_wait_s"] == 0.035  # 5 + 10 + 20 ms
    assert s["throughput"] == {
        "requests_ok_per_s": 2.4,
        "output_tokens_per_s": 28.8,  # 72 / 2.5
        "total_tokens_per_s": 1908.8,  # (4700 + 72) / 2.5
    }


def test_tokens_cache_and_roles() -> None:
    s = fixture_summary()
    assert s["tokens"] == {"prompt": 4700, "cached": 2700, "cache_write": 1300, "completion": 72}
    assert s["cache_hit_ratio"] == round(2700 / 4700, 6)
    assert s["cache"] == {
        "cached_unreported": 1,  # n1 came from a server that did not report cached tokens
        "by_role": {
            "follower": {"requests": 4, "ok": 3, "prompt": 3000, "cached": 2700, "hit_ratio": 0.9},
            "none": {"requests": 2, "ok": 1, "prompt": 200, "cached": 0, "hit_ratio": 0.0},
            "primer": {"requests": 2, "ok": 2, "prompt": 1500, "cached": 0, "hit_ratio": 0.0},
        },
    }


def test_latency_percentiles_over_successful_requests_only() -> None:
    # ok latencies 400 500 600 800 1000 1100; f3's 300 ms failed attempt is left out
    assert fixture_summary()["latency_ms"] == {
        "mean": 733.333,
        "p50": 700.0,
        "p90": 1050.0,
        "p95": 1075.0,
        "p99": 1095.0,
        "p999": 1099.5,
        "max": 1100.0,
    }


def test_ttft_uses_the_recorded_first_content_chunk() -> None:
    # ok TTFTs 80 100 120 200 300. f2's stream opened with a role-only chunk at 40 ms; its record
    # holds 120 ms (the first content chunk), so 40 must appear nowhere.
    s = fixture_summary()
    assert s["ttft_ms"] == {
        "mean": 160.0,
        "p50": 120.0,
        "p90": 260.0,
        "p95": 280.0,
        "p99": 296.0,
        "p999": 299.6,
        "max": 300.0,
    }
    f2 = next(r for r in load_fixture() if r["custom_id"] == "f2-legal-role-chunk")
    # the gaps after the first content chunk add up to latency - TTFT
    assert sum(f2["itl_ms"]) == f2["latency_ms"] - f2["ttft_ms"]


def test_tpot_and_itl() -> None:
    s = fixture_summary()
    # TPOT: p1 800/4 = 200, f1 400/2 = 200, f2 480/3 = 160, p2 800/8 = 100; f4 has one token,
    # n1 no TTFT. Sorted 100 160 200 200.
    assert s["tpot_ms"] == {
        "mean": 165.0,
        "p50": 180.0,
        "p90": 200.0,
        "p95": 200.0,
        "p99": 200.0,
        "p999": 200.0,
        "max": 200.0,
    }
    # ITL: 8 x 100, 150, 3 x 160, 4 x 200, 250 (17 gaps); h(p90) = 14.4, h(p99) = 15.84
    assert s["itl_ms"] == {
        "mean": round(2480 / 17, 3),
        "p50": 150.0,
        "p90": 200.0,
        "p95": 210.0,
        "p99": 242.0,
        "p999": 249.2,
        "max": 250.0,
    }
    # total_ms of ok jobs: 400 500 800 900 1000 1100 (f2 includes its retry)
    assert s["total_ms"]["p50"] == 850.0
    assert s["total_ms"]["max"] == 1100.0


def test_cost_section() -> None:
    s = fixture_summary()
    # billed: (4700 - 2700 - 1300) * 2 + 2700 * 0.5 + 1300 * 2.5 + 72 * 8 = 6576 per 1M
    assert s["cost"] == {
        "currency": "USD",
        "billed": 0.006576,
        "uncached": 0.009976,  # 4700 * 2 + 72 * 8
        "saving": round(1 - 6576 / 9976, 6),
    }
    assert fixture_summary(None)["cost"] is None


def test_spec_keys_present() -> None:
    s = fixture_summary()
    spec = {
        "jobs",
        "wall_s",
        "requests_per_s",
        "retries",
        "limiter_wait_s",
        "tokens",
        "cache_hit_ratio",
        "latency_ms",
        "ttft_ms",
        "cost",
    }
    assert spec <= s.keys()
    assert set(s["latency_ms"]) == {"mean", "p50", "p90", "p95", "p99", "p999", "max"}


def test_dataclass_and_dict_records_agree() -> None:
    from_dicts = fixture_summary()
    b = SummaryBuilder(PRICE)
    for rec in load_fixture():
        b.add(LatencyRecord(**rec))
    assert b.summary() == from_dicts


def test_given_run_figures_win_over_derived_ones() -> None:
    b = SummaryBuilder(None)
    for rec in load_fixture():
        b.add(rec)
    s = b.summary(wall_s=4.0, retries=10, limiter_wait_s=1.5, skipped_resumed=12)
    assert (s["wall_s"], s["retries"], s["limiter_wait_s"]) == (4.0, 10, 1.5)
    assert s["requests_per_s"] == 2.0  # 8 finished in this run / 4 s
    assert s["jobs"]["total"] == 20 and s["jobs"]["skipped_resumed"] == 12


def test_non_streaming_run_has_null_ttft_and_empty_run_is_zero() -> None:
    b = SummaryBuilder(None)
    b.add(LatencyRecord(custom_id="a", latency_ms=10.0, ended_at=1.0, queued_at=0.5))
    s = b.summary()
    assert s["ttft_ms"] is None and s["tpot_ms"] is None and s["itl_ms"] is None
    assert s["latency_ms"]["p50"] == 10.0
    empty = SummaryBuilder(None).summary()
    assert empty["wall_s"] == 0.0 and empty["requests_per_s"] == 0.0
    assert empty["latency_ms"] is None and empty["cache_hit_ratio"] == 0.0


def test_goodput_against_slos() -> None:
    # TTFT <= 150 ms: f4 (80), f1 (100), f2 (120); n1 has no TTFT and cannot meet the bound.
    g = fixture_summary(slo_ms={"ttft": 150.0})["goodput"]
    assert g == {"slo_ms": {"ttft": 150.0}, "requests": 3, "requests_per_s": 1.2, "ratio": 0.375}
    # adding TPOT <= 170 ms drops f1 (200); f4's single token meets any TPOT bound
    g = fixture_summary(slo_ms={"ttft": 150.0, "tpot": 170.0})["goodput"]
    assert g["requests"] == 2
    assert "goodput" not in fixture_summary()
    with pytest.raises(ValueError, match="e2e"):
        SummaryBuilder(None, slo_ms={"e2e": 1.0})


# --- cost_of ---------------------------------------------------------------------------------


def test_cost_of_hand_computed() -> None:
    billed, uncached = cost_of(1_000_000, 600_000, 100_000, 200_000, PRICE)
    # 300k * 2 + 600k * 0.5 + 100k * 2.5 + 200k * 8 = 0.6 + 0.3 + 0.25 + 1.6
    assert billed == pytest.approx(2.75)
    assert uncached == pytest.approx(2.0 + 1.6)


def test_cost_of_defaults_cache_prices_to_input() -> None:
    billed, uncached = cost_of(1_000_000, 500_000, 200_000, 0, Price(input=3.0, output=15.0))
    assert billed == pytest.approx(uncached) == pytest.approx(3.0)


def test_saving_is_zero_without_tokens() -> None:
    assert SummaryBuilder(PRICE).summary()["cost"]["saving"] == 0.0


# --- Timeline --------------------------------------------------------------------------------


def test_timeline_in_flight_throughput_and_cache() -> None:
    t = Timeline(initial_width_s=0.5)
    base = 1_700_000_000.0
    t.add({"custom_id": "a", "queued_at": base, "started_at": base, "ended_at": base + 1.0,
           "prompt_tokens": 100, "cached_tokens": 0})  # fmt: skip
    t.add({"custom_id": "b", "queued_at": base, "started_at": base + 0.5, "ended_at": base + 1.25,
           "prompt_tokens": 100, "cached_tokens": 100, "outcome": "error"})  # fmt: skip
    s = t.series()
    assert s["t_s"] == [0.0, 0.5, 1.0]
    # [0, .5): a alone; [.5, 1): a and b; [1, 1.5): b for a quarter second of the half
    assert s["in_flight"] == pytest.approx([1.0, 2.0, 0.5])
    assert s["completed_per_s"] == [0.0, 0.0, 2.0]  # a ended at 1.0, in the third bin
    assert s["failed_per_s"] == [0.0, 0.0, 2.0]
    assert s["cache_hit_ratio"] == [None, None, 0.5]


def test_timeline_active_groups_span_first_start_to_last_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    t = Timeline(initial_width_s=0.5)
    base = 1_700_000_000.0
    for cid, group, start, end in (
        ("a1", "g1", 0.0, 0.5),
        ("a2", "g1", 0.75, 1.25),  # g1: [0, 1.25), with a gap that still counts as active
        ("b1", "g2", 0.5, 1.0),  # g2: [0.5, 1.0)
        ("n1", None, 0.0, 1.4),  # no group: in flight, not a group
    ):
        t.add({"custom_id": cid, "cache_id": group, "queued_at": base,
               "started_at": base + start, "ended_at": base + end})  # fmt: skip
    s = t.series()
    assert s["t_s"] == [0.0, 0.5, 1.0]
    assert s["active_groups"] == pytest.approx([1.0, 2.0, 0.5])
    monkeypatch.setattr(Timeline, "MAX_GROUPS", 2)  # past the bound: dropped, memory bounded
    t.add({"custom_id": "c1", "cache_id": "g3", "queued_at": base, "started_at": base,
           "ended_at": base + 0.1})  # fmt: skip
    assert t.series()["active_groups"] == [None, None, None]


def test_timeline_stays_bounded_and_keeps_counts() -> None:
    t = Timeline(max_bins=300)
    base = 1_700_000_000.0
    n = 5000
    for i in range(n):
        start = base + i * 0.02
        t.add(LatencyRecord(custom_id=str(i), queued_at=base, started_at=start,
                            ended_at=start + 0.5))  # fmt: skip
    s = t.series()
    assert len(s["t_s"]) <= 300
    assert sum(s["completed_per_s"]) * t.width == pytest.approx(n)
    # steady state: 0.5 s per request, one started every 0.02 s -> 25 in flight
    mid = s["in_flight"][len(s["in_flight"]) // 2]
    assert mid == pytest.approx(25.0, rel=0.02)


# --- render_summary --------------------------------------------------------------------------


def test_render_summary_shows_the_headline_figures() -> None:
    text = render_summary(fixture_summary())
    for needle in (
        "6 ok, 2 failed (http_5xx 1, timeout 1)",
        "3.2 req/s",
        "cached 2,700",
        "57.4% (follower 90.0%, primer 0.0%)",
        "retries    3, limiter wait 0.04 s",
        "billed $0.0066, uncached $0.0100, saving 34.1%",
        "1095.0",  # latency p99
        "296.0",  # ttft p99
    ):
        assert needle in text, needle
    assert max(len(line) for line in text.splitlines()) <= 100


def test_jobs_and_pre_warms_are_counted_on_one_path_per_model_and_in_total() -> None:
    # Jobs (add) and pre-warms (add_usage) count tokens through one path: the per-model sums
    # that price the run and the totals the summary shows always agree.
    cheap = Price(input=1.0, output=2.0)
    dear = Price(input=10.0, output=20.0, cached_input=1.0, cache_write=12.5)
    prices = {"a": cheap, "b": dear}
    b = SummaryBuilder(None, price_of=lambda m: prices.get(m or "a"))
    b.add(
        LatencyRecord(
            custom_id="1", prompt_tokens=100, cached_tokens=None, completion_tokens=5, model="a"
        )
    )
    b.add(
        {
            "custom_id": "2",
            "prompt_tokens": 200,
            "cached_tokens": 50,
            "completion_tokens": 7,
            "model": "b",
        }
    )
    b.add_usage(300, 0, 300, 0, model="b")
    s = b.summary()
    assert s["tokens"] == {"prompt": 600, "cached": 50, "cache_write": 300, "completion": 12}
    assert s["models"] == {"a": 1, "b": 1} and s["overhead_requests"] == 1
    assert s["cache"]["cached_unreported"] == 1
    want = cost_of(100, 0, 0, 5, cheap)[0] + cost_of(500, 50, 300, 7, dear)[0]
    assert s["cost"]["billed"] == pytest.approx(want, rel=1e-9)
