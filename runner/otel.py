"""OpenTelemetry GenAI client metrics (optional: ``pip install runner[otel]``).

Records the semantic-convention metrics ``gen_ai.client.token.usage`` (histogram, ``{token}``)
and ``gen_ai.client.operation.duration`` (histogram, ``s``) with the attributes
``gen_ai.operation.name`` (``chat``), ``gen_ai.provider.name``, ``gen_ai.request.model``,
``gen_ai.token.type`` (``input``/``output``) and, on failure, ``error.type``; exported over OTLP
(HTTP/protobuf) to the configured endpoint.

The values come from the latency records the sink writes. They are queued by
:class:`RecordTap` (a list append) and recorded in batches from the observer's tick, off the
request's path; the OpenTelemetry SDK's own cost per measurement is paid there.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .models import LatencyRecord
from .providers.capabilities import capabilities_of
from .results import ResultLine

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

__all__ = [
    "DURATION_BUCKETS_S",
    "OPERATION_DURATION",
    "TOKEN_BUCKETS",
    "TOKEN_USAGE",
    "GenAIMetrics",
    "RecordTap",
    "otlp_meter_provider",
]

TOKEN_USAGE = "gen_ai.client.token.usage"
OPERATION_DURATION = "gen_ai.client.operation.duration"
# The bucket boundaries the conventions advise for these two histograms.
TOKEN_BUCKETS: Sequence[float] = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS_S: Sequence[float] = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
EXPORT_INTERVAL_MS = 15_000
#: How long one export may take, retries included, unless the OpenTelemetry environment sets it
#: (``OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`` / ``OTEL_EXPORTER_OTLP_TIMEOUT``); the library's own
#: default is 10 s per export, and the last flush and the shutdown each waited for it, so an
#: unreachable collector held a finished run's exit for about 16 s.
EXPORT_TIMEOUT_S = 5.0
_TIMEOUT_ENV = ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")


def otlp_meter_provider(endpoint: str) -> MeterProvider:
    """A meter provider exporting to ``endpoint`` (e.g. ``http://collector:4318/v1/metrics``)."""
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError as exc:
        raise ConfigError(
            "otel_endpoint needs the OpenTelemetry extra: pip install 'runner[otel]'"
        ) from exc
    timeout = None if any(os.environ.get(v) for v in _TIMEOUT_ENV) else EXPORT_TIMEOUT_S
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, timeout=timeout),
        export_interval_millis=EXPORT_INTERVAL_MS,
        export_timeout_millis=EXPORT_TIMEOUT_S * 1000,
    )
    return SdkMeterProvider(metric_readers=[reader])


class GenAIMetrics:
    """Records GenAI client metrics for finished jobs.

    :param meter_provider: where measurements go (an SDK provider with an OTLP or in-memory
        reader); it is flushed by :meth:`close`, and shut down only when ``owned``.
    """

    __slots__ = ("_base", "_duration", "_errors", "_in", "_out", "_owned", "_provider", "_tokens")

    def __init__(
        self, meter_provider: MeterProvider, *, provider: str, model: str, owned: bool = False
    ) -> None:
        from runner import __version__

        meter = meter_provider.get_meter("runner", __version__)
        self._provider = meter_provider
        self._owned = owned
        self._tokens = meter.create_histogram(
            TOKEN_USAGE,
            unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=TOKEN_BUCKETS,
        )
        self._duration = meter.create_histogram(
            OPERATION_DURATION,
            unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        # Attribute dicts are built once and shared: recording allocates nothing of ours.
        self._base: dict[str, str] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": capabilities_of(provider).telemetry_name or provider,
            "gen_ai.request.model": model,
        }
        self._in = {**self._base, "gen_ai.token.type": "input"}
        self._out = {**self._base, "gen_ai.token.type": "output"}
        self._errors: dict[str, dict[str, str]] = {}

    def record(self, rec: LatencyRecord) -> None:
        if rec.error_code == "invalid_input":
            return  # never sent: no operation to describe
        if rec.outcome == "ok":
            attrs = self._base
        else:
            code = rec.error_code or "_OTHER"
            attrs = self._errors.get(code) or self._errors.setdefault(
                code, {**self._base, "error.type": code}
            )
        # A failure with no response (connection, timeout) has no latency: its duration is
        # the time until the client gave up.
        ms = rec.latency_ms if rec.latency_ms is not None else rec.total_ms
        if ms is not None:
            self._duration.record(ms / 1000.0, attrs)
        if rec.prompt_tokens or rec.completion_tokens:
            self._tokens.record(rec.prompt_tokens, self._in)
            self._tokens.record(rec.completion_tokens, self._out)

    def close(self) -> None:
        """Send the last measurements, bounded by ``EXPORT_TIMEOUT_S``: a collector that is down
        must not hold a finished run's exit. An owned provider is shut down, which exports once
        more and waits for its exporting thread, so that the library's last words (a failed
        export) are logged while the run's log is still open; a host's provider is flushed."""
        if self._owned:
            shutdown: Callable[..., Any] | None = getattr(self._provider, "shutdown", None)
            if shutdown is not None:
                shutdown(timeout_millis=EXPORT_TIMEOUT_S * 1000 + 1000)
                return
        flush: Callable[..., Any] | None = getattr(self._provider, "force_flush", None)
        if flush is not None:
            flush(timeout_millis=EXPORT_TIMEOUT_S * 1000)


class RecordTap:
    """A sink wrapper that also queues each written latency record for :meth:`drain`.

    ``done`` and ``flush`` are the wrapped sink's own bound methods, so only ``write`` gains a
    call and a list append.
    """

    __slots__ = ("_inner", "_queue", "done", "flush")

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._queue: list[LatencyRecord] = []
        self.done = inner.done
        self.flush = inner.flush

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self._inner.write(result, record)
        self._queue.append(record)

    def drain(self) -> list[LatencyRecord]:
        out, self._queue = self._queue, []
        return out
