"""Rate-limit and retry header parsing, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from multidict import CIMultiDict

from runner.models import RateInfo
from runner.providers.headers import parse_go_duration, parse_rate_headers, parse_retry_after


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("2s81ms", 2.081),
        ("1h2m3.5s", 3723.5),
        ("0s", 0.0),
        ("7.66s", 7.66),
        ("500us", 0.0005),
        ("1.5", 1.5),  # bare seconds from some compatible servers
        (" 3s ", 3.0),
    ],
)
def test_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "1x", "abc", "1s2", "-", "inf", "nan"])
def test_go_duration_rejects_garbage(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def _http_date(delta_s: float) -> str:
    return format_datetime(datetime.now(UTC) + timedelta(seconds=delta_s), usegmt=True)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"retry-after-ms": "644"}, 0.644),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "1.5"}, 1.5),
        # retry-after-ms is the more precise of the two and wins
        ({"retry-after-ms": "250", "retry-after": "1"}, 0.25),
        ({"retry-after-ms": "junk", "retry-after": "2"}, 2.0),
        ({"retry-after": "-4"}, None),
        ({"retry-after": "soon"}, None),
        ({"Retry-After": "7"}, 7.0),  # header names are case-insensitive
    ],
)
def test_retry_after(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(CIMultiDict(headers)) == expected


def test_retry_after_http_date() -> None:
    got = parse_retry_after(CIMultiDict({"retry-after": _http_date(30)}))
    assert got is not None and 25 < got <= 30


def test_retry_after_past_date_is_zero() -> None:
    assert parse_retry_after(CIMultiDict({"retry-after": _http_date(-3600)})) == 0.0


def test_rate_headers_absent() -> None:
    headers = CIMultiDict({"content-type": "application/json", "x-request-id": "req_1"})
    assert parse_rate_headers(headers) is None


def test_openai_rate_headers() -> None:
    headers = CIMultiDict(
        {
            "x-ratelimit-limit-requests": "60",
            "x-ratelimit-limit-tokens": "150000",
            "x-ratelimit-remaining-requests": "59",
            "x-ratelimit-remaining-tokens": "149984",
            "x-ratelimit-reset-requests": "1s",
            "x-ratelimit-reset-tokens": "6m0s",
        }
    )
    assert parse_rate_headers(headers) == RateInfo(
        limit_requests=60,
        remaining_requests=59,
        reset_requests_s=1.0,
        limit_tokens=150000,
        remaining_tokens=149984,
        reset_tokens_s=360.0,
    )


def test_openai_rate_headers_partial_and_malformed() -> None:
    headers = CIMultiDict(
        {"x-ratelimit-remaining-tokens": "10", "x-ratelimit-reset-tokens": "whenever"}
    )
    assert parse_rate_headers(headers) == RateInfo(remaining_tokens=10)


def _rfc3339(delta_s: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat().replace("+00:00", "Z")


def test_anthropic_rate_headers_prefer_combined_tokens() -> None:
    headers = CIMultiDict(
        {
            "anthropic-ratelimit-requests-limit": "50",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": _rfc3339(20),
            "anthropic-ratelimit-tokens-limit": "90000",
            "anthropic-ratelimit-tokens-remaining": "80000",
            "anthropic-ratelimit-tokens-reset": _rfc3339(40),
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "1",
            "anthropic-ratelimit-input-tokens-reset": _rfc3339(2),
        }
    )
    rate = parse_rate_headers(headers)
    assert rate is not None
    assert (rate.limit_requests, rate.remaining_requests) == (50, 0)
    assert (rate.limit_tokens, rate.remaining_tokens) == (90000, 80000)
    assert rate.reset_requests_s is not None and 15 < rate.reset_requests_s <= 20
    assert rate.reset_tokens_s is not None and 35 < rate.reset_tokens_s <= 40


def test_anthropic_rate_headers_fall_back_to_input_tokens() -> None:
    headers = CIMultiDict(
        {
            "anthropic-ratelimit-input-tokens-limit": "40000",
            "anthropic-ratelimit-input-tokens-remaining": "39000",
            "anthropic-ratelimit-input-tokens-reset": "2020-01-01T00:00:00Z",
        }
    )
    assert parse_rate_headers(headers) == RateInfo(
        limit_tokens=40000, remaining_tokens=39000, reset_tokens_s=0.0
    )


@pytest.mark.parametrize("value", ["1e-300", "0.5", "0"])
def test_a_limit_below_one_is_no_limit(value: str) -> None:
    # 1e-300 requests a minute, taken as the limit, held every request for ever; no server
    # means a fraction of a request (or of a token), and 0 would stop the run for good.
    openai = parse_rate_headers(
        CIMultiDict({"x-ratelimit-limit-requests": value, "x-ratelimit-limit-tokens": value})
    )
    assert openai is not None
    assert openai.limit_requests is None and openai.limit_tokens is None
    anthropic = parse_rate_headers(
        CIMultiDict(
            {"anthropic-ratelimit-requests-limit": value, "anthropic-ratelimit-tokens-limit": value}
        )
    )
    assert anthropic is not None
    assert anthropic.limit_requests is None and anthropic.limit_tokens is None
    one = parse_rate_headers(CIMultiDict({"x-ratelimit-limit-requests": "1"}))
    assert one is not None and one.limit_requests == 1.0
