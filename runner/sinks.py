"""Results and latency writers: append-only, crash-safe, resumable.

A run owns three files next to the results file ``R``:

* ``R`` and the latency file: JSONL, opened ``O_APPEND`` and written only in whole lines, one
  ``os.write`` per file per flush. A crash (even ``kill -9``) can therefore leave at most one
  partial last line per file, which the next run cuts off (that job simply runs again).
* ``R.lock``: created ``O_EXCL`` and held with ``flock`` for the life of the run; it holds
  ``"PID HOSTNAME"`` so that a refusal can say who is writing. ``flock`` is the real mutual
  exclusion (the kernel drops it when a runner dies); the pid only words the message, and backs
  the lock up on file systems where ``flock`` does not exclude.
* ``R.meta.json``: which input (path, size and SHA-256 of the whole jobs file and of the whole
  contexts file, see :mod:`runner.fingerprint`) and model wrote ``R``, so that resuming onto the
  output of an edited input or another model is refused instead of mixing them; an input that
  only grew (jobs appended) resumes and sends the new jobs.
* ``L.lock`` and ``S.lock`` beside the latency file and the summary: the lock covers every output,
  so two runs that share a latency file or a summary (explicit ``--latency``/``--summary``) are
  refused like two runs on one results file.
* ``R.pending`` (``--order input`` only): every finished result as soon as it is flushed, as
  ``LINE RESULT-JSON``, while it waits in memory for the jobs before it. ``R`` holds only the
  ordered view; a crash loses no paid answer, because the next run moves the pending results
  back (into their place in the order, or appended under ``--order completion``). The file is
  emptied whenever nothing is held, and removed on close.
* ``R.tmp``: a rewrite of ``R`` in progress (a resume dropping the lines ``--retry-failed``
  sends again, or putting ``R`` back in input order): written whole, fsynced, then renamed over
  ``R``, so a crash leaves the old ``R`` or the new one, never a mix. A stale one is removed on
  open.

A resume writes the jobs that had no result after the lines already in ``R``. Under ``--order
input`` the run then sorts ``R`` into input order when it ends (:meth:`Outputs.finish`), by that
atomic rewrite; the latency file is not touched (it is in completion order), so the two still
hold the same jobs once each at every instant. A crash before the rename leaves ``R`` complete
but unsorted, and the next run sorts it.

Within a flush the latency lines are written *before* the result lines: the result line (in
``R`` or ``R.pending``) is the commit record of a job. A crash between the two writes leaves
latency lines without a result, which the next run drops before it sends those jobs again, so
both files end with every job exactly once. (The other order would lose the latency records of
jobs already committed.)

Latency lines omit ``itl_ms`` when it is ``None`` (non-streaming runs) to keep them lean.

A result is keyed by its ``custom_id``; a bad line without an id of its own (unreadable, or a
duplicate of an earlier line's) has ``"custom_id": null`` and ``"line": N`` in both files and
is keyed by the integer ``N``, so it can never stand in for a job's result on resume.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import socket
import stat
from collections import deque
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Final, TypeVar

import orjson

from .config import RunConfig
from .errors import DiskFull, OutputPathError, ResumeError, SinkError
from .fingerprint import Fingerprint, fingerprint
from .inodelock import HeldFiles
from .models import LatencyRecord
from .outputs import OutputPlan, beside, lock_of, plan_outputs, run_plan, through_link
from .results import (
    RETRIABLE_ERROR_CODES,
    ResultLine,
    line_key,
    parse_result,
    rerun_code,
    result_key,
)

__all__ = [
    "DEFAULT_FLUSH_EVERY",
    "META_VERSION",
    "NOTHING_YET",
    "RETRIABLE_ERROR_CODES",
    "WHOLE_LINES",
    "InputOrder",
    "MetaCacheJournal",
    "Outputs",
    "acquire_lock",
    "check_resume",
    "default_paths",
    "lock_holder",
    "meta_path_of",
    "open_outputs",
    "read_meta_section",
    "read_regular",
    "release_lock",
    "replace_bytes",
    "replacing",
    "sink_error",
    "whole_lines_end",
    "write_meta_section",
    "write_summary",
]

DEFAULT_FLUSH_EVERY = 64
META_VERSION = 2

_NO_ITL: Final = b',"itl_ms":null}'
_APPEND_FLAGS: Final = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
_CHUNK: Final = 1 << 16
_T = TypeVar("_T")
_AFRESH: Final = "run with --no-resume to start afresh, or write elsewhere with -o"


def default_paths(jobs_path: Path, config: RunConfig) -> tuple[Path, Path, Path]:
    """The results, latency and summary paths (see :func:`runner.outputs.plan_outputs`).

    ``examples/jobs.jsonl`` gives ``examples/jobs.results.jsonl``, ``examples/jobs.latency.jsonl``
    and ``examples/jobs.summary.json``; ``-o out/r.results.jsonl`` gives ``out/r.latency.jsonl``
    and ``out/r.summary.json``.
    """
    plan = plan_outputs(config, jobs_path)
    return plan.results, plan.latency, plan.summary


def open_outputs(
    config: RunConfig,
    *,
    jobs_path: Path | None,
    model: str,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    fsync: bool = True,
    plan: OutputPlan | None = None,
) -> Outputs:
    """Lock the outputs, check they belong to this input and model, repair and load them.

    With ``config.resume`` and a non-empty results file the run resumes: a partial last line is
    cut off, the ids already written become :meth:`Outputs.done`, and (with ``retry_failed``)
    results with a retriable error are removed so that those jobs run again. Otherwise both files
    start empty.

    :param jobs_path: the input file, fingerprinted so a resume cannot mix two inputs; ``None``
        for jobs given in memory (then ``config.output`` is required and only the model is
        checked on resume).
    :param model: the run's model; resuming with another model is refused.
    :param flush_every: hand the buffered lines to the OS after this many jobs.
    :param fsync: fsync both files on :meth:`Outputs.close`.
    :param plan: the run's output plan (:func:`runner.outputs.run_plan`), if already made.
    :raises ResumeError: the outputs are locked by a live runner or belong to another input/model.
    :raises InputError: the jobs file cannot be read.
    :raises SinkError: an output file cannot be created, read or written.
    """
    if flush_every < 1:
        raise ValueError(f"flush_every must be >= 1, got {flush_every}")
    if plan is None:
        # (with ``--summary -`` the lock goes beside the default summary, not on ./-.lock)
        plan = run_plan(config, jobs_path)
        assert plan is not None
    results, latency = plan.results, plan.latency
    for parent in {results.parent, latency.parent, plan.summary.parent}:
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputPathError(f"{parent}: cannot create the directory: {exc.strerror}") from exc
    lock_path = plan.lock
    lock_fd = acquire_lock(lock_path, results)
    extra: list[tuple[Path, int]] = []
    # flock on the files themselves (their inodes): a hard link is a second name that the
    # name-keyed locks above miss (runner/inodelock.py). Taken before anything is touched.
    held = HeldFiles()
    try:
        for path in (latency, plan.summary):
            lpath = lock_of(path)
            extra.append((lpath, acquire_lock(lpath, path)))
        for path in (results, latency, plan.summary):
            held.take(path)
        meta_path = plan.meta
        jobs_file = str(jobs_path.resolve()) if jobs_path is not None else None
        contexts = config.contexts if jobs_path is not None else None
        order_input = config.order == "input"
        pending_path = _sidecar(results, ".pending")
        done: set[str | int] = set()
        recovered: dict[str | int, tuple[int, bytes]] = {}
        placed: list[str | int | None] | None = [] if order_input else None
        keep = False
        # a rewrite a crash cut short: R itself is whole
        _remove(_sidecar(through_link(results), ".tmp"))
        resuming = config.resume and (_size(results) > 0 or _size(pending_path) > 0)
        if resuming:
            meta = _read_meta(meta_path, results)
            _check_model(meta, results, model=model)
            if not latency.exists() and _has_a_whole_line(results):
                # Every result line has its latency record, written first: a missing latency
                # file is another path (a changed --latency), and resuming would lose the records.
                raise ResumeError(
                    f"{latency}: missing, but {results} holds results; resume with the --latency "
                    "of the run that wrote them (or --no-resume to start afresh)"
                )
            inputs = _check_inputs(meta, results, jobs_path=jobs_path, contexts=contexts)
            if meta.get("jobs_file") != jobs_file or inputs != _meta_inputs(meta):
                # Same content (or jobs appended), maybe at a new path: record the input now.
                _write_meta(
                    meta_path, jobs_file=jobs_file, inputs=inputs, model=model, keep_sections=True
                )
            done, recovered = _recover(
                results, latency, pending_path, config.retry_failed, order_input, placed
            )
        else:
            inputs = _fingerprint_inputs(jobs_path, contexts)
            keep = (
                config.resume
                and jobs_path is not None
                and _same_claim(meta_path, results, jobs_path, contexts, model)
            )
            _remove(pending_path)
        res_fd = _open_append(results, truncate=not resuming)
        try:
            lat_fd = _open_append(latency, truncate=not resuming)
        except BaseException:
            os.close(res_fd)
            raise
        pend_fd = -1
        try:
            held.take(results)  # created just now, or rewritten: held from here on
            held.take(latency)
            if order_input:
                pend_fd = _open_append(pending_path, truncate=False)
            if not resuming:
                # Truncate first, then claim the files for this input: a crash in between
                # leaves empty outputs, never old lines under new metadata. A batch journal of
                # the same input survives (its batches may still be running: docs/BATCH.md).
                _write_meta(
                    meta_path, jobs_file=jobs_file, inputs=inputs, model=model, keep_sections=keep
                )
        except BaseException:
            os.close(res_fd)
            os.close(lat_fd)
            if pend_fd >= 0:
                os.close(pend_fd)
            raise
    except BaseException:
        held.close()
        for lpath, fd in reversed(extra):
            release_lock(lpath, fd)
        release_lock(lock_path, lock_fd)
        raise
    outputs = Outputs(
        results_path=results,
        latency_path=latency,
        lock_path=lock_path,
        fds=(res_fd, lat_fd, lock_fd),
        done=done,
        flush_every=flush_every,
        fsync=fsync,
        extra_locks=extra,
        held=held,
    )
    outputs.pending_path = pending_path
    outputs._journal(pend_fd, len(recovered))
    if order_input:
        outputs.order = InputOrder(outputs, recovered, placed)
    return outputs


def _has_a_whole_line(path: Path) -> bool:
    """Whether ``path`` holds a newline (a torn first line alone is not a result)."""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 16):
                if b"\n" in chunk:
                    return True
    except FileNotFoundError:
        return False
    return False


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Write the summary JSON atomically (a reader never sees half a summary).

    :raises SinkError: the file cannot be written.
    """
    data = orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE)
    _io(path, lambda: path.parent.mkdir(parents=True, exist_ok=True))
    _atomic_write(path, data)


