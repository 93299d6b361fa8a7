"""Percentiles, throughput and cost from latency records (pure: no IO).

The run pipeline calls :meth:`SummaryBuilder.add` once per job and ``runner report`` once per line
of a latency file, so ``add`` is kept O(1) and allocation-light.

Percentile definition (used everywhere): linear interpolation between the two nearest order
statistics, numpy's default: for ``n`` sorted values ``x`` and ``q`` in [0, 1], ``h = q * (n - 1)``
and ``p(q) = x[floor(h)] + (h - floor(h)) * (x[ceil(h)] - x[floor(h)])``.

:class:`Distribution` keeps exact values up to ``exact_limit`` samples, so small runs get exact
percentiles; beyond that it folds them into a log-bucketed histogram whose buckets are 0.2% wide,
giving percentiles within 0.1% relative error in bounded memory (about 11,500 buckets span
1 microsecond to 3 hours in ms). Count, mean and max stay exact in both modes.

Metric definitions (README, "Metrics"): TTFT = request written -> first chunk with generated content
(the record already excludes role-only chunks); latency = request written -> last byte of the final
attempt; TPOT = (latency - TTFT) / (completion_tokens - 1) over records with a TTFT and more than
one completion token; ITL = every inter-chunk gap of the record's ``itl_ms``. Latency, TTFT, TPOT,
ITL and total-time percentiles are over successful requests only: a timeout's "latency" is the
timeout, not the server's speed. Token counts come from ``usage`` and include failed requests that
reported usage, because those are billed.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ._records import MutableRecord
from .models import LatencyRecord, Price

__all__ = [
    "DEFAULT_EXACT_LIMIT",
    "IDLE_JOIN_S",
    "PERCENTILES",
    "BusyTime",
    "Distribution",
    "SummaryBuilder",
    "Timeline",
    "cost_of",
    "cost_summary",
    "summed_cost",
]

DEFAULT_EXACT_LIMIT = 100_000
# Summary keys and the quantiles they stand for.
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 0.50),
    ("p90", 0.90),
    ("p95", 0.95),
    ("p99", 0.99),
    ("p999", 0.999),
)
# Buckets per unit of ln(value): each bucket spans a factor exp(1/K) ~ 1.002, so the geometric
# midpoint is within exp(0.5/K) - 1 ~ 0.1% of every value in the bucket.
_K = 500.0
_ZERO_KEY = -(1 << 40)  # zero and negative values (same-read chunks give an ITL of 0.0)
_log = math.log
_floor = math.floor


class Distribution:
    """Streaming percentile estimator: exact up to ``exact_limit`` samples, then log-bucketed."""

    __slots__ = ("_buckets", "_exact", "_limit", "count", "max", "min", "total")

    def __init__(self, exact_limit: int = DEFAULT_EXACT_LIMIT) -> None:
        self._limit = exact_limit
        self._exact: list[float] | None = []
        self._buckets: dict[int, int] = {}
        self.count = 0
        self.total = 0.0
        self.min = math.inf
        self.max = -math.inf

    @property
    def exact(self) -> bool:
        """Whether every sample is still held (percentiles are exact)."""
        return self._exact is not None

    def add(self, v: float) -> None:
        self.count += 1
        self.total += v
        if v > self.max:
            self.max = v
        if v < self.min:
            self.min = v
        exact = self._exact
        if exact is not None:
            exact.append(v)
            if len(exact) > self._limit:
                self._fold()
        else:
            key = _floor(_log(v) * _K) if v > 0.0 else _ZERO_KEY
            b = self._buckets
            b[key] = b.get(key, 0) + 1

    def extend(self, values: Iterable[float]) -> None:
        for v in values:
            self.add(v)

    def absorb(self, other: Distribution) -> None:
        """Add ``other``'s samples, as if each had been :meth:`add` ed here (the ``total`` is
        this one's plus ``other``'s: a sum per part, then over the parts)."""
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        mine, theirs = self._exact, other._exact
        if mine is not None and theirs is not None:
            mine.extend(theirs)
            if len(mine) > self._limit:
                self._fold()
            return
        if mine is not None:
            self._fold()
        b = self._buckets
        if theirs is not None:
            for v in theirs:
                key = _floor(_log(v) * _K) if v > 0.0 else _ZERO_KEY
                b[key] = b.get(key, 0) + 1
        else:
            for key, c in other._buckets.items():
                b[key] = b.get(key, 0) + c

    def state(self) -> tuple[dict[str, Any], list[float]]:
        """(scalars and buckets as JSON, the exact samples): what :meth:`from_state` takes."""
        head: dict[str, Any] = {"count": self.count, "total": self.total}
        if self.count:
            head["min"], head["max"] = self.min, self.max
        if self._exact is None:
            head["buckets"] = [[k, c] for k, c in self._buckets.items()]
        else:
            head["exact"] = len(self._exact)
        return head, self._exact or []

    @classmethod
    def from_state(
        cls, head: Mapping[str, Any], samples: Sequence[float], exact_limit: int
    ) -> Distribution:
        d = cls(exact_limit)
        d.count, d.total = int(head["count"]), float(head["total"])
        if d.count:
            d.min, d.max = float(head["min"]), float(head["max"])
        if "buckets" in head:
            d._exact = None
            d._buckets = {int(k): int(c) for k, c in head["buckets"]}
        else:
            d._exact = list(samples)
            if len(d._exact) != d.count:
                raise ValueError("sample count mismatch")
        return d

    def _fold(self) -> None:
        exact, self._exact = self._exact, None
        assert exact is not None
        b = self._buckets
        for v in exact:
            key = _floor(_log(v) * _K) if v > 0.0 else _ZERO_KEY
            b[key] = b.get(key, 0) + 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def quantiles(self, qs: Sequence[float]) -> list[float]:
        """Values at each quantile ``q`` in [0, 1] (see the module docstring for the definition)."""
        n = self.count
        if n == 0:
            return [math.nan] * len(qs)
        if self._exact is not None:
            xs = self._exact
            xs.sort()  # in place: later calls see a sorted list and sort in O(n)
            return [_interp(q * (n - 1), xs.__getitem__) for q in qs]
        ranks = sorted({r for q in qs for r in _ranks(q * (n - 1))})
        at = dict(zip(ranks, self._values_at_ranks(ranks), strict=True))
        return [_interp(q * (n - 1), at.__getitem__) for q in qs]

    def quantile(self, q: float) -> float:
        return self.quantiles((q,))[0]

    def _values_at_ranks(self, ranks: Sequence[int]) -> list[float]:
        # One walk over the sorted buckets serves every requested 0-based rank.
        out: list[float] = []
        last = self.count - 1
        it = iter(ranks)
        want = next(it, None)
        seen = 0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            while want is not None and want < seen:
                if want == 0 or want == last:  # the extremes are known exactly
                    out.append(self.min if want == 0 else self.max)
                else:
                    rep = 0.0 if key == _ZERO_KEY else math.exp((key + 0.5) / _K)
                    out.append(min(max(rep, self.min), self.max))
                want = next(it, None)
            if want is None:
                break
        return out

    def count_le(self, bounds: Sequence[float]) -> list[int]:
        """Samples <= each of the ascending ``bounds`` (Prometheus buckets; exact while exact)."""
        if self._exact is not None:
            xs = self._exact
            xs.sort()  # nearly sorted after the first call: O(n)
            return [bisect_right(xs, b) for b in bounds]
        out = [0] * len(bounds)
        for key, c in self._buckets.items():
            rep = 0.0 if key == _ZERO_KEY else math.exp((key + 0.5) / _K)
            i = bisect_left(bounds, rep)
            if i < len(out):
                out[i] += c
        for i in range(1, len(out)):
            out[i] += out[i - 1]
        return out

    def histogram(self, bins: int, lo: float, hi: float) -> list[int]:
        """Counts in ``bins`` equal-width bins over [lo, hi]; values outside go to the end bins."""
        counts = [0] * bins
        width = (hi - lo) / bins if hi > lo else 1.0

        def put(v: float, c: int) -> None:
            i = min(max(int((v - lo) / width), 0), bins - 1)
            counts[i] += c

        if self._exact is not None:
            for v in self._exact:
                put(v, 1)
        else:
            for key, c in self._buckets.items():
                put(0.0 if key == _ZERO_KEY else math.exp((key + 0.5) / _K), c)
        return counts

    def summary(self) -> dict[str, float] | None:
        """``{mean, p50, p90, p95, p99, p999, max}`` in the unit of the samples; None when empty."""
        if not self.count:
            return None
        out = {"mean": round(self.mean, 3)}
        qs = self.quantiles([q for _, q in PERCENTILES])
        out.update((name, round(v, 3)) for (name, _), v in zip(PERCENTILES, qs, strict=True))
        out["max"] = round(self.max, 3)
        return out


def _ranks(h: float) -> tuple[int, ...]:
    lo = int(h)
    return (lo, lo + 1) if h > lo else (lo,)


def _interp(h: float, at: Any) -> float:
    lo = int(h)
    frac = h - lo
    v = float(at(lo))
    if frac:
        v += frac * (float(at(lo + 1)) - v)
    return v


def cost_summary(billed: float, uncached: float) -> dict[str, Any]:
    """The summary's ``cost`` section for ``billed`` and ``uncached`` USD."""
    return {
        "currency": "USD",
        "billed": round(billed, 8),
        "uncached": round(uncached, 8),
        "saving": round(1.0 - billed / uncached, 6) if uncached else 0.0,
    }


