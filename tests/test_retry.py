"""Tests for runner.retry: which failures are retried, and backoff bounds with a seeded RNG."""

from __future__ import annotations

import dataclasses
import random

import pytest

from runner.models import ErrorInfo
from runner.retry import FIELD_REFUSED, SERVER_DELAY_JITTER, RetryPolicy


def err(
    code: str = "http_5xx",
    *,
    retriable: bool = True,
    fatal: bool = False,
    retry_after_s: float | None = None,
) -> ErrorInfo:
    return ErrorInfo(code, "boom", retriable, retry_after_s=retry_after_s, fatal=fatal)


# As the providers classify them (docs/PROVIDERS.md): throttles, 408/409, 5xx, timeouts and
# connection errors are retriable; other 4xx, exhausted quota and auth failures are not.
CLASSIFIED = [
    (err("rate_limited"), True),
    (err("overloaded"), True),
    (err("timeout"), True),
    (err("connection"), True),
    (err("http_5xx"), True),
    (err("http_4xx"), True),  # 408/409 arrive as retriable http_4xx
    (err("stream_error"), True),
    (err("http_4xx", retriable=False), False),
    (err("invalid_input", retriable=False), False),
    (err("bad_response", retriable=False), False),
    (err("auth", retriable=False, fatal=True), False),
    (err("insufficient_quota", retriable=False, fatal=True), False),
    # fatal wins even over a retriable flag: a guard is about to stop the run
    (err("auth", retriable=True, fatal=True), False),
]


@pytest.mark.parametrize(("error", "expected"), CLASSIFIED)
def test_should_retry_follows_classification(error: ErrorInfo, expected: bool) -> None:
    assert RetryPolicy(max_attempts=3).should_retry(error, 1) is expected


def test_should_retry_stops_at_max_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(err(), n) for n in (1, 2, 3, 4)] == [True, True, False, False]
    assert RetryPolicy(max_attempts=1).should_retry(err(), 1) is False


@pytest.mark.parametrize("attempt", range(1, 12))
def test_backoff_full_jitter_within_ceiling(attempt: int) -> None:
    policy = RetryPolicy(max_attempts=20, base_s=0.5, cap_s=8.0)
    ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
    rng = random.Random(attempt)
    delays = [policy.delay(err(), attempt, rng) for _ in range(400)]
    assert all(0 <= d <= ceiling for d in delays)
    # Full jitter spans the whole range, not just its top or bottom.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_backoff_grows_then_caps() -> None:
    policy = RetryPolicy(max_attempts=20, base_s=1.0, cap_s=4.0)
    means = []
    for attempt in (1, 2, 3, 4, 5):
        rng = random.Random(7)
        means.append(sum(policy.delay(err(), attempt, rng) for _ in range(2000)) / 2000)
    assert means[0] == pytest.approx(0.5, rel=0.1)
    assert means[1] == pytest.approx(1.0, rel=0.1)
    assert means[2] == pytest.approx(2.0, rel=0.1)
    assert means[3] == pytest.approx(means[4])  # both capped at 4 s


def test_huge_attempt_number_stays_finite() -> None:
    policy = RetryPolicy(max_attempts=10**6, cap_s=30.0)
    assert 0 <= policy.delay(err(), 10**5, random.Random(1)) <= 30.0


def test_seeded_rng_reproduces_delays() -> None:
    policy = RetryPolicy(max_attempts=5)
    a = [policy.delay(err(), n, random.Random(3)) for n in (1, 2, 3)]
    b = [policy.delay(err(), n, random.Random(3)) for n in (1, 2, 3)]
    assert a == b


@pytest.mark.parametrize("server", [0.25, 5.0, 120.0])
def test_server_delay_honoured_with_small_upward_jitter(server: float) -> None:
    # A backoff below the server's delay (ceiling 0.08 s at attempt 4): the server's delay wins.
    policy = RetryPolicy(max_attempts=5, base_s=0.01, cap_s=1.0)
    rng = random.Random(11)
    delays = [policy.delay(err("rate_limited", retry_after_s=server), 4, rng) for _ in range(300)]
    assert all(server <= d <= server * (1 + SERVER_DELAY_JITTER) for d in delays)
    assert max(delays) > server * (1 + SERVER_DELAY_JITTER / 2)  # jittered, not constant


