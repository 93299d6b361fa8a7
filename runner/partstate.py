"""A shard's summary state, ``S.state`` beside its summary ``S`` (docs/FORMATS.md).

At its end a shard run that started with an empty latency file writes the exact state of its
:class:`~runner.stats.SummaryBuilder` (every count and token sum, and each distribution's
samples) stamped with the size, inode and modification time of the latency file it describes.
:func:`runner.merge.merge` then combines these states instead of parsing every latency record
again (``--workers`` spends that time serially, after the workers). A state whose stamp does
not match its latency file (the file grew, was rewritten or replaced since), one written by a
resumed shard (its builder does not cover the earlier records), one that is missing or
unreadable: the merge parses that part's records, as it always could. Either way each part's
builder is the same, so the merged summary is too.

The state also keeps the part's busy intervals (:class:`~runner.stats.BusyTime` over its
records: a shard's builder keeps them as it counts each record, a few comparisons; any other
builder's are read back from the latency file, 2.7 us a record at the end): the merged wall
is the busy time, as ``runner report`` counts it, not the span from the first record to the
last (the idle time between a resumed shard's invocations is not run time).

Layout: one JSON line (``version``, ``latency`` stamp, the builder's scalars, ``busy``) then
the exact samples as native-endian float64 (``array('d')`` bytes; the header names the byte
order).
"""

from __future__ import annotations

import sys
from array import array
from pathlib import Path
from typing import Any

import orjson

from .sinks import replacing
from .stats import BusyTime, SummaryBuilder

__all__ = ["busy_spans", "read_part", "read_state", "remove_state", "state_path", "write_state"]

Spans = list[tuple[float, float]]

VERSION = 2  # 2: with the busy intervals


def state_path(summary: Path) -> Path:
    """``S`` -> ``S.state``."""
    return summary.with_name(summary.name + ".state")


def _stamp(latency: Path) -> list[int] | None:
    try:
        st = latency.stat()
    except OSError:
        return None
    return [st.st_size, st.st_ino, st.st_mtime_ns]


def remove_state(summary: Path) -> None:
    """A run is starting: no earlier state may describe its outputs."""
    path = state_path(summary)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)  # a write a crash cut short


def write_state(summary: Path, builder: SummaryBuilder, latency: Path) -> bool:
    """Write ``S.state`` for ``builder``, whose records are exactly those of ``latency`` (as it
    is now, every line flushed). False (nothing written) when the builder counts requests that
    are not in the file (cache pre-warms) or the file cannot be stat'ed."""
    stamp = _stamp(latency)
    if stamp is None or builder.overhead_requests:
        return False
    # the builder's own intervals (a shard's keeps them as it goes), else the records read back
    busy = builder.busy.spans() if builder.busy is not None else busy_spans(latency)
    if busy is None:
        return False
    head, samples = builder.state()
    head = {"version": VERSION, "byteorder": sys.byteorder, "latency": stamp, **head}
    head["busy"] = busy
    data = orjson.dumps(head) + b"\n" + array("d", samples).tobytes()
    try:
        with replacing(state_path(summary)) as out:  # durable: the merge trusts what it says
            out.write(data)
    except OSError:
        return False  # no state (the old one was removed at the start): the merge parses
    return True


def busy_spans(latency: Path) -> Spans | None:
    """The busy intervals of the records in ``latency``, as the merge finds them parsing it
    (each record's ``queued_at`` and ``ended_at``); None when a line is not a record."""
    busy = BusyTime()
    add = busy.add
    try:
        with open(latency, "rb") as fh:
            for raw in fh:
                rec = orjson.loads(raw)
                add(rec.get("queued_at") or 0.0, rec.get("ended_at") or 0.0)
    except (OSError, orjson.JSONDecodeError, AttributeError, TypeError):
        return None
    return busy.spans()


def read_state(summary: Path, latency: Path) -> SummaryBuilder | None:
    """The builder ``S.state`` holds, when its stamp matches ``latency`` as it is now; None
    otherwise (the caller parses the latency records instead)."""
    part = read_part(summary, latency)
    return None if part is None else part[0]


def read_part(summary: Path, latency: Path) -> tuple[SummaryBuilder, Spans] | None:
    """:func:`read_state`, with the busy intervals of the records."""
    try:
        data = state_path(summary).read_bytes()
    except OSError:
        return None
    cut = data.find(b"\n")
    try:
        head: dict[str, Any] = orjson.loads(data[:cut])
        if (
            cut < 0
            or head.get("version") != VERSION
            or head.get("byteorder") != sys.byteorder
            or head.get("latency") != _stamp(latency)
        ):
            return None
        samples = array("d")
        samples.frombytes(data[cut + 1 :])
        busy = [(float(lo), float(hi)) for lo, hi in head["busy"]]
        return SummaryBuilder.from_state(head, samples), busy
    except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError):
        return None