def summed_cost(costs: Iterable[Any]) -> dict[str, Any] | None:
    """The ``cost`` section of several runs' summaries added up (cost is additive); None when
    any of them has none."""
    billed = uncached = 0.0
    for cost in costs:
        if not isinstance(cost, dict) or "billed" not in cost or "uncached" not in cost:
            return None
        billed += float(cost["billed"])
        uncached += float(cost["uncached"])
    return cost_summary(billed, uncached)


def cost_of(
    prompt: int, cached: int, cache_write: int, completion: int, price: Price
) -> tuple[float, float]:
    """``(billed, uncached)`` in USD for token counts at ``price`` (USD per million tokens).

    ``prompt`` includes the cached and cache-written tokens; ``uncached`` is what the same tokens
    would cost had nothing been read from or written to the cache.
    """
    cached_rate = price.input if price.cached_input is None else price.cached_input
    write_rate = price.input if price.cache_write is None else price.cache_write
    billed = (
        (prompt - cached - cache_write) * price.input
        + cached * cached_rate
        + cache_write * write_rate
        + completion * price.output
    ) / 1e6
    uncached = (prompt * price.input + completion * price.output) / 1e6
    return billed, uncached


# The small private records below are plain slotted classes, not dataclasses: Python 3.11
# compiles a dataclass's generated methods from source at every start-up, and these are never
# compared or shown.