class Outputs:
    """The open results and latency files of one run, with their write buffers.

    Lines are serialised on :meth:`write` and handed to the OS every ``flush_every`` jobs or on
    :meth:`flush`, latency before results, whole lines only. Not thread-safe: one event loop
    writes. This is the sink for ``--order completion``; under ``--order input`` the engine
    writes through :attr:`sink`, an :class:`InputOrder` wrapper that holds results back and
    journals them here (:meth:`hold`, :meth:`release`) in ``R.pending``.
    """

    __slots__ = (
        "_broken",
        "_closed",
        "_done",
        "_extra_locks",
        "_fds",
        "_flush_every",
        "_fsync",
        "_held",
        "_holds",
        "_lat_buf",
        "_pend_buf",
        "_pend_dirty",
        "_pend_fd",
        "_pending",
        "_res_buf",
        "latency_path",
        "lock_path",
        "order",
        "pending_path",
        "results_path",
        "skipped",
    )

    def __init__(
        self,
        *,
        results_path: Path,
        latency_path: Path,
        lock_path: Path,
        fds: tuple[int, int, int],
        done: set[str | int],
        flush_every: int,
        fsync: bool,
        extra_locks: list[tuple[Path, int]] | None = None,
        held: HeldFiles | None = None,
    ) -> None:
        self._extra_locks = extra_locks or []
        self._held = held or HeldFiles()  # the output files' own flocks (runner/inodelock.py)
        self.results_path = results_path
        self.pending_path: Path | None = None
        self.latency_path = latency_path
        self.lock_path = lock_path
        self.skipped = len(done)  # ids already written by an earlier run
        self.order: InputOrder | None = None  # set by open_outputs under --order input
        self._fds = fds  # results, latency, lock
        self._done = done
        self._flush_every = flush_every
        self._fsync = fsync
        self._res_buf = bytearray()
        self._lat_buf = bytearray()
        self._pending = 0  # jobs in the buffers
        self._holds = 0  # results in R.pending that are not yet in R
        self._pend_buf = bytearray()
        self._pend_fd = -1
        self._pend_dirty = False  # R.pending holds lines not yet released into R
        self._broken: SinkError | None = None
        self._closed = False

    @property
    def sink(self) -> Outputs | InputOrder:
        """What the engine writes to: these files, or the input-order wrapper over them."""
        return self if self.order is None else self.order

    def done(self, custom_id: str | int) -> bool:
        """Whether an earlier run already wrote this job's result (skip it).

        ``custom_id`` is a job's id, or the line number of a bad line without an id of its own.
        """
        return custom_id in self._done

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        """Buffer one job's result and latency record (results in completion order).

        ``result.body`` may be an ``orjson.Fragment`` (a raw provider body written verbatim).

        :raises SinkError: a flush this write triggered failed.
        """
        self._res_buf += result.to_json()
        self._lat_buf += _latency_line(record, result.line)
        self._pending += 1
        if self._pending >= self._flush_every:
            self.flush()

    def hold(self, result: ResultLine, record: LatencyRecord) -> bytes:
        """Buffer a result held back from ``R`` (and its latency record) for ``R.pending``.

        The caller (:class:`InputOrder`) :meth:`release` s the returned line into ``R`` once
        its place in the order comes, then calls :meth:`due`.
        """
        res = result.to_json()
        self._lat_buf += _latency_line(record, result.line)
        self._pend_buf += b"%d " % result.line
        self._pend_buf += res
        self._holds += 1
        self._pending += 1
        return res

    def release(self, res: bytes) -> None:
        """Move a held result line into ``R`` (with the next flush)."""
        self._res_buf += res
        self._holds -= 1

    def due(self) -> None:
        """Flush when ``flush_every`` jobs are buffered."""
        if self._pending >= self._flush_every:
            self.flush()

    def flush(self) -> None:
        """Hand the buffered lines to the OS: one ``os.write`` per file, latency first.

        :raises SinkError: a file cannot be written; the outputs are then unusable, and the
            next run repairs whatever partial line the failure left.
        """
        if self._broken is not None:
            raise self._broken
        if not (self._pending or self._res_buf):
            return
        wrote: list[tuple[int, int]] = []  # (fd, bytes) of this flush, to undo on a failure
        try:
            _write_all(self._fds[1], self._lat_buf, self.latency_path)
            wrote.append((self._fds[1], len(self._lat_buf)))
            if self._pend_buf:
                _write_all(self._pend_fd, self._pend_buf, self._pending_file())
                wrote.append((self._pend_fd, len(self._pend_buf)))
                self._pend_dirty = True
            _write_all(self._fds[0], self._res_buf, self.results_path)
            wrote.clear()  # R took the lines: they are committed
            if self._pend_dirty and not self._holds:
                # Everything pending is now in R: start the journal afresh.
                _io(self._pending_file(), lambda: os.ftruncate(self._pend_fd, 0))
                self._pend_dirty = False
        except SinkError as exc:
            for fd, n in wrote:  # the latency records of results R did not take
                _cut_back(fd, n)
            self._broken = exc
            raise
        self._lat_buf.clear()
        self._res_buf.clear()
        self._pend_buf.clear()
        self._pending = 0

    def finish(self) -> None:
        """The engine is done: release what is held, flush, and (``--order input``) put ``R``
        in input order (:meth:`InputOrder.sort`). :meth:`close` does it too; a caller that
        writes a summary calls it first, so the summary is newer than the results file.

        :raises SinkError: a file cannot be written.
        """
        if self._broken is not None:
            raise self._broken
        if self.order is not None:
            self.order.release_all()
        self.flush()
        if self.order is not None:
            self.order.sort()

    def close(self) -> None:
        """Write everything still buffered, fsync, close the files and release the lock.

        Jobs held for ordering whose predecessors never finished (cancelled) are written too, in
        line order: a finished result is never dropped. Calling it again does nothing.
        """
        if self._closed:
            return
        self._closed = True
        try:
            if self._broken is None:
                try:
                    self.finish()  # may swap in a sorted R, and its descriptor in _fds
                finally:
                    if self._fsync and self._broken is None:  # even if the sort failed
                        _io(self.latency_path, lambda: os.fsync(self._fds[1]))
                        _io(self.results_path, lambda: os.fsync(self._fds[0]))
                if self._pend_fd >= 0 and self.pending_path is not None and not self._holds:
                    _remove(self.pending_path)
        finally:
            res_fd, lat_fd, lock_fd = self._fds
            os.close(res_fd)
            os.close(lat_fd)
            self._held.close()
            for lpath, fd in reversed(self._extra_locks):
                release_lock(lpath, fd)
            if self._pend_fd >= 0:
                os.close(self._pend_fd)
            release_lock(self.lock_path, lock_fd)

    def __enter__(self) -> Outputs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Flush even when the run is failing: every finished job written is one not re-sent.
        self.close()

    def _journal(self, pending_fd: int, held: int) -> None:
        """Take the ``R.pending`` descriptor; ``held`` results a crashed run left there."""
        self._pend_fd = pending_fd
        self._holds = held
        self._pend_dirty = bool(held)

    def _pending_file(self) -> Path:
        return self.pending_path or _sidecar(self.results_path, ".pending")

    def _sort_results(self, rank: dict[str | int, int]) -> None:
        """Rewrite ``R`` with its lines ordered by ``rank`` of their keys (unranked ones last, in
        file order), atomically, then append to the new file. Nothing may be buffered.

        :raises SinkError: the rewrite failed; ``R`` is then the old file or the new one, whole,
            and the outputs stay usable unless the new one cannot be opened.
        """
        assert not self._res_buf, "flush before sorting"
        try:
            _sort_lines(self.results_path, rank)
        finally:
            # Once renamed (even if a later step failed), the old descriptor names a file that
            # is gone from the directory: a write there would be lost.
            if not _io(self.results_path, lambda: _same_file(self.results_path, self._fds[0])):
                try:
                    fd = _open_append(self.results_path, truncate=False, opening=False)
                except SinkError as exc:
                    self._broken = exc
                    raise
                os.close(self._fds[0])
                self._fds = (fd, self._fds[1], self._fds[2])


