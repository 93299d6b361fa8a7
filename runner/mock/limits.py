"""Rate-limit buckets and the header formats the providers use for them.

Each limit (requests or tokens per minute) is a continuously refilling bucket holding at most
one minute's allowance: ``remaining`` is what is left now and ``reset`` the time until the bucket
is full again, which is what the providers' ``*-reset-*`` headers mean.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

__all__ = ["Bucket", "go_duration", "rfc3339_after"]


def go_duration(seconds: float) -> str:
    """Format like OpenAI's ``x-ratelimit-reset-*``: ``12ms``, ``1s``, ``6m0s``, ``2s81ms``."""
    ms = max(0, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    s, rem = divmod(ms, 1000)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if h:
        text = f"{h}h{m}m{s}s"
    elif m:
        text = f"{m}m{s}s"
    else:
        text = f"{s}s"
    return f"{text}{rem}ms" if rem else text


def rfc3339_after(seconds: float, wall_now: float) -> str:
    """The RFC 3339 UTC instant ``seconds`` after ``wall_now`` (Anthropic's reset headers)."""
    instant = datetime.fromtimestamp(math.ceil(wall_now + seconds), UTC)
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


class Bucket:
    """A per-minute allowance refilled continuously; ``take`` never goes below zero."""

    __slots__ = ("_last", "_level", "_rate", "limit")

    def __init__(self, per_minute: float, now: float) -> None:
        self.limit = per_minute
        self._rate = per_minute / 60.0
        self._level = per_minute
        self._last = now

    def _refill(self, now: float) -> float:
        level = min(self.limit, self._level + (now - self._last) * self._rate)
        self._level = level
        self._last = now
        return level

    def wait_for(self, cost: float, now: float) -> float:
        """Seconds until ``cost`` fits (0 when it fits now); a cost above the limit never fits."""
        level = self._refill(now)
        if cost <= level:
            return 0.0
        if cost > self.limit:
            return math.inf
        return (cost - level) / self._rate

    def take(self, cost: float) -> None:
        self._level = max(0.0, self._level - cost)

    def put_back(self, cost: float) -> None:
        """Return an unused reservation (a reply shorter than ``max_tokens``)."""
        self._level = min(self.limit, self._level + cost)

    def remaining(self) -> int:
        return int(self._level)

    def reset_s(self) -> float:
        return (self.limit - self._level) / self._rate

    def used(self) -> int:
        return int(self.limit - self._level)