class _Role:
    """Per cache-role counters (primer, follower, none)."""

    __slots__ = ("cached", "ok", "prompt", "requests")

    def __init__(self, requests: int = 0, ok: int = 0, prompt: int = 0, cached: int = 0) -> None:
        self.requests = requests
        self.ok = ok
        self.prompt = prompt
        self.cached = cached


class _Slo:
    """Service-level objectives in ms for goodput; None means no bound on that metric."""

    __slots__ = ("latency", "tpot", "ttft")

    def __init__(
        self, ttft: float | None = None, tpot: float | None = None, latency: float | None = None
    ) -> None:
        self.ttft = ttft
        self.tpot = tpot
        self.latency = latency


class SummaryBuilder:
    """Accumulates latency records into the summary JSON of docs/FORMATS.md ("Summary") plus extras.

    :param price: prices for the cost section; None gives ``"cost": null``.
    :param price_of: the price of a model (``None``: the run's model); when given, each record
        is priced by its own ``model`` (the one pricing path of a run, its resume and
        ``validate``), and the cost is null when any record with tokens has no price.
    :param slo_ms: optional ``{"ttft": ms, "tpot": ms, "latency": ms}`` bounds; when given, the
        summary has a ``goodput`` section: successful requests meeting every bound.
    :param exact_limit: samples per distribution kept exactly before switching to buckets.
    :param busy: also keep the records' busy intervals (:class:`BusyTime`, in :attr:`busy`): a
        shard's builder does, for the ``S.state`` the merge reads (runner/partstate.py).
    """

    __slots__ = (
        "_by_error",
        "_first_queued",
        "_good",
        "_last_ended",
        "_limiter_ms",
        "_models",
        "_price_of",
        "_retries",
        "_roles",
        "_slo",
        "busy",
        "cache_write",
        "cached",
        "cached_unreported",
        "completion",
        "failed",
        "itl",
        "latency",
        "ok",
        "overhead_requests",
        "price",
        "prompt",
        "total",
        "tpot",
        "ttft",
    )

    def __init__(
        self,
        price: Price | None,
        *,
        slo_ms: Mapping[str, float] | None = None,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
        price_of: Callable[[str | None], Price | None] | None = None,
        busy: bool = False,
    ) -> None:
        self.price = price
        self._price_of = price_of
        self.busy = BusyTime() if busy else None
        # model -> [jobs, prompt, cached, cache_write, completion]: cost is linear in tokens, so
        # pricing the per-model sums once at the end is exact and keeps add() cheap.
        self._models: dict[str | None, list[int]] = {}
        self._slo: _Slo | None = None
        if slo_ms:
            unknown = set(slo_ms) - {"ttft", "tpot", "latency"}
            if unknown:
                raise ValueError(f"unknown SLO metric(s): {', '.join(sorted(unknown))}")
            self._slo = _Slo(**slo_ms)
        self.latency = Distribution(exact_limit)
        self.ttft = Distribution(exact_limit)
        self.total = Distribution(exact_limit)
        self.tpot = Distribution(exact_limit)
        self.itl = Distribution(exact_limit)
        self.ok = 0
        self.failed = 0
        self._by_error: dict[str, int] = {}
        self._roles: dict[str, _Role] = {}
        self.prompt = 0
        self.cached = 0
        self.cached_unreported = 0
        self.cache_write = 0
        self.completion = 0
        self.overhead_requests = 0
        self._good = 0
        self._retries = 0
        self._limiter_ms = 0.0
        self._first_queued = math.inf
        self._last_ended = -math.inf

    @property
    def by_error(self) -> dict[str, int]:
        """Failed jobs per error code so far (a copy)."""
        return dict(self._by_error)

    def add_usage(
        self,
        prompt: int,
        cached: int,
        cache_write: int,
        completion: int,
        *,
        model: str | None = None,
    ) -> None:
        """Tokens billed by a request that is not a job (a cache pre-warm): cost, not latency."""
        self.overhead_requests += 1
        self._tokens(model, prompt, cached, cache_write, completion, jobs=0)

    def add(self, rec: LatencyRecord | Mapping[str, Any]) -> None:
        """Count one job's record: a :class:`LatencyRecord` or a dict read from a latency file."""
        if isinstance(rec, LatencyRecord):
            self._add(
                rec.outcome == "ok",
                rec.error_code,
                rec.cache_role,
                rec.attempts,
                rec.queued_at,
                rec.ended_at,
                rec.limiter_ms,
                rec.ttft_ms,
                rec.latency_ms,
                rec.total_ms,
                rec.prompt_tokens,
                rec.cached_tokens,
                rec.cache_write_tokens,
                rec.completion_tokens,
                rec.itl_ms,
                rec.model,
            )
        else:
            g = rec.get
            self._add(
                g("outcome", "ok") == "ok",
                g("error_code"),
                g("cache_role") or "none",
                g("attempts") or 0,
                g("queued_at") or 0.0,
                g("ended_at") or 0.0,
                g("limiter_ms") or 0.0,
                g("ttft_ms"),
                g("latency_ms"),
                g("total_ms") or 0.0,
                g("prompt_tokens") or 0,
                g("cached_tokens", 0),
                g("cache_write_tokens") or 0,
                g("completion_tokens") or 0,
                g("itl_ms"),
                g("model"),
            )

    def _add(
        self,
        ok: bool,
        error_code: str | None,
        role: str,
        attempts: int,
        queued_at: float,
        ended_at: float,
        limiter_ms: float,
        ttft: float | None,
        latency: float | None,
        total: float,
        prompt: int,
        cached: int | None,
        cache_write: int,
        completion: int,
        itl: list[float] | None,
        model: str | None = None,
    ) -> None:
        if attempts > 1:
            self._retries += attempts - 1
        self._limiter_ms += limiter_ms
        if queued_at < self._first_queued:
            self._first_queued = queued_at
        if ended_at > self._last_ended:
            self._last_ended = ended_at
        busy = self.busy
        if busy is not None:
            busy.add(queued_at, ended_at)
        if cached is None:
            self.cached_unreported += 1
            cached = 0
        self._tokens(model, prompt, cached, cache_write, completion, jobs=1)
        r = self._roles.get(role)
        if r is None:
            r = self._roles[role] = _Role()
        r.requests += 1
        r.prompt += prompt
        r.cached += cached
        if not ok:
            self.failed += 1
            code = error_code or "unknown"
            self._by_error[code] = self._by_error.get(code, 0) + 1
            return
        self.ok += 1
        r.ok += 1
        self.total.add(total)
        if latency is not None:
            self.latency.add(latency)
        tpot = None
        if ttft is not None:
            self.ttft.add(ttft)
            if latency is not None and completion > 1:
                tpot = (latency - ttft) / (completion - 1)
                self.tpot.add(tpot)
        if itl:
            self.itl.extend(itl)
        slo = self._slo
        if slo is not None:
            if tpot is None and ttft is not None and completion <= 1:
                tpot = 0.0  # a single-token stream has no decode phase: a TPOT bound holds
            if _meets(slo, ttft, tpot, latency):
                self._good += 1

    def summary(
        self,
        *,
        wall_s: float | None = None,
        retries: int | None = None,
        limiter_wait_s: float | None = None,
        skipped_resumed: int = 0,
    ) -> dict[str, Any]:
        """The summary JSON. Arguments left None are derived from the records: ``wall_s`` =
        last ``ended_at`` - first ``queued_at``, ``retries`` = sum of ``attempts - 1``,
        ``limiter_wait_s`` = sum of ``limiter_ms`` / 1000.

        ``jobs.total`` counts every job of the input: finished in this run plus skipped because
        an earlier run finished them. ``requests_per_s`` is jobs finished in this run (ok or
        failed) per wall second; ``throughput.requests_ok_per_s`` counts successes only.
        """
        done = self.ok + self.failed
        if wall_s is None:
            wall_s = max(self._last_ended - self._first_queued, 0.0) if done else 0.0
        if retries is None:
            retries = self._retries
        if limiter_wait_s is None:
            limiter_wait_s = self._limiter_ms / 1000.0

        rate = rates(wall_s, self.ok, self.failed, self.prompt, self.completion)
        out: dict[str, Any] = {
            "jobs": {
                "total": done + skipped_resumed,
                "ok": self.ok,
                "failed": self.failed,
                "skipped_resumed": skipped_resumed,
                "by_error": dict(sorted(self._by_error.items())),
            },
            "wall_s": rate["wall_s"],
            "requests_per_s": rate["requests_per_s"],
            "retries": retries,
            "limiter_wait_s": round(limiter_wait_s, 3),
            "tokens": {
                "prompt": self.prompt,
                "cached": self.cached,
                "cache_write": self.cache_write,
                "completion": self.completion,
            },
            "cache_hit_ratio": _ratio(self.cached, self.prompt),
            "latency_ms": self.latency.summary(),
            "ttft_ms": self.ttft.summary(),
            "cost": self._cost(),
            "total_ms": self.total.summary(),
            "tpot_ms": self.tpot.summary(),
            "itl_ms": self.itl.summary(),
            "throughput": rate["throughput"],
            "cache": {
                "cached_unreported": self.cached_unreported,
                "by_role": {
                    role: {
                        "requests": r.requests,
                        "ok": r.ok,
                        "prompt": r.prompt,
                        "cached": r.cached,
                        "hit_ratio": _ratio(r.cached, r.prompt),
                    }
                    for role, r in sorted(self._roles.items())
                },
            },
        }
        if self._slo is not None:
            slo = {k: v for k, v in _slo_dict(self._slo).items() if v is not None}
            out["goodput"] = {
                "slo_ms": slo,
                "requests": self._good,
                "requests_per_s": round(self._good / wall_s, 3) if wall_s > 0 else 0.0,
                "ratio": _ratio(self._good, done),
            }
        if self.overhead_requests:
            out["overhead_requests"] = self.overhead_requests  # pre-warms: billed, not jobs
        models = {m: v[0] for m, v in self._models.items() if m is not None and v[0]}
        if models:
            out["models"] = dict(sorted(models.items()))  # jobs sent to each model
        return out

    _DISTS = ("latency", "ttft", "total", "tpot", "itl")

    def absorb(self, other: SummaryBuilder) -> None:
        """Add ``other``'s records (and overhead tokens) to this builder, as if each had been
        :meth:`add` ed here; float sums are summed per builder, then added."""
        self.ok += other.ok
        self.failed += other.failed
        for code, n in other._by_error.items():
            self._by_error[code] = self._by_error.get(code, 0) + n
        for role, r in other._roles.items():
            mine = self._roles.get(role)
            if mine is None:
                mine = self._roles[role] = _Role()
            mine.requests += r.requests
            mine.ok += r.ok
            mine.prompt += r.prompt
            mine.cached += r.cached
        for model, counts in other._models.items():
            m = self._models.get(model)
            if m is None:
                m = self._models[model] = [0, 0, 0, 0, 0]
            for i, c in enumerate(counts):
                m[i] += c
        self.prompt += other.prompt
        self.cached += other.cached
        self.cached_unreported += other.cached_unreported
        self.cache_write += other.cache_write
        self.completion += other.completion
        self.overhead_requests += other.overhead_requests
        self._good += other._good
        self._retries += other._retries
        self._limiter_ms += other._limiter_ms
        self._first_queued = min(self._first_queued, other._first_queued)
        self._last_ended = max(self._last_ended, other._last_ended)
        for name in self._DISTS:
            getattr(self, name).absorb(getattr(other, name))

    def state(self) -> tuple[dict[str, Any], list[float]]:
        """The builder's whole state: JSON-able scalars, and every exact sample in one list
        (the header's ``dists`` say how many belong to each distribution). Without an SLO."""
        if self._slo is not None:
            raise ValueError("a builder with an SLO has no state dump")
        done = self.ok + self.failed
        head: dict[str, Any] = {
            "ok": self.ok,
            "failed": self.failed,
            "by_error": self._by_error,
            "roles": {k: [r.requests, r.ok, r.prompt, r.cached] for k, r in self._roles.items()},
            "models": [[m, v] for m, v in self._models.items()],
            "tokens": [self.prompt, self.cached, self.cached_unreported, self.cache_write,
                       self.completion],
            "overhead_requests": self.overhead_requests,
            "retries": self._retries,
            "limiter_ms": self._limiter_ms,
            "span": [self._first_queued, self._last_ended] if done else None,
        }  # fmt: skip
        dists: dict[str, Any] = {}
        samples: list[float] = []
        for name in self._DISTS:
            dh, ds = getattr(self, name).state()
            dists[name] = dh
            samples += ds
        head["dists"] = dists
        return head, samples

    @classmethod
    def from_state(
        cls,
        head: Mapping[str, Any],
        samples: Sequence[float],
        *,
        exact_limit: int = DEFAULT_EXACT_LIMIT,
    ) -> SummaryBuilder:
        """A builder from :meth:`state` (unpriced: :meth:`absorb` it into a priced one).

        :raises ValueError: (or KeyError/TypeError) the state is not one :meth:`state` wrote.
        """
        b = cls(None, exact_limit=exact_limit)
        b.ok, b.failed = int(head["ok"]), int(head["failed"])
        b._by_error = {str(k): int(v) for k, v in head["by_error"].items()}
        for role, (req, ok, prompt, cached) in head["roles"].items():
            b._roles[str(role)] = _Role(int(req), int(ok), int(prompt), int(cached))
        for model, counts in head["models"]:
            if len(counts) != 5:
                raise ValueError("bad model counts")
            b._models[model] = [int(c) for c in counts]
        (b.prompt, b.cached, b.cached_unreported, b.cache_write, b.completion) = (
            int(v) for v in head["tokens"]
        )
        b.overhead_requests = int(head["overhead_requests"])
        b._retries = int(head["retries"])
        b._limiter_ms = float(head["limiter_ms"])
        if head["span"] is not None:
            b._first_queued, b._last_ended = (float(v) for v in head["span"])
        at = 0
        for name in cls._DISTS:
            dh = head["dists"][name]
            n = 0 if "buckets" in dh else int(dh["exact"])
            setattr(b, name, Distribution.from_state(dh, samples[at : at + n], exact_limit))
            at += n
        if at != len(samples):
            raise ValueError("sample count mismatch")
        return b

    def _tokens(
        self,
        model: str | None,
        prompt: int,
        cached: int,
        cache_write: int,
        completion: int,
        *,
        jobs: int,
    ) -> None:
        """The one place billed tokens are counted: per model (for pricing) and in total."""
        m = self._models.get(model)
        if m is None:
            m = self._models[model] = [0, 0, 0, 0, 0]
        m[0] += jobs
        m[1] += prompt
        m[2] += cached
        m[3] += cache_write
        m[4] += completion
        self.prompt += prompt
        self.cached += cached
        self.cache_write += cache_write
        self.completion += completion

    def _priced(self, price_of: Callable[[str | None], Price | None]) -> tuple[float, float] | None:
        """(billed, uncached) with each model's tokens at its price; None if any lacks one."""
        billed = uncached = 0.0
        for model, (_, prompt, cached, write, completion) in self._models.items():
            if not (prompt or completion):
                continue
            price = price_of(model)
            if price is None:
                return None
            b, u = cost_of(prompt, cached, write, completion, price)
            billed += b
            uncached += u
        return billed, uncached

    def billed_uncached(
        self, price_of: Callable[[str | None], Price | None] | None = None
    ) -> tuple[float, float] | None:
        """(billed, uncached) so far, by the same rule as the summary's cost; None unpriced.

        :param price_of: price each model by this instead of the builder's own (a batch run's
            cost at the list price next to its cost at the batch price).
        """
        price_of = price_of or self._price_of
        if price_of is not None:
            priced = self._priced(price_of)
            if priced is None or (price_of(None) is None and not priced[0]):
                return None
            return priced
        if self.price is None:
            return None
        return cost_of(self.prompt, self.cached, self.cache_write, self.completion, self.price)

    def _cost(self) -> dict[str, Any] | None:
        priced = self.billed_uncached()
        if priced is None:
            return None
        return cost_summary(*priced)