def _latency_line(record: LatencyRecord, line: int) -> bytes:
    lat = orjson.dumps(record)
    if lat.endswith(_NO_ITL):
        lat = lat[: -len(_NO_ITL)] + b"}\n"
    else:
        lat += b"\n"
    if record.custom_id is None:  # a line-keyed bad line: the latency line says which
        lat = lat[:-2] + b',"line":%d}\n' % line
    return lat


class InputOrder:
    """The ``--order input`` sink: writes ``R`` in input order over :class:`Outputs`.

    The engine asks :meth:`done` once per input item, in input order, before it sends the item;
    each key answered "not done" is the next one ``R`` waits for. A finished result is held
    until every key before it is written, and journalled to ``R.pending`` at once (the same
    flush as its latency record), so holding it risks no paid answer. The buffer holds at most
    the jobs between the oldest unfinished one and the newest read, which the engine bounds by
    its read-ahead window. Results a crashed run left in ``R.pending`` count as done and take
    their place when :meth:`done` meets their key.

    A resume appends after the lines ``R`` already holds (``placed``: their keys, in file
    order). Then every key :meth:`done` is asked gets its rank in the input, and every key
    released is added to ``placed``, so that :meth:`sort` knows, without reading ``R``, whether
    ``R`` is in input order, and can rewrite it when it is not. A fresh run (``R`` empty) writes
    in input order by construction and keeps no ranks.
    """

    __slots__ = ("_expected", "_held", "_out", "_placed", "_rank", "_recovered", "flush")

    def __init__(
        self,
        out: Outputs,
        recovered: dict[str | int, tuple[int, bytes]],
        placed: list[str | int | None] | None = None,
    ) -> None:
        self._out = out
        self._expected: deque[str | int] = deque()
        self._held: dict[str | int, tuple[int, bytes]] = dict(recovered)
        self._recovered = set(recovered)
        self._placed = placed or None  # keys in R's file order, on a resume onto lines
        self._rank: dict[str | int, int] | None = {} if self._placed else None
        self.flush = out.flush

    def done(self, key: str | int) -> bool:
        rank = self._rank
        if rank is not None:
            rank.setdefault(key, len(rank))
        if not self._out.done(key):
            self._expected.append(key)
            return False
        if key in self._recovered:  # a held result of a crashed run takes its place
            self._recovered.discard(key)
            self._expected.append(key)
            self._release()
        return True

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self._held[result.key] = (result.line, self._out.hold(result, record))
        self._release()
        self._out.due()

    def release_all(self) -> None:
        """Release every held result, in line order (the run ends: its predecessors never will)."""
        held, self._held = self._held, {}
        for key, (_, res) in sorted(held.items(), key=lambda kv: kv[1][0]):
            self._out.release(res)
            if self._placed is not None:
                self._placed.append(key)

    def sort(self) -> None:
        """Put ``R`` in input order if a resume left it out of it (an atomic rewrite).

        Call it once nothing is held or buffered (:meth:`Outputs.finish`). Lines whose key was
        never asked (the run stopped before reading them) follow, in their order: the reader
        reads in input order, so each of them comes after every key it did read.
        """
        placed, rank = self._placed, self._rank
        if placed is None or rank is None:
            return
        last = len(rank)

        def at(key: str | int | None) -> int:
            return last if key is None else rank.get(key, last)

        if all(at(a) <= at(b) for a, b in pairwise(placed)):
            return
        try:
            self._out._sort_results(rank)
        except BaseException:
            self._placed = self._rank = None  # tried once: R is whole; the next run sorts it
            raise
        placed.sort(key=at)  # as R now is (sort is stable, like the rewrite)

    def _release(self) -> None:
        expected, held, out, placed = self._expected, self._held, self._out, self._placed
        while expected and expected[0] in held:
            key = expected.popleft()
            out.release(held.pop(key)[1])
            if placed is not None:
                placed.append(key)


