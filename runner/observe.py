"""What an operator watches during a scheduled run: JSON events, metrics, OpenTelemetry.

:class:`Observer` sits beside the engine and reads its counters from the event loop: at start,
on the engine's tick (about five times a second: a few comparisons unless a progress line,
a metrics refresh or a batch of OpenTelemetry records is due) and at the end. It never runs per
request. It also owns the transient stop (exit 75, see :class:`~runner.errors.Unavailable`):
a rate-limit pause past ``max_pause_s`` stops the run, and a circuit breaker opened only by
transient failures (connection, timeout, 5xx, overload, 429) exits 75 instead of 3.

Events (``--log-format json``): ``run_start``, ``progress``, ``retries``, ``rate_limit_pause``,
``transient_stop``, ``guard_tripped``, ``stopping``, ``interrupted``, ``metrics_export_failed``,
``run_end``
(and ``error`` from the CLI for a run that cannot start).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlsplit

import orjson

from .config import RunConfig, file_arg
from .errors import TRANSIENT_ERROR_CODES, ConfigError
from .logs import EventLog
from .pipeline import LiveStats, RunOutcome, Sink
from .urls import public_url

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from .metrics import Figures, RunMetrics
    from .otel import GenAIMetrics, RecordTap
    from .pipeline import Engine
    from .stats import SummaryBuilder

__all__ = ["EXIT_TRANSIENT", "Observer", "add_arguments", "overrides", "write_summary_to"]

EXIT_TRANSIENT = 75
METRICS_REFRESH_S = 1.0
PAUSE_GAP_S = 5.0  # unpaused for this long ends a rate-limited stretch


# -- command line ------------------------------------------------------------------------------


def _label(text: str) -> tuple[str, str]:
    k, sep, v = text.partition("=")
    if not sep or not k:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return k, v


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``run`` flags for logs, metrics and the transient-stop deadline."""
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="stderr: text, or one JSON event per line (default: text)",
    )
    p.add_argument(
        "--log-interval",
        type=float,
        dest="log_interval_s",
        help="seconds between progress lines or JSON progress events (default: 5)",
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=None,
        help="print nothing but errors (default: off)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus /metrics on this port while running, 0 picks one (default: off)",
    )
    p.add_argument(
        "--metrics-host", help="address for --metrics-port (default: 127.0.0.1, loopback only)"
    )
    p.add_argument(
        "--metrics-textfile",
        type=file_arg,
        help="write the final metrics here atomically, for node_exporter (default: off)",
    )
    p.add_argument(
        "--pushgateway", help="Pushgateway URL to push the final metrics to (default: off)"
    )
    p.add_argument(
        "--metrics-job", help="job name identifying the run in metrics (default: runner)"
    )
    p.add_argument(
        "--metrics-label",
        type=_label,
        action="append",
        metavar="NAME=VALUE",
        help="constant label on every metric, repeatable (default: none)",
    )
    p.add_argument(
        "--otel-endpoint",
        help="OTLP/HTTP endpoint for OpenTelemetry GenAI metrics, needs runner[otel] "
        "(default: off)",
    )
    p.add_argument(
        "--max-pause",
        type=float,
        dest="max_pause_s",
        help="exit 75 once rate-limited for longer than this many seconds (default: no limit)",
    )


def overrides(ns: argparse.Namespace) -> dict[str, Any]:
    """Config overrides from the flags above (None: not given)."""
    labels = getattr(ns, "metrics_label", None)
    return {
        "log_format": getattr(ns, "log_format", None),
        "log_interval_s": getattr(ns, "log_interval_s", None),
        "quiet": getattr(ns, "quiet", None),
        "metrics_port": getattr(ns, "metrics_port", None),
        "metrics_host": getattr(ns, "metrics_host", None),
        "metrics_textfile": getattr(ns, "metrics_textfile", None),
        "pushgateway": getattr(ns, "pushgateway", None),
        "metrics_job": getattr(ns, "metrics_job", None),
        "metrics_labels": dict(labels) if labels else None,
        "otel_endpoint": getattr(ns, "otel_endpoint", None),
        "max_pause_s": getattr(ns, "max_pause_s", None),
    }