def _slo_dict(slo: _Slo) -> dict[str, float | None]:
    return {"ttft": slo.ttft, "tpot": slo.tpot, "latency": slo.latency}


def _meets(slo: _Slo, ttft: float | None, tpot: float | None, latency: float | None) -> bool:
    # A bound on a metric the request lacks (TTFT of a non-streaming request) is not met:
    # goodput must not look better for measuring less.
    for bound, v in ((slo.ttft, ttft), (slo.tpot, tpot), (slo.latency, latency)):
        if bound is not None and (v is None or v > bound):
            return False
    return True


# A pause in which no job was in flight shorter than this is still run time (one invocation's
# admission of its next job just after another ended); a longer one is idle (BusyTime).
IDLE_JOIN_S = 1.0


class BusyTime:
    """The run time of a latency file written by one or more invocations (a run, Ctrl-C, a
    resume hours later): the union of every record's ``[queued_at, ended_at]``, a pause shorter
    than ``join_s`` counted as busy. The span from the first ``queued_at`` to the last
    ``ended_at`` would count the idle hours between invocations as run time.

    Streaming: records come roughly in the order they ended, so each one usually overlaps the
    current interval and only extends it; one that does not starts a new interval, and the
    intervals (one per pause, or per out-of-order record) are merged by :meth:`result`.
    ``runner report`` feeds it (cold path); the engine never does.
    """

    __slots__ = ("_hi", "_join", "_lo", "_spans")

    def __init__(self, join_s: float = IDLE_JOIN_S) -> None:
        self._join = join_s
        self._spans: list[tuple[float, float]] = []
        self._lo = math.inf
        self._hi = -math.inf

    def add(self, queued: float, ended: float) -> None:
        if ended < queued:
            ended = queued
        j = self._join
        if queued <= self._hi + j and ended >= self._lo - j:
            if queued < self._lo:
                self._lo = queued
            if ended > self._hi:
                self._hi = ended
            return
        if self._hi >= self._lo:
            self._spans.append((self._lo, self._hi))
        self._lo, self._hi = queued, ended

    def result(self) -> tuple[float, float, int]:
        """(busy seconds, span seconds from the first start to the last end, idle pauses)."""
        spans = self.spans()
        if not spans:
            return 0.0, 0.0, 0
        busy = 0.0
        for lo, hi in spans:
            busy += hi - lo
        return busy, spans[-1][1] - spans[0][0], len(spans) - 1

    def spans(self) -> list[tuple[float, float]]:
        """The busy intervals, sorted, each pause over ``join_s`` between two. Feeding one
        part's spans to another's :meth:`add` (``runner merge``: a shard's ``S.state`` keeps
        them) gives the result of feeding it every record: a pause a part bridged is bridged
        in the whole too, and the endpoints are the records' own."""
        spans = sorted([*self._spans, (self._lo, self._hi)] if self._hi >= self._lo else [])
        if not spans:
            return []
        out: list[tuple[float, float]] = []
        lo, hi = spans[0]
        for a, b in spans[1:]:
            if a <= hi + self._join:
                hi = max(hi, b)
                continue
            out.append((lo, hi))
            lo, hi = a, b
        out.append((lo, hi))
        return out

    def section(self) -> dict[str, Any]:
        """A summary's ``wall`` section: the rule, the span, the idle time left out, pauses."""
        busy, span, pauses = self.result()
        return {
            "rule": f"busy: jobs in flight, pauses over {self._join:g} s not counted",
            "span_s": round(span, 3),
            "idle_s": round(max(span - busy, 0.0), 3),
            "pauses": pauses,
        }


