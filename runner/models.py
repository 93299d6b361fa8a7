"""Pure data shared by every layer: jobs, contexts, usage, attempts and per-job records.

Standard library only. Records are slotted dataclasses so that orjson serialises them natively
(and fast) on the hot path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._records import MutableRecord, Record

__all__ = [
    "Attempt",
    "BadLine",
    "CacheRole",
    "Context",
    "ErrorInfo",
    "Job",
    "LatencyRecord",
    "Message",
    "Price",
    "RateInfo",
    "Usage",
    "estimate_tokens",
]

Message = dict[str, Any]
CacheRole = Literal["primer", "follower", "none"]


def estimate_tokens(chars: int) -> int:
    """Token estimate from a character count (about 4 characters a token for English text).

    Deliberately a division, not a tokenizer: it runs once per job on the hot path.
    """
    return (chars + 3) >> 2


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Context(Record):
    """A static prefix stored once in the contexts file and shared by a cache group."""

    cache_id: str
    messages: tuple[Message, ...]  # system message first when given, then few-shot turns
    digest: str  # hash of the canonical content: an edited context is a new cache group
    chars: int  # characters of content, for the token estimate


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Job(Record):
    """One request to send. ``messages[:prefix_len]`` is the static, cacheable prefix."""

    custom_id: str
    line: int  # 1-based line number in the jobs file
    messages: tuple[Message, ...]
    prefix_len: int
    group: str | None  # cache group key; None when the job has no static prefix
    cache_id: str | None  # as the user gave it (or None for automatic groups)
    model: str | None  # per-job model, else the config's
    params: Mapping[str, Any]  # body fields other than model/messages (max_tokens, temperature...)
    prompt_chars: int
    prefix_chars: int
    metadata: Mapping[str, Any] | None = None  # copied into the result line as given

    @classmethod
    def from_dict(
        cls,
        obj: Mapping[str, Any],
        *,
        line: int = 1,
        contexts: Mapping[str, Context] | None = None,
    ) -> Job:
        """A job from a plain dict in either input shape, validated like a jobs-file line.

        ``Job.from_dict({"id": "q1", "query": "Summarise..."})``; see
        :func:`runner.jobs.parse_job` for the shapes.

        :raises InputError: the dict is not a valid job (names the field).
        """
        from .jobs import parse_job  # the parser lives with the reader; models stay pure data

        return parse_job(obj, line=line, contexts=contexts)

    @property
    def max_tokens(self) -> int | None:
        v = self.params.get("max_tokens", self.params.get("max_completion_tokens"))
        return v if isinstance(v, int) else None


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class BadLine(Record):
    """A line of the jobs file that cannot become a job; it still gets exactly one result."""

    line: int
    custom_id: str | None  # the line's own id; None when unreadable or a duplicate
    field: str | None  # the offending field, when there is one
    message: str  # "FILE:LINE: field: problem"


@dataclass(slots=True, eq=False, repr=False)
class Usage(MutableRecord):
    """Token usage normalised across providers. ``prompt_tokens`` includes cached and written."""

    prompt_tokens: int = 0
    cached_tokens: int | None = 0  # None when the server does not say (SGLang omits zero)
    cache_write_tokens: int = 0
    completion_tokens: int = 0


#: the largest count a float or a string may give: past 2**53 a float is not an exact integer
_MAX_COUNT = 1 << 53


def token_count(value: Any) -> int | None:
    """A token count from a ``usage`` field, or None when it holds none.

    An integer (not a bool), an integral float (``12.0``: a server that computes counts in
    floating point) or a string of decimal digits (``"12"``: a gateway that writes numbers as
    strings, as protobuf's JSON does for 64-bit integers). Counting either as no count billed
    nothing for those tokens. A negative count is no count: it would be a negative cost.
    """
    if type(value) is int:
        return value if value >= 0 else None
    if type(value) is float:
        return int(value) if 0 <= value < _MAX_COUNT and value.is_integer() else None
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 15:
        return int(value)
    return None


def usage_of(prompt: int, cached: int | None, write: int, completion: int) -> Usage:
    """A :class:`Usage` whose parts add up (``cached + write <= prompt``): a cached count above
    the prompt cannot be true and is unknown (None), as a negative one is; a write count is cut
    to what the prompt leaves. Otherwise a server's slip turns into a hit ratio above 100% and
    a negative cost. Counts are non-negative already (each provider's parser)."""
    if cached is not None and cached > prompt:
        cached = None
    rest = prompt - (cached or 0)
    return Usage(prompt, cached, write if write <= rest else rest, completion)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class ErrorInfo(Record):
    """Why an attempt failed, already classified by the provider that saw the wire."""

    # rate_limited, overloaded, timeout, connection, http_4xx, http_5xx, auth, insufficient_quota,
    # bad_response, stream_error, invalid_input, http_409, endpoint (wrong URL or model)
    code: str
    message: str
    retriable: bool
    retry_after_s: float | None = None  # a delay the server asked for
    fatal: bool = False  # trips a guard: auth failure, exhausted quota


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class RateInfo(Record):
    """Rate-limit state read from response headers (None where a header was absent)."""

    limit_requests: float | None = None
    remaining_requests: float | None = None
    reset_requests_s: float | None = None
    limit_tokens: float | None = None
    remaining_tokens: float | None = None
    reset_tokens_s: float | None = None


@dataclass(slots=True, eq=False, repr=False)
class Attempt(MutableRecord):
    """The outcome of one HTTP attempt."""

    status: int | None  # None when no HTTP response arrived
    body: Any = None  # parsed response JSON (assembled from the stream when streaming)
    # The body's JSON for the result line: as received (not streaming), or the encoding the
    # key check made of an assembled stream (so it is not encoded twice); None: encode body.
    raw: bytes | None = None
    usage: Usage | None = None
    request_id: str | None = None
    error: ErrorInfo | None = None
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    itl_ms: list[float] | None = None  # every inter-chunk gap, streaming only
    rate: RateInfo | None = None


@dataclass(slots=True, eq=False, repr=False)
class LatencyRecord(MutableRecord):
    """One line of the latency file (docs/FORMATS.md, "Latency records"); field order is the file's.

    ``custom_id`` is ``None`` only for a bad line without an id of its own (the sink then adds
    its ``line``).
    """

    custom_id: str | None
    cache_id: str | None = None
    cache_role: CacheRole = "none"
    outcome: str = "ok"  # ok | error
    status: int | None = None
    attempts: int = 0
    queued_at: float = 0.0  # unix seconds
    started_at: float | None = None
    ended_at: float = 0.0
    queue_ms: float = 0.0
    limiter_ms: float = 0.0
    ttft_ms: float | None = None
    latency_ms: float | None = None
    total_ms: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int | None = 0
    cache_write_tokens: int = 0
    completion_tokens: int = 0
    request_id: str | None = None
    error_code: str | None = None
    model: str | None = None  # the model the job was sent to (prices it on a rebuild)
    itl_ms: list[float] | None = field(default=None)

    @classmethod
    def of_attempt(
        cls,
        job: Job,
        a: Attempt,
        *,
        attempts: int,
        queued_at: float,
        started_at: float,
        ended_at: float,
        queue_ms: float,
        total_ms: float,
        cache_role: CacheRole = "none",
        limiter_ms: float = 0.0,
        model: str | None = None,
    ) -> LatencyRecord:
        """The record of a job's final attempt (the run's and ``bench``'s one builder).

        The caller owns the clock: timestamps are unix seconds, durations come from a monotonic
        clock. ``latency_ms`` is kept only when a response arrived (``status`` set).
        """
        err = a.error
        u = a.usage
        return cls(
            custom_id=job.custom_id,
            cache_id=job.cache_id,
            cache_role=cache_role,
            outcome="ok" if err is None else "error",
            status=a.status,
            attempts=attempts,
            queued_at=queued_at,
            started_at=started_at,
            ended_at=ended_at,
            queue_ms=queue_ms,
            limiter_ms=limiter_ms,
            ttft_ms=a.ttft_ms,
            latency_ms=a.latency_ms if a.status is not None else None,
            total_ms=total_ms,
            prompt_tokens=0 if u is None else u.prompt_tokens,
            cached_tokens=0 if u is None else u.cached_tokens,
            cache_write_tokens=0 if u is None else u.cache_write_tokens,
            completion_tokens=0 if u is None else u.completion_tokens,
            request_id=a.request_id,
            error_code=None if err is None else err.code,
            model=model,
            itl_ms=a.itl_ms,
        )


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Price(Record):
    """USD per million tokens."""

    input: float
    output: float
    cached_input: float | None = None  # defaults to input (no discount)
    cache_write: float | None = None  # defaults to input
    cache_storage: float | None = None  # explicit caches: USD per 1M tokens per hour stored
    # Multiplier for jobs sent through a provider batch API (None: the provider's default, 0.5).
    batch_discount: float | None = None
    # Anthropic's 1-hour cache writes (anthropic_cache_ttl = "1h", and warm batches); None:
    # 2x input, Anthropic's published rate (``cache_write`` is the 5-minute rate, 1.25x).
    cache_write_1h: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "input",
            "output",
            "cached_input",
            "cache_write",
            "cache_storage",
            "cache_write_1h",
        ):
            v = getattr(self, name)
            if v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf
            ):
                raise ValueError(f"price {name} must be a finite non-negative number, got {v!r}")
        d = self.batch_discount
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, int | float) or not 0 < d <= 1
        ):
            raise ValueError(f"price batch_discount must be in (0, 1], got {d!r}")
