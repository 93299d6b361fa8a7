"""Prometheus metrics of a run, computed from the run's own counters: nothing per request.

The engine already counts everything the metrics show (its :class:`~runner.stats.SummaryBuilder`,
:class:`~runner.pipeline.LiveStats` and the rate controller). :class:`RunMetrics` turns a
:class:`Figures` snapshot of those counters into metric families and serves the latest snapshot:
the observer refreshes it from the event loop about once a second while ``/metrics`` is served,
and once more from the final summary, so the textfile and the push agree exactly with the summary
and the hot path pays nothing. The HTTP server thread only ever reads a finished list.

Names follow Prometheus practice (base units, ``_total`` counters, ``_seconds``); labels are
low-cardinality: ``job_name`` and the user's ``--metrics-label`` pairs on every metric, plus
``outcome``/``error_code`` (a fixed set of classified codes), ``type``, ``kind`` and ``state``.
Never a job id or a cache id.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, pushadd_to_gateway, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.parser import text_string_to_metric_families

from .sinks import replacing
from .stats import Distribution

__all__ = ["BUCKETS_S", "Figures", "RunMetrics", "hist_of"]

#: Histogram bucket bounds in seconds for request latency and time to first token.
BUCKETS_S: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0,
)  # fmt: skip
_BUCKETS_MS = [b * 1000.0 for b in BUCKETS_S]
LAST_SUCCESS = "runner_last_success_timestamp_seconds"
EXIT_CODE = "runner_exit_code"
LAST_RUN = "runner_last_run_timestamp_seconds"
#: What a re-run that kept the summary of the run that did the work moves (runner/noop.py),
#: and all that a run refused with an error before its end writes (runner/refusal.py).
END_GAUGES = frozenset({EXIT_CODE, LAST_SUCCESS, LAST_RUN})


@dataclass(frozen=True, slots=True)
class Hist:
    """A histogram snapshot: cumulative counts per bound of :data:`BUCKETS_S`, count, sum (s)."""

    cumulative: Sequence[int]
    count: int
    sum_s: float


def hist_of(dist: Distribution) -> Hist:
    """The Prometheus view of one of the summary's distributions (kept in milliseconds)."""
    return Hist(dist.count_le(_BUCKETS_MS), dist.count, dist.total / 1000.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class Figures:
    """Everything one scrape shows. Counters are totals of this run so far."""

    ok: int = 0
    by_error: Mapping[str, int] = field(default_factory=dict)
    tokens: Mapping[str, int] = field(default_factory=dict)  # input, cached, cache_write, output
    cost: tuple[float, float] | None = None  # billed, uncached (USD)
    jobs: Mapping[str, int] = field(default_factory=dict)  # done, failed, pending, skipped
    limiter_wait_s: float = 0.0
    retries: int = 0
    rate_limit_pauses: int = 0
    in_flight: int = 0
    duration_s: float = 0.0
    latency: Hist | None = None
    ttft: Hist | None = None
    exit_code: int | None = None  # only at the end
    last_success: float | None = None  # only at the end of a successful run
    last_run: float | None = None  # only at the end, whatever its exit code


class RunMetrics:
    """The metric families of one run, exposed through its own registry.

    :param job_name: identifies the run (the ``job_name`` label; the Pushgateway's ``job``).
    :param labels: user-given constant labels (``--metrics-label k=v``), already validated.
    """

    def __init__(self, *, job_name: str, labels: Mapping[str, str] | None = None) -> None:
        self.job_name = job_name
        self.labels = dict(labels or {})
        self._names = ["job_name", *self.labels]
        self._values = [job_name, *self.labels.values()]
        self._families: list[Metric] = []
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a Collector by duck typing
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # -- the collector protocol --------------------------------------------------------------

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)  # a finished list, swapped whole: safe from another thread

    def update(self, f: Figures) -> None:
        self._families = self._build(f)

    # -- exporters ---------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` from a daemon thread; returns the bound port (``0`` picks one)."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        self._server, self._thread = server, thread
        return int(server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()

    def write_textfile(self, path: Path, f: Figures, *, only_end: bool = False) -> None:
        """Write ``f`` atomically and durably (:func:`runner.sinks.replacing`).

        A failed run keeps the last success time of the file it replaces, so the textfile
        collector's ``runner_last_success_timestamp_seconds`` only moves on success.

        :param only_end: a re-run that sent nothing and kept the summary file (runner/noop.py):
            keep every figure of the file it replaces, moving only :data:`END_GAUGES`.
        """
        if f.last_success is None:
            previous = previous_last_success(path, self._values[0], self.labels)
            if previous is not None:
                f = _replace_last_success(f, previous)
        kept = self._previous_figures(path) if only_end else None
        self.update(f)
        if kept is not None:
            self._keep(kept)
        self._replace(path)

    def write_end_gauges(self, path: Path, exit_code: int, ended: float) -> None:
        """Write only :data:`END_GAUGES` (the exit code, this end's time, the last success
        time kept) over the other figures of the file for this run identity, if any: a run
        refused with an error before its end (runner/refusal.py) has no other figures."""
        last = previous_last_success(path, self._values[0], self.labels)
        self.update(Figures(exit_code=exit_code, last_success=last, last_run=ended))
        self._keep(self._previous_figures(path) or [])
        self._replace(path)

    def _keep(self, kept: list[Metric]) -> None:
        """``kept``'s families but the end gauges, and this update's end gauges alone."""
        self._families = [m for m in kept if m.name not in END_GAUGES] + [
            m for m in self._families if m.name in END_GAUGES
        ]

    def _replace(self, path: Path) -> None:
        data = self.exposition().encode()
        # Durable like the summary (runner.sinks.replacing), not only atomic: the next run
        # reads this file back (the last success time a failed run keeps), so a power loss
        # must not leave it empty. The temporary name is hidden and not *.prom: the textfile
        # collector never reads it.
        with replacing(path, tmp=path.with_name(f".{path.name}.{os.getpid()}.tmp")) as out:
            out.write(data)

    def push(self, url: str, *, timeout: float = 10.0, only_end: bool = False) -> None:
        """Push to a Pushgateway with POST semantics: metrics not in this push keep their value,
        so a failed run (whose push lacks the last success time) leaves the last good one.

        :param only_end: push :data:`END_GAUGES` alone (a re-run that sent nothing and kept
            the summary file), so the gateway keeps the figures of the run that did the work.
        """
        registry = self.registry
        if only_end:
            ends = [m for m in self._families if m.name in END_GAUGES]
            registry = CollectorRegistry(auto_describe=False)
            registry.register(_Fixed(ends))
        pushadd_to_gateway(
            url, job=self.job_name, registry=registry, grouping_key=self.labels,
            timeout=timeout,
        )  # fmt: skip

    def _previous_figures(self, path: Path) -> list[Metric] | None:
        """The families of an existing textfile written for this run identity, if readable."""
        try:
            families = list(text_string_to_metric_families(path.read_text()))
        except (OSError, UnicodeDecodeError, ValueError):
            return None
        want = {"job_name": self._values[0], **self.labels}
        for fam in families:
            for sample in fam.samples:
                if {k: sample.labels.get(k) for k in want} != want:
                    return None  # another run's file: write ours whole
        return families or None

    # -- families ----------------------------------------------------------------------------

    def _build(self, f: Figures) -> list[Metric]:
        names, values = self._names, self._values
        out: list[Metric] = []

        def counter(name: str, doc: str, value: float, **extra: str) -> CounterMetricFamily:
            m = CounterMetricFamily(name, doc, labels=[*names, *extra])
            m.add_metric([*values, *extra.values()], value)
            return m

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            m = GaugeMetricFamily(name, doc, labels=names)
            m.add_metric(values, value)
            return m

        req = CounterMetricFamily(
            "runner_requests", "Jobs finished, by outcome and error code.",
            labels=[*names, "outcome", "error_code"],
        )  # fmt: skip
        req.add_metric([*values, "ok", ""], f.ok)
        for code, n in sorted(f.by_error.items()):
            req.add_metric([*values, "error", code], n)
        out.append(req)
        tok = CounterMetricFamily(
            "runner_tokens", "Tokens reported by the provider; input includes cached and "
            "cache_write.", labels=[*names, "type"],
        )  # fmt: skip
        for t in ("input", "cached", "cache_write", "output"):
            tok.add_metric([*values, t], f.tokens.get(t, 0))
        out.append(tok)
        if f.cost is not None:
            cost = CounterMetricFamily(
                "runner_cost_usd", "Cost in USD as billed, and had nothing been cached.",
                labels=[*names, "kind"],
            )  # fmt: skip
            cost.add_metric([*values, "billed"], f.cost[0])
            cost.add_metric([*values, "uncached"], f.cost[1])
            out.append(cost)
        jobs = GaugeMetricFamily("runner_jobs", "Jobs by state.", labels=[*names, "state"])
        for state in ("done", "failed", "pending", "skipped"):
            jobs.add_metric([*values, state], f.jobs.get(state, 0))
        out.append(jobs)
        out.append(
            counter(
                "runner_limiter_wait_seconds",
                "Seconds requests waited on the rate limiter, summed over requests.",
                f.limiter_wait_s,
            )
        )
        out.append(counter("runner_retries", "Retried attempts.", f.retries))
        out.append(
            counter(
                "runner_rate_limit_pauses",
                "Times the whole run paused for a provider rate limit (429/529 or exhausted "
                "rate-limit headers).",
                f.rate_limit_pauses,
            )
        )
        out.append(gauge("runner_in_flight", "Requests in flight.", f.in_flight))
        out.append(gauge("runner_run_duration_seconds", "Wall time of the run.", f.duration_s))
        for name, doc, h in (
            (
                "runner_request_duration_seconds",
                "Request written to last byte of the final attempt, successful jobs.",
                f.latency,
            ),
            ("runner_ttft_seconds", "Time to first token, successful streamed jobs.", f.ttft),
        ):
            if h is None:
                continue
            m = HistogramMetricFamily(name, doc, labels=names)
            buckets = [(_le(b), float(c)) for b, c in zip(BUCKETS_S, h.cumulative, strict=True)]
            buckets.append(("+Inf", float(h.count)))
            m.add_metric(values, buckets, sum_value=h.sum_s)
            out.append(m)
        if f.exit_code is not None:
            out.append(gauge(EXIT_CODE, "Exit code of the last run.", f.exit_code))
        if f.last_success is not None:
            out.append(
                gauge(LAST_SUCCESS, "Unix time the last successful run ended.", f.last_success)
            )
        if f.last_run is not None:
            out.append(
                gauge(LAST_RUN, "Unix time the last run ended, whatever its exit code.", f.last_run)
            )
        return out


class _Fixed:
    """A collector of a fixed list of families (the end gauges of a no-op re-run's push)."""

    __slots__ = ("_families",)

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _le(b: float) -> str:
    return repr(float(b))


def _replace_last_success(f: Figures, ts: float) -> Figures:
    from dataclasses import replace

    return replace(f, last_success=ts)


def previous_last_success(path: Path, job_name: str, labels: Mapping[str, str]) -> float | None:
    """The last success time in an existing textfile for the same run identity, if any."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    want = {"job_name": job_name, **labels}
    try:
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == LAST_SUCCESS and s.labels == want:
                    return float(s.value)
    except ValueError:
        return None  # an unparseable old file: nothing to keep
    return None
