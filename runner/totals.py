"""The summary of a whole output, not only of the last invocation.

A resumed run (or ``--retry-failed``) writes only the jobs that had no result yet, so its engine
counts only those. The latency file is the record of every job in the output, so after such a
run :func:`whole_output_summary` rebuilds the counters from it in one streaming pass and keeps
the invocation's own counts under ``this_run``. Counts, tokens, cost, errors and percentiles then
cover every job in the output; ``wall_s`` and the per-second rates describe this invocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from .config import RunConfig
from .errors import SinkError
from .models import Price
from .stats import SummaryBuilder

__all__ = [
    "add_records",
    "describe_run",
    "iso_utc",
    "this_run_of",
    "whole_output",
    "whole_output_summary",
]

_RATE_KEYS = ("wall_s", "requests_per_s", "throughput")


def iso_utc(t: float) -> str:
    """A Unix time as UTC ISO 8601 with a ``Z`` suffix, to the millisecond."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def this_run_of(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The invocation's own counts, kept beside the totals."""
    jobs = summary["jobs"]
    return {
        "ok": jobs["ok"],
        "failed": jobs["failed"],
        "by_error": jobs["by_error"],
        "skipped_resumed": jobs["skipped_resumed"],
        "tokens": summary["tokens"],
        "cost": summary["cost"],
        "wall_s": summary["wall_s"],
    }


def add_records(builder: SummaryBuilder, lines: Iterable[bytes]) -> None:
    """Count in ``builder`` every record of ``lines`` of a latency file that runner is writing
    or wrote: a line that is no JSON object (a torn last line, which the next run repairs) is
    skipped, without the checks and warnings of :func:`runner.report.read_records` (a file
    of unknown origin). Also the ``--workers`` parent's reader of its workers' files."""
    add = builder.add
    for raw in lines:
        try:
            rec = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            add(rec)


def whole_output_summary(
    latency_path: Path, config: RunConfig, run_summary: dict[str, Any]
) -> dict[str, Any]:
    """The summary of every record in ``latency_path``, with ``this_run`` and the run's rates.

    :raises SinkError: the latency file cannot be read.
    """
    return whole_output(latency_path, config, run_summary)[0]


def whole_output(
    latency_path: Path,
    config: RunConfig,
    run_summary: dict[str, Any],
    *,
    price_of: Callable[[str | None], Price | None] | None = None,
) -> tuple[dict[str, Any], SummaryBuilder]:
    """:func:`whole_output_summary`, and the builder of every record it was made from (the
    metrics' histograms, so that they describe the jobs the summary's percentiles do).

    :param price_of: each model's price, the config's by default (a ``--via batch`` run's
        are its discounted batch prices).
    """
    builder = SummaryBuilder(None, price_of=price_of or config.price)
    try:
        with open(latency_path, "rb") as fh:
            add_records(builder, fh)
    except OSError as exc:
        raise SinkError(f"{latency_path}: cannot read: {exc.strerror or exc}") from exc
    out = builder.summary(wall_s=run_summary["wall_s"])
    for key in _RATE_KEYS:
        out[key] = run_summary[key]
    out["jobs"]["skipped_resumed"] = run_summary["jobs"]["skipped_resumed"]
    for key, value in run_summary.items():
        out.setdefault(key, value)  # stopped, not_sent, guard, ...
    return out, builder


def describe_run(config: RunConfig, *, base_url: str | None) -> dict[str, Any]:
    """Who answered: provider, model, the base URL's host (never a key or a path), version."""
    from . import __version__

    host = urlsplit(base_url).hostname if base_url else None
    return {
        "provider": config.provider,
        "model": config.model,
        "base_url_host": host,
        "runner_version": __version__,
    }