def rates(wall_s: float, ok: int, failed: int, prompt: int, completion: int) -> dict[str, Any]:
    """A summary's ``wall_s``, ``requests_per_s`` (ok or failed) and ``throughput`` section,
    for jobs finished in ``wall_s`` seconds (0 when no time passed)."""

    def per_s(n: float) -> float:
        return round(n / wall_s, 3) if wall_s > 0 else 0.0

    return {
        "wall_s": round(wall_s, 3),
        "requests_per_s": per_s(ok + failed),
        "throughput": {
            "requests_ok_per_s": per_s(ok),
            "output_tokens_per_s": per_s(completion),
            "total_tokens_per_s": per_s(prompt + completion),
        },
    }


def _ratio(num: float, den: float) -> float:
    return round(num / den, 6) if den else 0.0


class _Bin:
    """One time bin's counts (see :class:`Timeline`); a plain slotted class like :class:`_Role`."""

    __slots__ = ("cached", "end_sum", "ended", "failed", "ok", "prompt", "start_sum", "started")

    def __init__(self) -> None:
        self.started = 0
        self.start_sum = 0.0  # sum of start times relative to the timeline's anchor
        self.ended = 0
        self.end_sum = 0.0
        self.ok = 0
        self.failed = 0
        self.prompt = 0
        self.cached = 0

    def merge(self, o: _Bin) -> None:
        self.started += o.started
        self.start_sum += o.start_sum
        self.ended += o.ended
        self.end_sum += o.end_sum
        self.ok += o.ok
        self.failed += o.failed
        self.prompt += o.prompt
        self.cached += o.cached