@pytest.mark.parametrize("server", [0.0, 0.001, 0.25])
def test_server_delay_is_a_floor_under_the_backoff(server: float) -> None:
    """ "retry-after: 0" (or a date in the past, or a millisecond) on every 429 was retried at
    once, a hot loop; now the policy's backoff still applies, growing with each attempt."""
    policy = RetryPolicy(max_attempts=20, base_s=0.5, cap_s=8.0)
    means = []
    for attempt in (1, 2, 3, 4):
        ceiling = min(8.0, 0.5 * 2 ** (attempt - 1))
        rng = random.Random(attempt)
        limited = err("rate_limited", retry_after_s=server)
        delays = [policy.delay(limited, attempt, rng) for _ in range(1000)]
        assert all(server <= d <= max(ceiling, server * (1 + SERVER_DELAY_JITTER)) for d in delays)
        assert max(delays) > 0.9 * ceiling  # the backoff's whole range, not the server's 0
        means.append(sum(delays) / len(delays))
    assert means[0] > 0.2 and means[0] < means[1] < means[2] < means[3]


def test_the_policy_knows_no_refused_field() -> None:
    # A refused field is no try of the job, re-sent at once outside max_attempts: the sender
    # alone says so (tests/providers/test_field_refused.py) and never asks the policy, which
    # would count and back off such an error as any other.
    refused = err(FIELD_REFUSED, retry_after_s=None)
    policy = RetryPolicy(max_attempts=2)
    assert [policy.should_retry(refused, n) for n in (1, 2, 5)] == [True, False, False]
    assert policy.delay(refused, 3, random.Random(0)) > 0.0


@pytest.mark.parametrize("server", [120.001, 3600.0, -1.0])
def test_unreasonable_server_delay_falls_back_to_backoff(server: float) -> None:
    policy = RetryPolicy(max_attempts=5, base_s=0.5, cap_s=30.0)
    rng = random.Random(5)
    delays = [policy.delay(err(retry_after_s=server), 2, rng) for _ in range(100)]
    assert all(0 <= d <= 1.0 for d in delays)


def test_max_server_delay_is_configurable() -> None:
    policy = RetryPolicy(max_attempts=5, max_server_delay_s=10.0)
    assert policy.delay(err(retry_after_s=20.0), 1, random.Random(0)) <= 0.5


def test_default_rng_used_when_none_given() -> None:
    policy = RetryPolicy(max_attempts=5)
    assert 0 <= policy.delay(err(), 1) <= 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": 3, "base_s": 0.0},
        {"max_attempts": 3, "base_s": -1.0},
        {"max_attempts": 3, "base_s": 2.0, "cap_s": 1.0},
        {"max_attempts": 3, "max_server_delay_s": -1.0},
        {"max_attempts": 3, "base_s": float("nan")},
    ],
)
def test_invalid_policy_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_policy_is_frozen_keyword_only_and_slotted() -> None:
    policy = RetryPolicy(max_attempts=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.max_attempts = 4  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(3)  # type: ignore[call-arg]
    assert not hasattr(policy, "__dict__")


def test_policy_validation_boundaries_and_messages() -> None:
    """The limits are inclusive where documented, and each refusal names its field."""
    RetryPolicy(max_attempts=1, base_s=1.0, cap_s=1.0, max_server_delay_s=0.0)
    RetryPolicy(max_attempts=1, max_server_delay_s=0.5)
    bad: list[tuple[dict[str, float], str]] = [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"max_attempts": 1, "base_s": 0.0}, "base_s must be > 0, got 0.0"),
        ({"max_attempts": 1, "base_s": 2.0, "cap_s": 1.0}, "cap_s must be >= base_s"),
        ({"max_attempts": 1, "max_server_delay_s": -1.0}, "max_server_delay_s must be >= 0"),
    ]
    for kwargs, message in bad:
        with pytest.raises(ValueError, match=message):
            RetryPolicy(**kwargs)  # type: ignore[arg-type]