def write_summary_to(path: Path, summary: Mapping[str, Any], *, one_line: bool = False) -> None:
    """The summary file, or standard output for ``-``.

    :param one_line: standard output gets the summary on one line (``--log-format json``: a
        pod's log interleaves stdout with the JSON lines of stderr, one record per line).
    """
    if str(path) == "-":
        indent = 0 if one_line else orjson.OPT_INDENT_2
        try:
            sys.stdout.buffer.write(
                orjson.dumps(summary, option=indent | orjson.OPT_APPEND_NEWLINE)
            )
            sys.stdout.flush()
        except OSError as exc:
            # `--summary - > file` on a full disk: exit 75 as for any output (a reader that
            # went away, EPIPE, stays the CLI's quiet 141).
            from .errors import DiskFull
            from .sinks import sink_error

            msg = f"standard output (--summary -): cannot write the summary: {exc.strerror}"
            error = sink_error(msg, exc)
            if not isinstance(error, DiskFull):
                raise
            from .stdio import drop_stdout

            drop_stdout()  # the interpreter's last flush of the rest must not raise again
            raise error from exc
        return
    from .sinks import write_summary

    write_summary(path, dict(summary))


# -- the observer ------------------------------------------------------------------------------


class Observer:
    """Logs, metrics and OpenTelemetry for one run; inert when none is configured.

    :param stream: where JSON events go (default stderr).
    :param meter_provider: an OpenTelemetry meter provider to record into instead of the OTLP
        one ``otel_endpoint`` configures (tests pass one with an in-memory reader).
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        jobs_path: Path | None = None,
        stream: TextIO | None = None,
        meter_provider: MeterProvider | None = None,
        metrics_refresh_s: float = METRICS_REFRESH_S,
    ) -> None:
        self.config = config
        self.jobs_path = jobs_path
        self._progress_s = config.log_interval_s
        self._refresh_s = metrics_refresh_s
        self.log: EventLog | None = None
        self.metrics: RunMetrics | None = None
        self.otel: GenAIMetrics | None = None
        self.metrics_url: str | None = None
        self._tap: RecordTap | None = None
        self._engine: Engine | None = None
        self._wall0 = time.time()
        self._last_progress = 0.0
        self._last_refresh = 0.0
        self._retries_seen = 0
        self._pauses_seen = 0
        self._paused_since: float | None = None
        self._unpaused_since: float | None = None
        self._transient: str | None = None
        if meter_provider is not None or config.otel_endpoint:
            from .otel import GenAIMetrics, otlp_meter_provider

            owned = meter_provider is None
            if meter_provider is None:
                assert config.otel_endpoint is not None
                meter_provider = otlp_meter_provider(config.otel_endpoint)
            self.otel = GenAIMetrics(
                meter_provider, provider=config.provider, model=config.model, owned=owned
            )
        if (
            config.metrics_port is not None
            or config.metrics_textfile is not None
            or config.pushgateway is not None
        ):
            from .metrics import RunMetrics

            self.metrics = RunMetrics(job_name=config.metrics_job, labels=config.metrics_labels)
            if config.metrics_port is not None:
                # Bind now, before any output is opened: a busy port must not cost a file.
                self._serve(config.metrics_host, config.metrics_port)
        if config.log_format == "json":
            self.log = EventLog(stream or sys.stderr, quiet=config.quiet)

    @property
    def active(self) -> bool:
        """Whether anything is watched (the run then counts its input lines for progress)."""
        return self.log is not None or self.metrics is not None or self.otel is not None

    @property
    def text_display(self) -> bool:
        """Whether the text progress display and summary table belong on stderr."""
        return self.config.log_format == "text" and not self.config.quiet

    def wrap_sink(self, sink: Sink) -> Sink:
        if self.otel is None:
            return sink
        from .otel import RecordTap

        self._tap = RecordTap(sink)
        return self._tap

    def chain(
        self, on_tick: Callable[[LiveStats], None] | None
    ) -> Callable[[LiveStats], None] | None:
        if not self.active and self.config.max_pause_s is None:
            return on_tick
        if on_tick is None:
            return self.tick

        def both(s: LiveStats) -> None:
            on_tick(s)
            self.tick(s)

        return both

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, engine: Engine, *, output: Path | None = None) -> None:
        """Begin watching ``engine``; ``output`` is the results file the run writes (its
        default path included), else the configured one."""
        self._engine = engine
        self._wall0 = time.time()
        now = time.perf_counter()
        self._last_progress = self._last_refresh = now
        c = self.config
        if self.metrics_url is not None:
            self._refresh()
        if self.log is not None:
            self.log.emit(
                "run_start",
                input=str(self.jobs_path) if self.jobs_path else None,
                output=str(output or c.output) if output or c.output else None,
                provider=c.provider,
                # the host and port, never a user:password@ of the URL
                base_url_host=urlsplit(c.base_url).netloc.rpartition("@")[2]
                if c.base_url
                else None,
                model=c.model,
                jobs_total=engine.stats.total,
                limits={
                    "concurrency": c.concurrency,
                    "rpm": c.rpm,
                    "tpm": c.tpm,
                    "max_attempts": c.max_attempts,
                    "timeout_s": c.timeout,
                    "max_cost_usd": c.max_cost,
                    "max_pause_s": c.max_pause_s,
                },
                cache=c.cache,
                metrics_url=self.metrics_url,
            )

    def tick(self, s: LiveStats) -> None:
        """The engine's tick: cheap unless something is due."""
        now = time.perf_counter()
        self._watch_pauses(now)
        if self._tap is not None and self.otel is not None:
            record = self.otel.record
            for rec in self._tap.drain():
                record(rec)
        if self.metrics_url is not None and now - self._last_refresh >= self._refresh_s:
            self._last_refresh = now
            self._refresh()
        if self.log is not None and now - self._last_progress >= self._progress_s:
            self._last_progress = now
            self._progress(s, now)

    def finish(self, outcome: RunOutcome) -> RunOutcome:
        """Decide the final exit code, then log the end; the final metrics wait for the summary
        file (:meth:`export`)."""
        summary = outcome.summary
        code = outcome.exit_code
        guard = summary.get("guard")
        # This invocation's failures decide (an earlier run's are in the totals too).
        this_run = summary.get("this_run") or summary.get("jobs", {})
        by_error: dict[str, int] = this_run.get("by_error", {})
        if (
            guard
            and guard.get("code") == "circuit_open"
            and by_error
            and set(by_error) <= TRANSIENT_ERROR_CODES
        ):
            # Every failure says the provider was unreachable or overloaded: a scheduler
            # should retry later rather than page someone about bad input (exit 75).
            code = EXIT_TRANSIENT
            guard["transient"] = True
        if code != outcome.exit_code:
            if "exit_code" in summary:
                summary["exit_code"] = code
            outcome = replace(outcome, exit_code=code)
        if self._tap is not None and self.otel is not None:
            for rec in self._tap.drain():
                self.otel.record(rec)
        if self.log is not None:
            self._log_end(outcome)
        return outcome

    def export(
        self, outcome: RunOutcome, *, summary_file: bool, whole: SummaryBuilder | None = None
    ) -> None:
        """Export the final metrics (textfile, Pushgateway) once the summary file is written
        or kept, so that they say what it says (runner/noop.py).

        :param summary_file: the run has a summary file (not ``--summary -``, not none). Then
            the metrics keep the figures of the run that did the work, moving only the end
            gauges, exactly when that file was kept (``summary_kept``); a no-op re-run whose
            summary was rewritten (a corrected price: a new cost) exports the rewritten one's.
            Without one, a re-run that sent nothing keeps them.
        :param whole: the builder of every record of the output, when the summary describes
            the whole output (a resumed run): the histograms describe the jobs its
            percentiles do.
        """
        if self.metrics is None:
            return
        if summary_file:
            only_end = "summary_kept" in outcome.summary
        else:
            from .noop import nothing_sent

            only_end = nothing_sent(outcome.summary)
        self._export(outcome, only_end=only_end, whole=whole)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()
        if self.otel is not None:
            otel, self.otel = self.otel, None
            otel.close()
        if self.log is not None:
            self.log.close()

    # -- pieces ------------------------------------------------------------------------------

    def _serve(self, host: str, port: int) -> None:
        assert self.metrics is not None
        try:
            bound = self.metrics.serve(host, port)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror}"
            ) from exc
        self.metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/metrics"

    def _watch_pauses(self, now: float) -> None:
        engine = self._engine
        if engine is None:
            return
        lim = engine.limiter
        pauses: int = getattr(lim, "pauses", 0)
        until: float | None = getattr(lim, "paused_until", None)
        remaining = 0.0
        if until is not None:
            remaining = max(0.0, until - asyncio.get_running_loop().time())
            self._unpaused_since = None
            if self._paused_since is None:
                self._paused_since = now
        elif self._paused_since is not None:
            if self._unpaused_since is None:
                self._unpaused_since = now
            elif now - self._unpaused_since >= PAUSE_GAP_S:
                self._paused_since = self._unpaused_since = None
        if pauses > self._pauses_seen and self.log is not None:
            self.log.emit(
                "rate_limit_pause",
                logging.WARNING,
                pauses=pauses - self._pauses_seen,
                pauses_total=pauses,
                resume_in_s=round(remaining, 3),
                throttles_total=getattr(lim, "throttles", None),
            )
        self._pauses_seen = pauses
        limit = self.config.max_pause_s
        if limit is None or self._paused_since is None or self._transient is not None:
            return
        stretch = now - self._paused_since + remaining
        if stretch > limit:
            self._transient = "rate_limit_pause"
            if self.log is not None:
                self.log.emit(
                    "transient_stop",
                    logging.ERROR,
                    reason="rate_limit_pause",
                    message=f"rate-limited for {stretch:.0f} s, past --max-pause {limit:g} s: "
                    "stopping; run again later to resume",
                )
            engine.request_stop("rate_limit_pause", EXIT_TRANSIENT)

    def _progress(self, s: LiveStats, now: float) -> None:
        assert self.log is not None
        elapsed = max(now - s.started, 1e-9)
        rate = s.done / elapsed
        eta = None
        if s.total and rate > 0:
            eta = round(max(0.0, (s.total - s.done - s.skipped) / rate), 1)
        self.log.emit(
            "progress",
            done=s.done,
            total=s.total,
            ok=s.ok,
            failed=s.failed,
            skipped=s.skipped,
            in_flight=s.in_flight,
            elapsed_s=round(elapsed, 3),
            requests_per_s=round(rate, 2),
            tokens_per_s=round((s.prompt_tokens + s.completion_tokens) / elapsed, 1),
            cache_hit_ratio=round(s.cached_tokens / s.prompt_tokens, 4) if s.prompt_tokens else 0,
            billed_usd=round(s.billed, 6),
            retries=s.retries,
            eta_s=eta,
        )
        if s.retries > self._retries_seen:
            # One line per interval, however many retries: no log storm at high rates.
            self.log.emit(
                "retries",
                logging.WARNING,
                count=s.retries - self._retries_seen,
                total=s.retries,
                interval_s=self._progress_s,
            )
            self._retries_seen = s.retries

    def stopping(self, message: str, **fields: Any) -> None:
        """A stop signal, said as it comes: the drain may take ``drain_s`` and a scheduler's log
        showed nothing until ``run_end``. ``fields``: ``signal``, ``in_flight``, ``drain_s``."""
        if self.log is not None:
            self.log.emit("stopping", logging.WARNING, message=message, **fields)
        elif self.text_display:  # text without a progress display (--progress off): a line
            print(f"runner: {message}", file=sys.stderr, flush=True)

    def _log_end(self, outcome: RunOutcome) -> None:
        assert self.log is not None
        sm = outcome.summary
        guard = sm.get("guard")
        if guard:
            self.log.emit("guard_tripped", logging.ERROR, **guard)
        elif outcome.stopped == "signal":
            self.log.emit(
                "interrupted",
                logging.WARNING,
                message="interrupted; run the same command again to resume",
            )
        self.log.run_end(outcome.exit_code, outcome.stopped, sm)

    def _figures(self, outcome: RunOutcome | None, whole: SummaryBuilder | None = None) -> Figures:
        from .metrics import Figures, hist_of

        engine = self._engine
        assert engine is not None
        sb, st = engine.summary, engine.stats
        dists = sb if whole is None else whole  # histograms: the jobs the summary describes
        ttft = hist_of(dists.ttft) if self.config.stream or dists.ttft.count else None
        pauses: int = getattr(engine.limiter, "pauses", 0)
        if outcome is None:
            pending = (st.total - st.done - st.skipped) if st.total else (st.read - st.done)
            cost = sb.billed_uncached()  # each model at its own price, as in the summary
            return Figures(
                ok=sb.ok,
                by_error=sb.by_error,
                tokens={
                    "input": sb.prompt,
                    "cached": sb.cached,
                    "cache_write": sb.cache_write,
                    "output": sb.completion,
                },
                cost=cost,
                jobs={
                    "done": sb.ok,
                    "failed": sb.failed,
                    "pending": max(0, pending),
                    "skipped": st.skipped,
                },
                limiter_wait_s=st.limiter_s,
                retries=st.retries,
                rate_limit_pauses=pauses,
                in_flight=st.in_flight,
                duration_s=time.perf_counter() - st.started,
                latency=hist_of(sb.latency),
                ttft=ttft,
            )
        # The end: every counter from the summary itself, so the two agree exactly.
        sm = outcome.summary
        jobs, tok, c = sm["jobs"], sm["tokens"], sm.get("cost")
        return Figures(
            ok=jobs["ok"],
            by_error=jobs["by_error"],
            tokens={
                "input": tok["prompt"],
                "cached": tok["cached"],
                "cache_write": tok["cache_write"],
                "output": tok["completion"],
            },
            cost=(c["billed"], c["uncached"]) if c else None,
            jobs={
                "done": jobs["ok"],
                "failed": jobs["failed"],
                "pending": sm.get("not_sent", 0),
                "skipped": jobs["skipped_resumed"],
            },
            limiter_wait_s=sm["limiter_wait_s"],
            retries=sm["retries"],
            rate_limit_pauses=pauses,
            in_flight=0,
            duration_s=sm["wall_s"],
            latency=hist_of(dists.latency),
            ttft=ttft,
            exit_code=outcome.exit_code,
            last_success=time.time() if outcome.exit_code == 0 else None,
            last_run=time.time(),
        )

    def _refresh(self) -> None:
        assert self.metrics is not None
        self.metrics.update(self._figures(None))

    def _export(self, outcome: RunOutcome, *, only_end: bool, whole: SummaryBuilder | None) -> None:
        assert self.metrics is not None
        figures = self._figures(outcome, whole)
        self.metrics.update(figures)
        c = self.config
        if c.metrics_textfile is not None:
            try:
                self.metrics.write_textfile(c.metrics_textfile, figures, only_end=only_end)
            except OSError as exc:
                self._export_failed("textfile", str(c.metrics_textfile), exc)
        if c.pushgateway is not None:
            try:
                self.metrics.push(c.pushgateway, only_end=only_end)
            except OSError as exc:  # urllib's URLError and HTTPError are OSErrors
                self._export_failed("pushgateway", public_url(c.pushgateway), exc)

    def _export_failed(self, kind: str, where: str, exc: OSError) -> None:
        # The run's own outputs are complete; a monitoring hiccup must not change its exit code.
        msg = f"could not export metrics to {kind} {where}: {exc}"
        if self.log is not None:
            self.log.emit("metrics_export_failed", logging.ERROR, target=kind, message=msg)
        else:
            print(f"runner: warning: {msg}", file=sys.stderr)
