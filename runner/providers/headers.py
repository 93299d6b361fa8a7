"""Rate-limit and retry headers, shared by every provider.

``parse_rate_headers`` runs on every response, so it bails out after a handful of dictionary
lookups when a server sends no rate-limit headers at all (vLLM, SGLang, DeepSeek).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from datetime import datetime
from email.utils import parsedate_to_datetime

from ..models import RateInfo

__all__ = ["parse_go_duration", "parse_rate_headers", "parse_retry_after"]

_GO_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")
_GO_FULL = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|us|µs|ns|h|m|s))+")

Headers = Mapping[str, str]


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``1s``, ``6m0s``, ``12ms``, ``2s81ms`` or ``1h2m3.5s``.

    A bare number is taken as seconds (some OpenAI-compatible servers send ``"1.5"``).

    :raises ValueError: when ``text`` is neither.
    """
    text = text.strip()
    if _GO_FULL.fullmatch(text):
        return sum(float(n) * _GO_UNIT_S[unit] for n, unit in _GO_PART.findall(text))
    seconds = float(text)  # raises ValueError for anything else
    if not math.isfinite(seconds):
        raise ValueError(f"not a duration: {text!r}")
    return seconds


def _seconds(value: str | None) -> float | None:
    """A non-negative finite float, or None for a missing or malformed value."""
    if value is None:
        return None
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) and v >= 0 else None


def _limit(value: str | None) -> float | None:
    """A limit header (requests or tokens per window): None below 1. No server means a
    fraction of a request; ``1e-300`` taken as a limit held every request for ever."""
    v = _seconds(value)
    return v if v is not None and v >= 1.0 else None


def parse_retry_after(headers: Headers) -> float | None:
    """The delay a server asked for: ``retry-after-ms`` first, then ``retry-after``.

    ``retry-after`` may be seconds (integer or float) or an HTTP date; a date in the past
    gives 0.
    """
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = headers.get("retry-after")
    if value is None:
        return None
    s = _seconds(value)
    if s is not None:
        return s
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        return None
    return max(0.0, when.timestamp() - time.time())


def _go_seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_go_duration(value)
    except ValueError:
        return None


def _rfc3339_seconds(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


def _openai_rate(headers: Headers) -> RateInfo | None:
    get = headers.get
    lr = get("x-ratelimit-limit-requests")
    rr = get("x-ratelimit-remaining-requests")
    lt = get("x-ratelimit-limit-tokens")
    rt = get("x-ratelimit-remaining-tokens")
    if lr is None and rr is None and lt is None and rt is None:
        return None
    return RateInfo(
        limit_requests=_limit(lr),
        remaining_requests=_seconds(rr),
        reset_requests_s=_go_seconds(get("x-ratelimit-reset-requests")),
        limit_tokens=_limit(lt),
        remaining_tokens=_seconds(rt),
        reset_tokens_s=_go_seconds(get("x-ratelimit-reset-tokens")),
    )


def _anthropic_rate(headers: Headers) -> RateInfo | None:
    get = headers.get
    lr = get("anthropic-ratelimit-requests-limit")
    rr = get("anthropic-ratelimit-requests-remaining")
    # The combined ``tokens`` limit is the one that binds; input-tokens is the fallback for
    # organisations that only have the split input/output limits.
    tokens = "anthropic-ratelimit-tokens-"
    lt = get(tokens + "limit")
    rt = get(tokens + "remaining")
    if lt is None and rt is None:
        tokens = "anthropic-ratelimit-input-tokens-"
        lt = get(tokens + "limit")
        rt = get(tokens + "remaining")
    if lr is None and rr is None and lt is None and rt is None:
        return None
    now = time.time()
    return RateInfo(
        limit_requests=_limit(lr),
        remaining_requests=_seconds(rr),
        reset_requests_s=_rfc3339_seconds(get("anthropic-ratelimit-requests-reset"), now),
        limit_tokens=_limit(lt),
        remaining_tokens=_seconds(rt),
        reset_tokens_s=_rfc3339_seconds(get(tokens + "reset"), now),
    )


def parse_rate_headers(headers: Headers) -> RateInfo | None:
    """Rate-limit state from ``x-ratelimit-*`` or ``anthropic-ratelimit-*`` headers.

    Resets become seconds from now (Go durations for the former, RFC 3339 instants for the
    latter). None when the response carries neither family.
    """
    return _openai_rate(headers) or _anthropic_rate(headers)