# -- files ----------------------------------------------------------------------------------


def _io(path: Path, op: Callable[[], _T], *, left: str | None = None) -> _T:
    """Run a file operation, translating ``OSError`` into a ``SinkError`` that names the file
    (on a full disk saying ``left``, :func:`sink_error`)."""
    try:
        return op()
    except OSError as exc:
        raise sink_error(f"{path}: {exc.strerror or exc}", exc, left=left or WHOLE_LINES) from exc


_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})

#: What a full disk left, as :func:`sink_error` says it: results written before are whole
#: lines (a failed append is cut back off), or this run had written none yet.
WHOLE_LINES = "the results already written are whole lines and safe"
NOTHING_YET = "no result of this run was written yet"


def sink_error(
    message: str, exc: OSError, kind: type[SinkError] = SinkError, *, left: str = WHOLE_LINES
) -> SinkError:
    """``kind``, or :class:`DiskFull` (exit 75: free space and re-run) when no space is left;
    ``left`` says what the outputs hold then (:data:`WHOLE_LINES`, :data:`NOTHING_YET`)."""
    if exc.errno in _NO_SPACE:
        return DiskFull(
            f"{message}; {left}: free some space, then run the same command again to resume"
        )
    return kind(message)


_sidecar = beside  # one definition of a sidecar's name (runner/outputs.py)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise SinkError(f"{path}: {exc.strerror}") from exc


def _open_append(path: Path, *, truncate: bool, opening: bool = True) -> int:
    """``opening``: the run's outputs are being opened (nothing sent), so a failure is a usage
    error (exit 2); a reopen later in the run is an output error (exit 1)."""
    flags = _APPEND_FLAGS | os.O_TRUNC if truncate else _APPEND_FLAGS
    try:
        return os.open(path, flags, 0o644)
    except OSError as exc:
        error = OutputPathError if opening else SinkError
        left = NOTHING_YET if opening else WHOLE_LINES
        raise sink_error(f"{path}: cannot open: {exc.strerror}", exc, error, left=left) from exc


def _write_all(fd: int, buf: bytearray, path: Path) -> None:
    """Append ``buf`` whole, or not at all: a failed write (a full disk) is cut back off."""
    view = memoryview(buf)
    try:
        # A regular file takes the whole buffer in one call; the loop only covers short writes
        # (a full disk reports its error on the next call).
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        _cut_back(fd, len(buf) - len(view))  # no half line for a reader, or for the resume
        left = WHOLE_LINES if _fd_size(fd) else NOTHING_YET  # the first write found no room
        raise sink_error(f"{path}: cannot write: {exc.strerror}", exc, left=left) from exc
    finally:
        view.release()


def _fd_size(fd: int) -> int:
    try:
        return os.fstat(fd).st_size
    except OSError:
        return 1  # unknown: say what a cut-back append leaves