@dataclass(slots=True, eq=False, repr=False)
class Timeline(MutableRecord):
    """Per-time-bin counts in bounded memory, for throughput, in-flight and cache charts.

    Records arrive in completion order and the time span is unknown until the end, so bins start
    ``initial_width_s`` wide and double (merging neighbours) whenever more than ``max_bins`` would
    be needed. Times are kept relative to the first record seen so that sums stay precise.
    """

    max_bins: int = 300
    initial_width_s: float = 0.01
    width: float = field(init=False)
    _anchor: float | None = field(default=None, init=False)
    _bins: dict[int, _Bin] = field(default_factory=dict, init=False)
    _lo: int = field(default=0, init=False)
    _hi: int = field(default=0, init=False)
    _start: float = field(default=math.inf, init=False)
    # cache group -> [first start, last end], relative to the anchor (None past MAX_GROUPS)
    _groups: dict[str, list[float]] | None = field(default_factory=dict, init=False)

    MAX_GROUPS = 100_000  # beyond this many cache groups the active-groups series is dropped

    def __post_init__(self) -> None:
        self.width = self.initial_width_s

    def add(self, rec: LatencyRecord | Mapping[str, Any]) -> None:
        if isinstance(rec, LatencyRecord):
            started, ended, queued = rec.started_at, rec.ended_at, rec.queued_at
            ok, prompt, cached = rec.outcome == "ok", rec.prompt_tokens, rec.cached_tokens or 0
            group = rec.cache_id
        else:
            g = rec.get
            group = g("cache_id")
            started, ended, queued = g("started_at"), g("ended_at") or 0.0, g("queued_at") or 0.0
            ok, prompt, cached = (
                g("outcome", "ok") == "ok",
                g("prompt_tokens") or 0,
                g("cached_tokens") or 0,
            )
        if self._anchor is None:
            self._anchor = queued
        a = self._anchor
        self._start = min(self._start, queued - a)
        e = ended - a
        b = self._bin(e)
        b.ended += 1
        b.end_sum += e
        if ok:
            b.ok += 1
        else:
            b.failed += 1
        b.prompt += prompt
        b.cached += cached
        if started is not None:
            s = started - a
            b = self._bin(s)
            b.started += 1
            b.start_sum += s
            groups = self._groups
            if group is not None and groups is not None:
                span = groups.get(group)
                if span is None:
                    if len(groups) >= self.MAX_GROUPS:
                        self._groups = None
                    else:
                        groups[group] = [s, e]
                else:
                    span[0] = min(span[0], s)
                    span[1] = max(span[1], e)

    def _bin(self, t: float) -> _Bin:
        i = _floor(t / self.width)
        if not self._bins:
            self._lo = self._hi = i
        elif i < self._lo or i > self._hi:
            lo, hi = min(i, self._lo), max(i, self._hi)
            while hi - lo + 1 > self.max_bins:
                self._coarsen()
                i = _floor(t / self.width)
                lo, hi = min(i, self._lo), max(i, self._hi)
            self._lo, self._hi = lo, hi
        b = self._bins.get(i)
        if b is None:
            b = self._bins[i] = _Bin()
        return b

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[int, _Bin] = {}
        for i, b in self._bins.items():
            j = i >> 1  # floor division by 2, also for negative indices
            m = merged.get(j)
            if m is None:
                merged[j] = b
            else:
                m.merge(b)
        self._bins = merged
        self._lo >>= 1
        self._hi >>= 1

    def series(self) -> dict[str, list[float]]:
        """Equal-width series from the run's first ``queued_at``: ``t_s`` (bin start, seconds
        since the run began), ``completed_per_s``, ``failed_per_s``, ``in_flight`` (time-average
        of requests between ``started_at`` and ``ended_at``) and ``cache_hit_ratio`` (cached /
        prompt tokens of the requests that ended in the bin; None where no prompt tokens) and
        ``active_groups`` (time-average of cache groups between their first request's start and
        their last request's end; None past ``MAX_GROUPS`` groups)."""
        keys = ("t_s", "completed_per_s", "failed_per_s", "in_flight", "cache_hit_ratio")
        out: dict[str, list[Any]] = {k: [] for k in (*keys, "active_groups")}
        if not self._bins:
            return out
        w = self.width
        # Group spans as start/end events per bin, integrated like the in-flight count.
        spans: dict[int, list[float]] = {}  # bin -> [starts, start_sum, ends, end_sum]
        for s, e in (self._groups or {}).values():
            for t, k in ((s, 0), (e, 2)):
                ev = spans.setdefault(_floor(t / w), [0.0, 0.0, 0.0, 0.0])
                ev[k] += 1
                ev[k + 1] += t
        level = 0  # requests in flight at the start of the current bin
        glevel = 0.0  # groups active at the start of the current bin
        for i in range(self._lo, self._hi + 1):
            b = self._bins.get(i) or _Bin()
            t0, t1 = i * w, (i + 1) * w
            # The integral of the in-flight count over the bin, divided by its width.
            area = level * w + (b.started * t1 - b.start_sum) - (b.ended * t1 - b.end_sum)
            level += b.started - b.ended
            out["t_s"].append(round(t0 - self._start, 6))
            out["completed_per_s"].append(b.ok / w)
            out["failed_per_s"].append(b.failed / w)
            out["in_flight"].append(max(area / w, 0.0))
            out["cache_hit_ratio"].append(b.cached / b.prompt if b.prompt else None)
            if self._groups is None:
                out["active_groups"].append(None)
                continue
            gs, gss, ge, ges = spans.get(i) or (0.0, 0.0, 0.0, 0.0)
            garea = glevel * w + (gs * t1 - gss) - (ge * t1 - ges)
            glevel += gs - ge
            out["active_groups"].append(max(garea / w, 0.0))
        return out
