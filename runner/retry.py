"""Retry classification and backoff.

The provider has already classified each failure into an :class:`~runner.models.ErrorInfo`;
this module only decides *whether* to try again and *how long* to wait first. Waiting uses
exponential backoff with full jitter, so that many workers failing together spread out instead
of retrying in lock step, and honours a delay the server asked for when it is a sane one: as a
floor under that backoff, never as a replacement for it (``retry-after: 0`` on every 429 must
not turn the retries into a hot loop).

One error is no failure of the job and never reaches the policy: :data:`FIELD_REFUSED`, a field
runner adds on its own that the server refused. The backend drops the field for the run; the
sender (runner/sender.py) sends the request again at once and counts it as no try.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._records import Record
from .models import ErrorInfo

__all__ = ["FIELD_REFUSED", "SERVER_DELAY_JITTER", "RetryPolicy"]

#: Fraction of a server-given delay added at random on top of it: clients told the same
#: ``retry-after`` would otherwise all come back in the same instant and be throttled again.
SERVER_DELAY_JITTER = 0.1

#: The code of a 400/422 that refused a field runner added on its own (``prompt_cache_key``,
#: ``stream_options``): the backend never sends that field again, so the sender re-sends the
#: request at once, without backoff, and outside ``max_attempts`` (:class:`RetryPolicy` is not
#: asked). It is bounded all the same: a request is marked so only when it carried the field,
#: which the backend then leaves out of every later request (runner/providers/openai.py), so a
#: job is re-sent at most once per such field.
FIELD_REFUSED = "field_refused"

# 2**62 already dwarfs any cap; bounding the exponent keeps the float product finite.
_MAX_EXPONENT = 62

_default_rng = random.Random()


@dataclass(
    frozen=True, slots=True, kw_only=True, eq=False, repr=False
)  # eq, hash, repr: Record (start-up cost)
class RetryPolicy(Record):
    """When to retry a failed attempt and how long to back off before it.

    :param max_attempts: attempts per job in total, the first one included.
    :param base_s: backoff ceiling after the first failure; it doubles with each attempt.
    :param cap_s: the most the backoff ceiling grows to.
    :param max_server_delay_s: server-given delays above this are ignored (a misconfigured
        proxy can say "retry in a day"); the exponential backoff applies instead.
    """

    max_attempts: int
    base_s: float = 0.5
    cap_s: float = 30.0
    max_server_delay_s: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not self.base_s > 0:
            raise ValueError(f"base_s must be > 0, got {self.base_s}")
        if not self.cap_s >= self.base_s:
            raise ValueError(f"cap_s must be >= base_s, got {self.cap_s} < {self.base_s}")
        if not self.max_server_delay_s >= 0:
            raise ValueError(f"max_server_delay_s must be >= 0, got {self.max_server_delay_s}")

    def should_retry(self, error: ErrorInfo, attempt: int) -> bool:
        """Whether to make another attempt after ``error``.

        :param attempt: the number of attempts made so far (1 after the first failure).
        """
        return error.retriable and not error.fatal and attempt < self.max_attempts

    def delay(self, error: ErrorInfo, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt.

        :param attempt: the number of attempts made so far (1 after the first failure).
        :param rng: the source of jitter; pass a seeded one for reproducible delays.

        A server-given delay (``retry-after``, a reset, "try again in 644ms") is a floor, not
        the answer: the delay is the larger of that delay (plus up to
        :data:`SERVER_DELAY_JITTER` of it) and this attempt's exponential backoff. So a large
        delay is honoured as asked, while ``retry-after: 0``, a date in the past or a few
        milliseconds still back off, more with every attempt, as if no delay had been given.
        A delay above ``max_server_delay_s`` (or negative) is ignored: the backoff alone.
        """
        rng = rng or _default_rng
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        backoff = rng.uniform(0, min(self.cap_s, self.base_s * 2.0**exponent))
        server = error.retry_after_s
        if server is not None and 0 <= server <= self.max_server_delay_s:
            # Never earlier than asked: coming back early just earns another 429.
            return max(server + rng.uniform(0, SERVER_DELAY_JITTER * server), backoff)
        return backoff