def _cut_back(fd: int, appended: int) -> None:
    """Remove the last ``appended`` bytes of the file (what a failed flush left); shrinking
    needs no space. If even that fails, the next run cuts the partial line off."""
    if appended:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, os.fstat(fd).st_size - appended)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: Path, *, tmp: Path | None = None) -> Iterator[io.BufferedWriter]:
    """The one way a file a later run or the user relies on is swapped in (the summary, the
    shard manifest, ``S.state``, the merge's outputs and marker, a rewritten results file, the
    metrics textfile): the caller writes the temporary file ``tmp`` (default ``path.tmp``)
    this yields; on a clean exit it is fsynced, renamed over ``path`` and the directory
    fsynced, so after a power loss ``path`` is the old file or the whole new one, never an
    empty or torn file under a name that claims completeness. On any error the temporary file
    is removed and ``path`` is untouched; the ``OSError`` is the caller's to word
    (:func:`replace_bytes`: :class:`DiskFull` on a full disk). Once per file and run: never on
    a per-request path.
    """
    # Through a symlink, as a plain write goes: renamed over the link itself, the new file
    # replaced the link and the file it names kept the old lines (``-o latest.jsonl``, a link
    # to ``runs/r1.jsonl``: --retry-failed left r1 with the failures it had retried).
    real = through_link(path)
    if real is not path:
        tmp = real.with_name(tmp.name) if tmp is not None else None
        path = real
    tmp = tmp or _sidecar(path, ".tmp")
    try:
        with open(tmp, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()  # never leave a half-written temporary file behind
        raise
    _fsync_dir(path.parent)  # the rename itself survives a power loss


def _replace(path: Path, fill: Callable[[BinaryIO], object], *, left: str | None = None) -> None:
    """Write a temporary file with ``fill``, make it durable, then swap it in for ``path``."""

    def replace() -> None:
        with replacing(path) as out:
            fill(out)

    _io(path, replace, left=left)


def _sort_lines(path: Path, rank: dict[str | int, int]) -> None:
    """Rewrite a results file with its lines in the order ``rank`` gives their keys.

    Lines with an unranked key (or none) follow, in file order; lines with one key keep their
    file order. Only (rank, offset, length) per line is held; the lines are copied from the
    file, whole runs of adjacent lines at once, into a temporary file swapped in by
    :func:`_replace` (fsync, rename, fsync of the directory).
    """
    last = len(rank)
    index: list[tuple[int, int, int]] = []  # (rank, offset, length); offsets are unique

    def scan() -> None:
        offset = 0
        for raw in _lines(path):
            key = line_key(raw)
            index.append((last if key is None else rank.get(key, last), offset, len(raw)))
            offset += len(raw)

    _io(path, scan)
    index.sort()

    def fill(out: BinaryIO) -> None:
        with open(path, "rb") as src:
            fd = src.fileno()

            def copy(start: int, end: int) -> None:
                while start < end:
                    data = os.pread(fd, min(_CHUNK, end - start), start)
                    if not data:
                        raise OSError(errno.EIO, f"{path} shrank while it was sorted")
                    out.write(data)
                    start += len(data)

            start = end = 0
            for _, offset, length in index:
                if offset != end:
                    copy(start, end)
                    start = offset
                end = offset + length
            copy(start, end)

    _replace(path, fill)


def replace_bytes(
    path: Path, data: bytes, *, name: str | None = None, left: str = WHOLE_LINES
) -> None:
    """``data`` swapped in for ``path`` by :func:`replacing` (fsync, rename, fsync of the
    directory): a reader, even after a power loss, sees the old file or the new one. A failed
    write leaves the old file and no temporary file, and is a :class:`SinkError` naming
    ``name`` (default: the path), :class:`DiskFull` on a full disk (exit 75) saying ``left``
    (see :func:`sink_error`)."""
    try:
        with replacing(path) as out:
            out.write(data)
    except OSError as exc:
        msg = f"{name or path}: cannot write: {exc.strerror or exc}"
        raise sink_error(msg, exc, left=left) from exc


def _atomic_write(path: Path, data: bytes, *, left: str | None = None) -> None:
    _replace(path, lambda out: out.write(data), left=left)


def whole_lines_end(fh: BinaryIO, end: int) -> int:
    """The offset just after the last newline before ``end`` (0 if none): where the whole
    lines of a file of ``end`` bytes end. Read back from the end a chunk at a time."""
    pos = end
    while pos > 0:
        start = max(0, pos - _CHUNK)
        fh.seek(start)
        nl = fh.read(pos - start).rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def _repair_tail(path: Path, *, objects: bool = True) -> None:
    """Cut a partial last line (a write torn by a crash) back to the last newline.

    ``objects``: the file holds one JSON object a line (results, latency records). A last line
    that is a whole object only lacks its newline (a script's ``"\\n".join(lines)``, an editor
    that drops the final newline): it gets one instead of being cut, since no cut inside a
    line leaves a whole object (it closes only at the line's end). Cutting it threw away a
    paid answer and sent the job again.
    """

    def repair() -> None:
        try:
            fh = open(path, "r+b")
        except FileNotFoundError:
            return
        with fh:
            end = fh.seek(0, os.SEEK_END)
            if end == 0:
                return
            cut = whole_lines_end(fh, end)
            if cut == end:
                return
            fh.seek(cut)
            if objects and _parse(fh.read(end - cut)) is not None:
                fh.seek(end)
                fh.write(b"\n")
            else:
                fh.truncate(cut)
            fh.flush()
            os.fsync(fh.fileno())

    _io(path, repair)


def _lines(path: Path) -> Iterator[bytes]:
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        yield from fh


def _rewrite(path: Path, keep: Callable[[bytes], bool]) -> None:
    """Stream ``path`` to a temporary file without the lines ``keep`` rejects, then swap it in."""
    _replace(path, lambda out: out.writelines(raw for raw in _lines(path) if keep(raw)))


# -- resume ---------------------------------------------------------------------------------


_parse = parse_result  # meta files are JSON objects too


def _judge(obj: dict[str, Any] | None, retry_failed: bool) -> tuple[bool, str | int | None]:
    """(keep the result, its key)."""
    if obj is None:
        return False, None  # belongs to no job: garbage left by a crash of the machine
    return not (retry_failed and rerun_code(obj) is not None), result_key(obj)


def _edited(raw: bytes) -> bool:
    """Whether a whole line that is no result is one no crash leaves: no NUL byte (a power
    loss leaves unwritten blocks as NULs, in the middle of a line too), not JSON at all.
    Dropped like those, a results file pretty-printed by ``jq .`` lost every paid answer, and
    every job was sent again."""
    if raw.find(b"\0") >= 0 or not raw.strip():
        return False
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        return True
    return False  # JSON, though not an object: left by no edit that meant to keep the line


def _load_results(
    path: Path, *, retry_failed: bool, placed: list[str | int | None] | None = None
) -> set[str | int]:
    """The keys already done; lines to run again (or unreadable) are removed from the file.

    :raises ResumeError: a line that is no JSON at all (the file was edited, see _edited).

    :param placed: if given, gets the key of every line kept, in file order (None for a line
        that has none).
    """

    def judge(raw: bytes) -> tuple[bool, str | int | None]:
        return _judge(_parse(raw), retry_failed)

    done: set[str | int] = set()

    def scan() -> bool:
        dropped = False
        for n, raw in enumerate(_lines(path), 1):
            keep, key = judge(raw)
            if not keep:
                if key is None and _edited(raw):
                    raise ResumeError(
                        f"cannot resume {path}: line {n} is not a result line (runner writes "
                        "one JSON object a line: was the file edited or pretty-printed? "
                        f"`jq -c .` puts that back); fix it, or {_AFRESH}"
                    )
                dropped = True
                continue
            if key is not None:
                done.add(key)
            if placed is not None:
                placed.append(key)
        return dropped

    if _io(path, scan):
        _rewrite(path, lambda raw: judge(raw)[0])
    return done


def _recover(
    results: Path,
    latency: Path,
    pending: Path,
    retry_failed: bool,
    order_input: bool,
    placed: list[str | int | None] | None = None,
) -> tuple[set[str | int], dict[str | int, tuple[int, bytes]]]:
    """Repair and load the outputs of an earlier run: (keys done, results still held).

    Results a crashed ``--order input`` run left in ``R.pending`` count as done; without an
    order to keep they are appended to ``R`` at once, else they wait for their place.
    ``placed`` (if given) gets the keys of the lines left in ``R``, in file order.
    """
    _repair_tail(results)
    _repair_tail(latency)
    _repair_tail(pending, objects=False)  # "LINE JSON" lines
    done = _load_results(results, retry_failed=retry_failed, placed=placed)
    recovered = _load_pending(pending, done, retry_failed=retry_failed)
    done.update(recovered)
    if recovered and order_input:
        # The journal keeps only what it still holds for R, before any latency record is
        # dropped: a result dropped here (to run again) must not come back on a later run.
        _replace(pending, lambda out: out.writelines(b"%d %s" % p for p in recovered.values()))
    _drop_orphans(latency, done)
    if recovered and not order_input:
        _append_durably(results, [res for _, res in recovered.values()])
        recovered = {}
    if not recovered:
        _remove(pending)
    return done, recovered


def _load_pending(
    path: Path, done: set[str | int], *, retry_failed: bool
) -> dict[str | int, tuple[int, bytes]]:
    """Results a crashed ``--order input`` run had finished but not yet placed in ``R``.

    :returns: by key, (input line, result line) for each not already in ``R`` (``done``).
    """
    found: dict[str | int, tuple[int, bytes]] = {}

    def scan() -> None:
        for raw in _lines(path):
            head, _, res = raw.partition(b" ")
            if not head.isdigit():
                continue
            keep, key = _judge(_parse(res), retry_failed)
            if keep and key is not None and key not in done:
                found[key] = (int(head), res)

    _io(path, scan)
    return found


def _append_durably(path: Path, lines: list[bytes]) -> None:
    def append() -> None:
        with open(path, "ab") as out:
            out.writelines(lines)
            out.flush()
            os.fsync(out.fileno())

    _io(path, append)


def _remove(path: Path) -> None:
    _io(path, lambda: path.unlink(missing_ok=True))


def _drop_orphans(path: Path, done: set[str | int]) -> None:
    """Drop latency lines whose job has no result line (a crash between the two writes)."""

    def keep(raw: bytes) -> bool:
        obj = _parse(raw)
        key = result_key(obj) if obj is not None else None
        return key is not None and key in done

    def any_orphan() -> bool:
        return not all(keep(raw) for raw in _lines(path))

    if _io(path, any_orphan):
        _rewrite(path, keep)


def _read_meta(meta_path: Path, results: Path) -> dict[str, Any]:
    try:
        raw = meta_path.read_bytes()
    except FileNotFoundError:
        raise ResumeError(
            f"cannot resume {results}: {meta_path} is missing, so which input and model wrote "
            f"it is unknown; {_AFRESH}"
        ) from None
    except OSError as exc:
        raise SinkError(f"{meta_path}: {exc.strerror}") from exc
    meta = _parse(raw)
    if meta is not None and meta.get("version") == 1:
        raise ResumeError(
            f"cannot resume {results}: {meta_path} was written by an older runner that "
            f"fingerprinted only the first 64 KiB of the input, so an edit cannot be ruled "
            f"out; {_AFRESH}"
        )
    if meta is None or meta.get("version") != META_VERSION:
        raise ResumeError(f"cannot resume {results}: {meta_path} is not readable; {_AFRESH}")
    return meta


def _fingerprint_inputs(jobs_path: Path | None, contexts: Path | None) -> dict[str, Any]:
    return {
        "jobs": fingerprint(jobs_path).now.to_json() if jobs_path is not None else None,
        "contexts": fingerprint(contexts).now.to_json() if contexts is not None else None,
    }


def _meta_inputs(meta: dict[str, Any]) -> dict[str, Any]:
    return {"jobs": meta.get("jobs"), "contexts": meta.get("contexts")}


def _check_inputs(
    meta: dict[str, Any], results: Path, *, jobs_path: Path | None, contexts: Path | None
) -> dict[str, Any]:
    """Refuse a resume whose inputs changed other than by appending jobs; the new fingerprints."""
    out: dict[str, Any] = {"jobs": None, "contexts": None}
    if jobs_path is None:
        return out  # jobs given in memory: only the model can be checked
    was = meta.get("jobs_file") or "jobs given in memory"
    old = Fingerprint.from_json(meta.get("jobs"))
    if old is None:
        raise ResumeError(
            f"cannot resume {results}: it was written for the input {was}, which is not a file "
            f"this run can compare with {jobs_path}; {_AFRESH}"
        )
    check = fingerprint(jobs_path, old)
    if check.now.size < old.size:
        raise ResumeError(
            f"cannot resume {results}: it was written for the input {was} ({old.size} bytes), and "
            f"the jobs file {jobs_path} is shorter ({check.now.size} bytes): jobs were removed "
            f"or edited, not only appended; {_AFRESH}"
        )
    if not check.starts_with_old:
        raise ResumeError(
            f"cannot resume {results}: it was written for the input {was}, and the jobs file "
            f"{jobs_path} differs from it within its first {old.size} bytes: lines were edited, "
            f"not only appended, so a kept answer could be stale; {_AFRESH}"
        )
    if check.continues_last_line:
        raise ResumeError(
            f"cannot resume {results}: the jobs file {jobs_path} had no newline after its last "
            f"line ({old.size} bytes) and the text appended since continues that line, a job "
            "already run: put a newline between them and run again"
        )
    out["jobs"] = check.now.to_json()
    old_ctx = Fingerprint.from_json(meta.get("contexts"))
    if contexts is None and old_ctx is None:
        return out
    if contexts is None or old_ctx is None:
        had = "had a contexts file" if old_ctx is not None else "had no contexts file"
        raise ResumeError(
            f"cannot resume {results}: the run that wrote it {had} and this one "
            f"{'has' if contexts is not None else 'has none'}; {_AFRESH}"
        )
    now = fingerprint(contexts, old_ctx).now
    if now != old_ctx:
        raise ResumeError(
            f"cannot resume {results}: the contexts file {contexts} changed since the run that "
            f"wrote it, so answers computed from the old contexts could be kept; {_AFRESH}"
        )
    out["contexts"] = now.to_json()
    return out


def _check_model(meta: dict[str, Any], results: Path, *, model: str) -> None:
    if meta.get("model") != model:
        raise ResumeError(
            f"cannot resume {results}: it was written with model {meta.get('model')!r}, "
            f"not {model!r}; {_AFRESH}"
        )


_META_KEYS: Final = frozenset({"jobs_file", "jobs", "contexts", "model", "version"})


def check_resume(results: Path, *, jobs_path: Path, contexts: Path | None, model: str) -> None:
    """The refusal a resume of ``results`` would meet (another model, an input edited other
    than by appending), raised now: ``--workers`` asks it of one shard's outputs in the parent,
    so that it is said once, not once by every worker."""
    if _size(results) <= 0 and _size(_sidecar(results, ".pending")) <= 0:
        return
    meta = _read_meta(meta_path_of(results), results)
    _check_model(meta, results, model=model)
    _check_inputs(meta, results, jobs_path=jobs_path, contexts=contexts)


def _same_claim(
    meta_path: Path, results: Path, jobs_path: Path, contexts: Path | None, model: str
) -> bool:
    """Whether the meta file already claims the outputs for this input and model, so that its
    other sections (a batch journal whose batches may still run) must survive a rewrite."""
    if not meta_path.exists():
        return False
    try:
        meta = _read_meta(meta_path, results)
        _check_model(meta, results, model=model)
        _check_inputs(meta, results, jobs_path=jobs_path, contexts=contexts)
    except ResumeError:
        return False
    return True


def _write_meta(
    meta_path: Path,
    *,
    jobs_file: str | None,
    inputs: dict[str, Any],
    model: str,
    keep_sections: bool = False,
) -> None:
    """Claim the outputs for an input and model; with ``keep_sections`` the sections other
    modules journal in the meta file (``batch``) survive the rewrite."""
    meta: dict[str, Any] = {
        "jobs_file": jobs_file,
        "jobs": inputs["jobs"],
        "contexts": inputs["contexts"],
        "model": model,
        "version": META_VERSION,
    }
    if keep_sections and meta_path.exists():
        old = _parse(_io(meta_path, meta_path.read_bytes))
        if old is not None:
            meta.update((k, v) for k, v in old.items() if k not in _META_KEYS)
    # the outputs are being opened: nothing of this run is written yet
    _atomic_write(meta_path, orjson.dumps(meta, option=orjson.OPT_INDENT_2), left=NOTHING_YET)


def meta_path_of(results: Path) -> Path:
    """The meta file that describes (and journals for) the results file ``results``."""
    return _sidecar(results, ".meta.json")


def read_regular(path: Path) -> bytes:
    """The bytes of the regular file ``path``; OSError (EINVAL) for anything else. The open
    never blocks: a FIFO put at a sidecar's name hung ``runner status`` until a writer came."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with open(fd, "rb", closefd=False) as fh:
            return fh.read()
    finally:
        os.close(fd)


def read_meta_section(results: Path, name: str) -> Any:
    """One section of the results file's meta file (None when absent or unreadable)."""
    path = meta_path_of(results)
    try:
        raw = read_regular(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SinkError(f"{path}: {exc.strerror}") from exc
    meta = _parse(raw)
    return None if meta is None else meta.get(name)


def write_meta_section(results: Path, name: str, value: Any) -> None:
    """Replace one section of the meta file, durably and atomically; the caller holds the lock."""
    if name in _META_KEYS:
        raise ValueError(f"{name!r} is not a free section of the meta file")
    path = meta_path_of(results)
    meta = _parse(_io(path, path.read_bytes)) or {}
    meta[name] = value
    _atomic_write(path, orjson.dumps(meta, option=orjson.OPT_INDENT_2))


# -- lock -----------------------------------------------------------------------------------


class _Holder:
    """Who holds an output's lock: the pid and host written into the lock file.

    Never compared or shown: a plain slotted class with Final fields, like
    :class:`runner.cache.Dispatch` (start-up cost).
    """

    __slots__ = ("host", "pid")

    def __init__(self, pid: int | None, host: str | None) -> None:
        self.pid: Final = pid
        self.host: Final = host

    @classmethod
    def read(cls, fd: int) -> _Holder:
        try:
            text = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
        except OSError:
            return cls(None, None)
        # ASCII digits only ('²'.isdigit() is true and int() refuses it) of a pid the kernel
        # could have (os.kill overflows past a C int): garbage is no holder, never a traceback.
        word = text[0] if text else ""
        pid = int(word) if word.isascii() and word.isdigit() and len(word) < 10 else None
        return cls(pid, text[1] if len(text) > 1 else None)

    def alive_here(self) -> bool:
        """Whether the pid names another live process on this host (unknowable elsewhere)."""
        if self.pid is None or self.pid <= 0 or self.pid == os.getpid():
            return False
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive, owned by someone else
        return True


def lock_holder(lock_path: Path) -> tuple[int | None, str | None, bool] | None:
    """``(pid, host, alive)`` of the run that holds (or last held) ``lock_path``, None without a
    lock file; ``alive``: the pid runs on this host (elsewhere it cannot be told). Read-only:
    the lock is never taken, so a run starting meanwhile is never refused because of it."""
    try:
        # O_NONBLOCK: a FIFO put at the lock's name would hang the open until a writer came
        fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError:  # there, but unreadable here: a holder nobody can name
        return None, None, False
    try:
        holder = _Holder.read(fd) if stat.S_ISREG(os.fstat(fd).st_mode) else _Holder(None, None)
    finally:
        os.close(fd)
    return holder.pid, holder.host, holder.alive_here()


def _busy(results: Path, lock_path: Path, holder: _Holder, *, held: bool = True) -> ResumeError:
    """``held``: the holder has ``flock`` on the file, so it is alive (the kernel drops the lock
    when it ends): removing the file would only let a second run write beside it (an operator
    told "remove it if that is wrong" did, and the next run took a fresh lock). Only where the
    file system has no flock is the pid all there is, and may be wrong."""
    who = f"pid {holder.pid}" if holder.pid is not None else "pid unknown"
    if holder.host and holder.host != socket.gethostname():
        who += f" on {holder.host}"
    said = f"{results} is being written by another runner ({who})"
    if held:
        return ResumeError(
            f"{said}, which holds {lock_path}: wait for it to end, or stop it (SIGTERM drains "
            "it); removing the file would not stop it"
        )
    return ResumeError(f"{said}; remove {lock_path} if that is wrong")


def _same_file(path: Path, fd: int) -> bool:
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    fst = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fst.st_dev, fst.st_ino)


def acquire_lock(lock_path: Path, results: Path) -> int:
    """Create or take over ``lock_path`` and hold ``flock`` on it; return its descriptor.

    When the pid cannot be written into it (a full disk), the file is removed if this call
    created it or holds it under ``flock``; a lock another process holds is never touched."""
    for _ in range(16):
        created = True
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                continue  # released between our two opens: try to create it again
            except OSError as exc:
                raise OutputPathError(f"{lock_path}: {exc.strerror}") from exc
        except OSError as exc:
            raise OutputPathError(f"{lock_path}: {exc.strerror}") from exc
        try:
            locked = _flock(fd, results, lock_path)
            if _same_file(lock_path, fd):
                holder = _Holder.read(fd)
                # flock was free, so the writer died (the kernel drops it on exit) and the lock
                # is stale, ours to take over. A live process with its pid is another one that
                # reuses the number (a restarted container counts from 1 again): only where
                # flock does not exclude on this file system is the pid all there is to go by.
                if not locked and holder.alive_here():
                    raise _busy(results, lock_path, holder, held=False)
                try:
                    _claim(fd, lock_path)
                except BaseException:
                    if created or locked:
                        # A full disk between create and claim left an empty R.lock behind:
                        # remove the file this run made, or the stale one it now holds under
                        # flock (no other process can hold it), as a release does.
                        release_lock(lock_path, fd)
                        fd = -1
                    raise
                return fd
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        # A releasing runner unlinks the file before unlocking it: what we locked is gone.
        os.close(fd)
    raise ResumeError(f"cannot take the lock {lock_path}: it keeps being replaced")


def _claim(fd: int, lock_path: Path) -> None:
    text = f"{os.getpid()} {socket.gethostname()}\n".encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
    except OSError as exc:
        raise sink_error(f"{lock_path}: {exc.strerror}", exc, left=NOTHING_YET) from exc


def _flock(fd: int, results: Path, lock_path: Path) -> bool:
    """Take ``flock`` without waiting; whoever holds it is alive (the kernel drops it on exit).
    False where the file system has no flock."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _busy(results, lock_path, _Holder.read(fd)) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOLCK, errno.EINVAL, errno.EOPNOTSUPP):
            raise SinkError(f"{lock_path}: cannot lock: {exc.strerror}") from exc
        # This file system has no flock: the pid check is all the protection there is.
        return False
    return True


def release_lock(lock_path: Path, fd: int) -> None:
    # Unlink while still holding flock, and only our own file (someone may have removed it and
    # started another run); waiters check that the path still names the file they locked.
    with contextlib.suppress(OSError):
        if _same_file(lock_path, fd):
            lock_path.unlink()
    os.close(fd)


# -- explicit provider caches ---------------------------------------------------------------


class MetaCacheJournal:
    """Records explicit cache names in ``R.meta.json`` (``"caches": {"live", "deleted"}``) the
    moment they are created or deleted, so a crash cannot forget one (see runner.explicit_cache).
    """

    __slots__ = ("_meta_path",)

    def __init__(self, results: Path) -> None:
        self._meta_path = _sidecar(results, ".meta.json")

    def names(self) -> tuple[list[str], list[str]]:
        """(live, deleted) names as last recorded; empty when there is no meta file."""
        try:
            meta = _parse(self._meta_path.read_bytes()) or {}
        except FileNotFoundError:
            return [], []
        except OSError as exc:
            raise SinkError(f"{self._meta_path}: {exc.strerror}") from exc
        caches = meta.get("caches")
        if not isinstance(caches, dict):
            return [], []
        live, deleted = caches.get("live"), caches.get("deleted")
        return (
            [n for n in live if isinstance(n, str)] if isinstance(live, list) else [],
            [n for n in deleted if isinstance(n, str)] if isinstance(deleted, list) else [],
        )

    def record(self, created: list[str], deleted: list[str]) -> None:
        try:
            meta = _parse(self._meta_path.read_bytes())
        except FileNotFoundError:
            meta = None
        except OSError as exc:
            raise SinkError(f"{self._meta_path}: {exc.strerror}") from exc
        if meta is None:
            meta = {"version": META_VERSION}
        caches = meta.get("caches")
        if not isinstance(caches, dict):
            caches = meta["caches"] = {"live": [], "deleted": []}
        live = [n for n in caches.get("live") or [] if n not in deleted]
        live.extend(n for n in created if n not in live)
        gone = list(caches.get("deleted") or [])
        gone.extend(n for n in deleted if n not in gone)
        caches["live"], caches["deleted"] = live, gone[-1000:]
        _atomic_write(self._meta_path, orjson.dumps(meta, option=orjson.OPT_INDENT_2))
