"""``runner merge OUT PARTS...``: combine the outputs of a run's shards into one set.

Checks before anything is written (exit 2 with the reason otherwise):

- every part is a shard's results file (it has the manifest :mod:`runner.shards` writes), and
  all of them read the same input (size and digest of the whole file), with the same model and
  the same shard count N; no shard index appears twice;
- every shard 0..N-1 is present and finished (its summary exists and says it was not stopped
  with jobs unsent); ``--partial`` merges what is there and still lists what is missing;
- no id appears twice across the parts.

OUT gets the results and latency lines of the parts in shard order (in the order of the jobs
file when every part's manifest says it ran with ``--order input`` and that file is unchanged),
and a summary computed
from the latency records themselves (exact percentiles, counts, tokens and cost: the same
:class:`~runner.stats.SummaryBuilder` a run uses; one per part, combined in part order, taken
from the part's ``S.state`` when that still describes its latency file,
:mod:`runner.partstate`). The three files are written to temporary
names and renamed into place, so a failed merge leaves no half output. An existing OUT is
refused unless it was written by an earlier merge of the same input (``OUT.merged.json``), so
a merge never overwrites a run's own results, nor (without ``--force``) by a merge of fewer
shards than that earlier merge had: a ``--partial`` merge never silently replaces a complete one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import glob
import io
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .config import file_arg, model_arg
from .errors import ConfigError, InputError, SinkError
from .idset import IdSet
from .jobs import id_field
from .models import Price
from .outputs import check_output_file, lock_of, sibling
from .partstate import read_part, state_path
from .report import render_summary
from .results import line_key, parse_result
from .shards import manifest_path, read_manifest, unchanged_input
from .sinks import replace_bytes, replacing, sink_error, whole_lines_end
from .stats import BusyTime, SummaryBuilder, summed_cost

__all__ = ["MergeReport", "add_arguments", "main", "merge", "merged_paths", "shard_finished"]

MERGED_SUFFIX = ".merged.json"
_BLOCK = 1 << 20


@dataclass(frozen=True, slots=True)
class MergeReport:
    results: Path
    latency: Path
    summary: dict[str, Any]
    count: int  # shards in the run
    merged: tuple[int, ...]  # shard indices merged
    missing: tuple[int, ...]  # absent from the parts
    unfinished: tuple[int, ...]  # present without a finished summary
    from_state: tuple[int, ...] = ()  # summed from the shard's S.state, not its records


@dataclass(frozen=True, slots=True)
class _Part:
    index: int
    results: Path
    latency: Path
    summary: Path
    manifest: dict[str, Any]
    # its summary file, parsed once ({} until read): finished, cost, caches, identity, limits
    _doc: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)

    def doc(self) -> dict[str, Any] | None:
        """The part's summary, read once; None when it cannot be read or parsed."""
        if not self._doc:
            try:
                parsed = orjson.loads(self.summary.read_bytes())
            except (OSError, orjson.JSONDecodeError):
                return None
            if not isinstance(parsed, dict):
                return None
            self._doc["summary"] = parsed
        return self._doc["summary"]  # type: ignore[no-any-return]


def merged_paths(out: Path) -> tuple[Path, Path, Path]:
    """``X.results.jsonl`` -> (itself, ``X.latency.jsonl``, ``X.summary.json``), named as a run
    names them (``-o X.jsonl`` too: ``X.latency.jsonl``, not ``X.jsonl.latency.jsonl``)."""
    return out, sibling(out, "latency.jsonl"), sibling(out, "summary.json")


def expand_parts(parts: Sequence[str]) -> list[Path]:
    """Paths as given; a pattern with ``*?[`` is globbed (for shells that did not). Of a
    pattern's matches only shards' results files are parts: ``'out/*.results.jsonl'`` also
    matches an earlier merge's output (merging again must not read it as a part) and
    ``'out/x.shard-*'`` the shards' latency files."""
    out: list[Path] = []
    for p in parts:
        if any(c in p for c in "*?[") and not Path(p).exists():
            found = sorted(glob.glob(p))
            if not found:
                raise ConfigError(f"{p}: no file matches")
            kept = [Path(f) for f in found if manifest_path(Path(f)).is_file()]
            if not kept:
                raise ConfigError(
                    f"{p}: matches no shard's results file (X.shard-K-of-N.results.jsonl)"
                )
            out.extend(kept)
        else:
            out.append(Path(p))
    return out


#: What every part of one run has in common. ``contexts_fingerprint`` is compared only where
#: both manifests have it (a shard finished by an older runner has none).
_SAME_IN_PARTS = (
    ("fingerprint", "input"),
    ("contexts_fingerprint", "contexts file"),
    ("count", "shard count"),
    ("model", "model"),
)


def _load_parts(paths: Sequence[Path]) -> tuple[list[_Part], int, dict[str, Any]]:
    parts: list[_Part] = []
    first: dict[str, Any] | None = None
    seen: dict[int, Path] = {}
    for results in paths:
        m = read_manifest(results)
        if first is None:
            first = m
        for field, what in _SAME_IN_PARTS:
            older = field == "contexts_fingerprint" and not (field in m and field in first)
            if m.get(field) != first.get(field) and not older:
                raise ConfigError(
                    f"{results}: {what} {m.get(field)!r} differs from {paths[0]}'s "
                    f"{first.get(field)!r}: the parts are not shards of one run"
                )
        index = int(m["shard"])
        if index in seen:
            raise ConfigError(f"{results}: shard {index} is also {seen[index]}")
        seen[index] = results
        base = results.parent
        parts.append(_Part(index, results, base / m["latency"], base / m["summary"], manifest=m))
    if first is None:
        raise ConfigError("merge: no parts given")
    return sorted(parts, key=lambda p: p.index), int(first["count"]), first


def _finished(part: _Part) -> bool:
    s = part.doc()
    if s is None:
        return False
    # a summary older than the results is from an earlier, interrupted attempt
    if part.summary.stat().st_mtime < part.results.stat().st_mtime - 1.0:
        return False
    this_run = s.get("this_run") or {}
    return not s.get("stopped") and not s.get("not_sent") and not this_run.get("not_sent")


def shard_finished(results: Path) -> bool:
    """Whether the shard that writes ``results`` finished (its manifest names its summary,
    which exists, is newer than its results and says nothing was left unsent)."""
    try:
        m = read_manifest(results)
    except (ConfigError, InputError):
        return False
    base = results.parent
    return _finished(_Part(int(m["shard"]), results, base / m["latency"], base / m["summary"], m))


def _parts_cost(loaded: Sequence[_Part]) -> dict[str, Any] | None:
    """The sum of the parts' billed and uncached cost (cost is additive), when every part's
    summary has one; each shard priced its jobs by their own model."""
    costs = []
    for part in loaded:
        doc = part.doc()
        if doc is None:
            return None
        costs.append(doc.get("cost"))
    return summed_cost(costs)


def _add_parts_cache_cost(summary: dict[str, Any], loaded: Sequence[_Part]) -> None:
    """Explicit caches (Gemini) are billed outside the latency records: their creation and
    storage come from the parts' summaries, and the saving is net of both, as in a run."""
    cost = summary.get("cost")
    if not cost:
        return
    create = storage = 0.0
    found = False
    for part in loaded:
        doc = part.doc()
        if doc is None:
            continue
        pc = doc.get("cost") or {}
        if "cache_create" in pc:
            found = True
            create += pc.get("cache_create") or 0.0
            storage += pc.get("storage") or 0.0
    if not found:
        return
    total = cost["billed"] + create + storage
    cost["cache_create"] = round(create, 8)
    cost["storage"] = round(storage, 10)
    cost["billed_total"] = round(total, 8)
    cost["saving_net"] = round(1.0 - total / cost["uncached"], 6) if cost["uncached"] else 0.0


def _add_parts_identity(summary: dict[str, Any], loaded: Sequence[_Part]) -> None:
    """When, who and why, as a run's summary says them (README, "Output"): the parts' provider,
    model, host and version, the first start and the last end, and the first stop reason."""
    for part in loaded:
        ps = part.doc()
        if ps is None:
            continue
        for key in ("provider", "model", "base_url_host", "runner_version"):
            if key in ps:
                summary.setdefault(key, ps[key])
        for key, pick in (("started_at", min), ("ended_at", max)):
            if ps.get(key):
                summary[key] = pick(summary[key], ps[key]) if summary.get(key) else ps[key]
        if summary.get("stopped") is None:
            summary["stopped"] = ps.get("stopped")


#: How each process's ``shared_limit`` counter combines: processes' own work adds up; one store
#: outage is seen by every process, so its count and length are the longest any one saw.
_SHARED_SUM = ("leases", "store_errors", "pauses_published", "pauses_received")
_SHARED_MAX = ("lease_span_s", "store_rtt_ms", "max_processes", "outages", "degraded_s")


def _add_parts_limits(summary: dict[str, Any], loaded: Sequence[_Part]) -> None:
    """The limiter as a run's summary says it: ``limiter_wait_s`` is summed over requests (and
    its mean per request), and the parts' ``shared_limit`` sections (Redis or the ``--workers``
    limit file) in one, so a store outage a worker lived through shows in the merged summary."""
    done = summary["jobs"]["ok"] + summary["jobs"]["failed"]
    summary["limiter_wait_summed"] = True
    wait_ms = summary.get("limiter_wait_s", 0.0) * 1000.0
    summary["limiter_wait_mean_ms"] = round(wait_ms / done, 3) if done else 0.0
    shared: dict[str, Any] = {}
    for part in loaded:
        ps = (part.doc() or {}).get("shared_limit")
        if not isinstance(ps, dict):
            continue
        if not shared:
            shared = dict(ps)
            continue
        for key in _SHARED_SUM:
            shared[key] = (shared.get(key) or 0) + (ps.get(key) or 0)
        for key in _SHARED_MAX:
            shared[key] = max(shared.get(key) or 0, ps.get(key) or 0)
        for key in ("rpm", "tpm"):  # the rate in force: a lower one learned wins
            known = [v for v in (shared.get(key), ps.get(key)) if v]
            shared[key] = min(known) if known else None
    if shared:
        summary["shared_limit"] = shared


def _blocks(path: Path) -> Iterator[bytes]:
    """The file in blocks of whole lines (about 1 MiB each, every line ending in a newline);
    a partial last line is a crashed write, not a record, and is left out."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise _read_error(path, exc) from exc
    with fh:
        rest = b""
        try:  # only this generator's reads: the caller's writes fail in the caller
            while chunk := fh.read(_BLOCK):
                data = rest + chunk if rest else chunk
                cut = data.rfind(b"\n") + 1
                rest = data[cut:]
                if cut:
                    yield data[:cut]
        except OSError as exc:
            raise _read_error(path, exc) from exc


def _read_error(path: Path, exc: OSError) -> InputError:
    """A part or the jobs file the merge reads failed: a read, named as one, never "cannot
    write" (the merge's own writes are :func:`_write_error`)."""
    return InputError(f"{path}: cannot read: {exc.strerror or exc}")


def _result_key(raw: bytes, path: Path, line: int) -> object:
    """A result line's key for the duplicate check: its id, or ("line", N) for a line-keyed bad
    line (:func:`runner.results.line_key` reads it)."""
    key = line_key(raw)
    if key is None:
        why = "not a JSON object" if parse_result(raw) is None else "no custom_id, no line"
        raise InputError(f"{path}:{line}: not a result line ({why})")
    # A bad or duplicate line has no id of its own: its input line names it (docs/FORMATS.md),
    # so two of them in different parts are not a clash.
    return ("line", key) if type(key) is int else key


# The start of a result line as the runner writes it, ``{"id":"…","custom_id":"…"`` (see
# _result_key), after the newline that ends the line before: found with a fast search for the
# literal prefix (an anchored ``^`` under MULTILINE tries every byte, ten times slower here).
_FAST_KEYS = re.compile(rb'\n\{"id":"[^"\n]*","custom_id":"([^"\\\n]*)"')


def _twice(key: object, path: Path) -> ConfigError:
    what = f"input line {key[1]}" if isinstance(key, tuple) else f"id {key!r}"
    return ConfigError(f"merge: {what} appears twice ({path})")


def _copy_results(out: io.BufferedWriter, loaded: Sequence[_Part], ids: IdSet) -> int:
    """The parts' results, part after part, in whole blocks; per line only the id is read."""
    n = 0
    add = ids.add
    for p in loaded:
        line = 0
        for block in _blocks(p.results):
            lines = block.count(b"\n")
            fast = _FAST_KEYS.findall(b"\n" + block)  # every id in one pass, if all match
            if len(fast) == lines:
                for cid in fast:
                    line += 1
                    key = cid.decode()  # what _result_key reads from such a line
                    if not add(hash(key)):
                        raise _twice(key, p.results)
            else:
                for raw in block.split(b"\n")[:-1]:
                    line += 1
                    key = _result_key(raw, p.results, line)
                    if not add(hash(key)):
                        raise _twice(key, p.results)
            n += lines
            out.write(block)
    return n


def _copy_whole_lines(out: io.BufferedWriter, loaded: Sequence[_Part]) -> int:
    """The parts' results, part after part, unread: only their lines are counted (the
    results-against-records check). For parts whose ids are known to be distinct; a partial
    last line is a crashed write and is left out, as :func:`_blocks` does."""
    n = 0
    for p in loaded:
        try:
            fh = open(p.results, "rb")
        except OSError as exc:
            raise _read_error(p.results, exc) from exc
        with fh:
            try:
                left = whole_lines_end(fh, os.fstat(fh.fileno()).st_size)
                fh.seek(0)
            except OSError as exc:
                raise _read_error(p.results, exc) from exc
            while left > 0:
                try:
                    chunk = fh.read(min(_BLOCK, left))
                except OSError as exc:
                    raise _read_error(p.results, exc) from exc
                if not chunk:
                    break
                left -= len(chunk)
                n += chunk.count(b"\n")
                out.write(chunk)
    return n


def _keyed_lines(path: Path, ids: IdSet) -> Iterator[tuple[object, bytes]]:
    """Each result line of ``path`` (newline included) with its key, checked for duplicates."""
    line = 0
    for block in _blocks(path):
        for raw in block.split(b"\n")[:-1]:
            line += 1
            key = _result_key(raw, path, line)
            if not ids.add(hash(key)):
                raise _twice(key, path)
            yield key, raw + b"\n"


def _input_keys(jobs: Path) -> Iterator[tuple[str | None, int]]:
    """(id, line number) of every line of the jobs file: the id as the reader claims it (the
    Batch shape's ``custom_id``, else ``id``; None when unreadable)."""
    try:
        fh = open(jobs, "rb")
    except OSError as exc:
        raise _read_error(jobs, exc) from exc
    with fh:
        try:  # only this generator's reads: the caller's writes fail in the caller
            for lineno, raw in enumerate(fh, 1):
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    yield None, lineno
                    continue
                cid = None
                if type(obj) is dict:
                    cid = obj.get(id_field(obj))
                yield (cid if type(cid) is str else None), lineno
        except OSError as exc:
            raise _read_error(jobs, exc) from exc


def _write_in_input_order(
    out: io.BufferedWriter, loaded: Sequence[_Part], jobs: Path, ids: IdSet
) -> int:
    """Interleave the parts' results (each in input order) into the order of the jobs file.

    A result's key is its id, or ("line", N) for a line-keyed bad line, so the next input line
    is answered by the one part whose next result has that key. A result the walk could not
    place (a part not in input order) is never dropped: it follows, in part order."""
    streams = [_keyed_lines(p.results, ids) for p in loaded]
    heads: dict[object, tuple[int, bytes]] = {}

    def pull(i: int) -> None:
        item = next(streams[i], None)
        if item is not None:
            heads[item[0]] = (i, item[1])

    for i in range(len(streams)):
        pull(i)
    n = 0
    for cid, lineno in _input_keys(jobs):
        hit = heads.pop(("line", lineno), None)
        if hit is None and cid is not None:
            hit = heads.pop(cid, None)
        if hit is not None:
            out.write(hit[1])
            n += 1
            pull(hit[0])
    for i, raw in sorted(heads.values()):
        out.write(raw)
        n += 1
        for _key, raw in streams[i]:
            out.write(raw)
            n += 1
    return n


def _records(block: bytes, path: Path, line: int) -> list[dict[str, Any]]:
    """The latency records of a block of lines (the first is line ``line`` of ``path``), parsed
    in one call as one JSON array."""
    try:
        out: list[dict[str, Any]] = orjson.loads(b"[" + block[:-1].replace(b"\n", b",") + b"]")
        if all(type(rec) is dict for rec in out):
            return out
    except orjson.JSONDecodeError:
        pass
    for i, raw in enumerate(block.split(b"\n")[:-1]):  # find the bad line to name it
        try:
            ok = type(orjson.loads(raw)) is dict
        except orjson.JSONDecodeError:
            ok = False
        if not ok:
            raise InputError(f"{path}:{line + i}: not a latency record (not a JSON object)")
    raise InputError(f"{path}: unreadable latency records")  # pragma: no cover


def _complete_lines(path: Path) -> int:
    """Whole lines of ``path`` (a partial last line, a crashed write, is not one)."""
    n = 0
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(_BLOCK):
                n += chunk.count(b"\n")
    except OSError as exc:
        raise _read_error(path, exc) from exc
    return n


def _differing(loaded: Sequence[_Part], records: Sequence[int], count: int) -> str:
    """For the results-against-records error (its cold path): which parts differ, and how to
    repair them. A resumed shard keeps only the latency records of the results it has."""
    said = []
    for p, n in zip(loaded, records, strict=True):
        lines = _complete_lines(p.results)
        if lines != n:
            said.append(
                f"\n  {p.results}: {lines} results but {n} latency records (shard {p.index} of "
                f"{count}; a cut-short or lost line): run that shard again with the same "
                f"--shard {p.index}/{count} and -o to resume it, then merge again"
            )
    return "".join(said)


def _copy_latency(out: io.BufferedWriter, p: _Part, busy: BusyTime) -> tuple[SummaryBuilder, bool]:
    """Copy the part's latency lines and add its records' busy time to ``busy``; its builder,
    and whether it came from its ``S.state`` (which keeps the busy intervals too)."""
    state = read_part(p.summary, p.latency)
    if state is not None:
        part, spans = state
        for lo, hi in spans:
            busy.add(lo, hi)  # the same union as its records' (runner.stats.BusyTime.spans)
        for block in _blocks(p.latency):
            out.write(block)
        return part, True
    part = SummaryBuilder(None)
    add, span = part.add, busy.add
    line = 1
    for block in _blocks(p.latency):
        for rec in _records(block, p.latency, line):
            add(rec)
            span(rec.get("queued_at") or 0.0, rec.get("ended_at") or 0.0)  # as report does
            line += 1
        out.write(block)
    return part, False


def merge(
    out: Path,
    parts: Sequence[Path],
    *,
    price_of: Callable[[str | None], Price | None] | None = None,
    partial: bool = False,
    force: bool = False,
    paths: tuple[Path, Path] | None = None,
    order_by: Path | None = None,
    finish: Callable[[dict[str, Any], Sequence[dict[str, Any] | None]], bool | None] | None = None,
    inputs: Sequence[Path] = (),
    distinct_ids: bool = False,
) -> MergeReport:
    """Merge the shard outputs ``parts`` into ``out`` (see the module docstring).

    :param price_of: the price of a model (``None``: the run's model), such as
        :meth:`RunConfig.price <runner.config.RunConfig.price>`: each latency record is priced
        by its own model, as the run itself prices it, so a multi-model run's merged cost is the
        single run's. Without one (or with a model it cannot price) the cost is the sum of the
        parts' own.
    :param paths: the merged latency and summary files (default: beside ``out``, as
        :func:`merged_paths` names them); ``--workers`` passes the run's own ``--latency`` and
        ``--summary``.
    :param order_by: the jobs file, for ``--workers`` with ``--order input``: the results are
        written in the order of its lines (each part is in that order; the parts are
        interleaved by reading each line's id), not part after part.
    :param finish: called with the merged summary just before it is written, to add to it
        (``--workers`` adds its ``workers`` section and exit code: one write, not two), and
        the merged parts' own summaries as this merge read them (None: unreadable), in shard
        order, so that the caller need not read them again; False
        from it leaves the summary file as it is (a ``--workers`` re-run that sent nothing,
        :mod:`runner.noop`).
    :param inputs: more files no output may name (the config, the contexts), besides the
        parts, their jobs file and the contexts their manifests name.
    :param distinct_ids: the caller knows no id is in two parts, so the per-line id check is
        skipped (``--workers``: its shards are N-way shards of one input, and each shard's
        reader claims every id of the whole file, a duplicate even in another shard's lines
        included; :func:`runner.jobs.read_jobs`). The lines are still counted against the
        latency records.
    """
    loaded, count, first = _load_parts(parts)
    present = {p.index for p in loaded}
    missing = tuple(i for i in range(count) if i not in present)
    unfinished = tuple(p.index for p in loaded if not _finished(p))
    if (missing or unfinished) and not partial:
        problems = []
        if missing:
            problems.append(f"missing shard(s) {', '.join(map(str, missing))} of {count}")
        if unfinished:
            problems.append(
                f"shard(s) {', '.join(map(str, unfinished))} not finished "
                "(run them again with the same --shard K/N to resume)"
            )
        raise ConfigError("merge: " + "; ".join(problems) + " (--partial merges what is there)")
    results, latency, summary_path = merged_paths(out)
    if paths is not None:
        latency, summary_path = paths
    _refuse_inputs(
        loaded,
        first,
        [("OUT", results), ("the merged latency", latency), ("the summary", summary_path)],
        inputs,
    )
    marker = out.with_name(out.name + MERGED_SUFFIX)
    if out.exists() and out.stat().st_size > 0 and not force:
        ok = False
        if marker.exists():
            try:
                ok = orjson.loads(marker.read_bytes()).get("fingerprint") == first["fingerprint"]
            except (OSError, orjson.JSONDecodeError):
                ok = False
        if not ok:
            raise ConfigError(
                f"{out}: exists and is not an earlier merge of this input; not overwriting"
            )
        _refuse_losing(out, marker, count, present, bool(missing or unfinished))
    out.parent.mkdir(parents=True, exist_ok=True)
    builder = SummaryBuilder(None, price_of=price_of)
    busy = BusyTime()  # the wall: the parts' busy time, as runner report counts it
    from_state: list[int] = []
    ids = IdSet()
    try:
        # Both written beside, then (on leaving, latency first) each fsynced, renamed and its
        # directory fsynced by sinks.replacing; any error removes both temporary files.
        with replacing(results) as rf, replacing(latency) as lf:
            # Whole blocks of lines are copied; per line only the id (results) and the summary
            # (latency) are looked at.
            if order_by is None and distinct_ids:
                n_results = _copy_whole_lines(rf, loaded)
            elif order_by is None:
                n_results = _copy_results(rf, loaded, ids)
            else:
                n_results = _write_in_input_order(rf, loaded, order_by, ids)
            # Each part's summary state (its own builder, combined in part order): the one its
            # run left (S.state, runner/partstate.py) when that still matches its latency file,
            # else its records parsed. Either way the same builder, so the same summary.
            records: list[int] = []  # each part's latency records, to name a part that differs
            for p in loaded:
                part, trusted = _copy_latency(lf, p, busy)
                if trusted:
                    from_state.append(p.index)
                records.append(part.ok + part.failed)
                builder.absorb(part)
            # Both on disk before either is renamed (replacing's fsync then has nothing left).
            rf.flush()
            lf.flush()
            os.fsync(rf.fileno())
            os.fsync(lf.fileno())
            # The wall is the busy time: a resumed shard's idle time between its invocations
            # is not run time (runner report's rule), nor the gap between shards run apart.
            done = builder.ok + builder.failed
            summary = builder.summary(wall_s=busy.result()[0] if done else None)
            summary["wall"] = busy.section()
            if summary.get("cost") is None:
                summary["cost"] = _parts_cost(loaded)  # no price here (no -c): the parts' own
            _add_parts_cache_cost(summary, loaded)
            _add_parts_identity(summary, loaded)
            _add_parts_limits(summary, loaded)
            summary["shards"] = {
                "count": count,
                "merged": sorted(present),
                "missing": list(missing),
                "unfinished": list(unfinished),
                # summed from S.state, not re-read (partstate.py)
                "from_state": list(from_state),
            }
            if summary["jobs"]["ok"] + summary["jobs"]["failed"] != n_results:
                raise ConfigError(
                    f"merge: {n_results} results but "
                    f"{summary['jobs']['ok'] + summary['jobs']['failed']} latency records"
                    + _differing(loaded, records, count)
                )
            # The marker first: once OUT is replaced it must say OUT is this merge, or a re-run
            # after a failure below (a full disk under the summary) refuses to overwrite it.
            _atomic(
                marker,
                orjson.dumps(
                    {
                        "fingerprint": first["fingerprint"],
                        "count": count,
                        "merged": sorted(present),
                        "parts": [str(p.results) for p in loaded],
                    }
                ),
            )
    except OSError as exc:  # a read's is an InputError already: a write of the merge failed
        raise _write_error(results, exc) from exc
    if finish is None or finish(summary, [p.doc() for p in loaded]) is not False:
        _atomic(
            summary_path,
            orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_APPEND_NEWLINE),
        )
    else:
        # Kept (a re-run that sent nothing), but OUT was written again above: the summary is
        # still this output's last word, and a summary older than its results is read as an
        # earlier run's (runner status, runner/runstatus.py).
        with contextlib.suppress(OSError):
            os.utime(summary_path)
    return MergeReport(
        results,
        latency,
        summary,
        count,
        tuple(sorted(present)),
        missing,
        unfinished,
        tuple(from_state),
    )


def _refuse_losing(
    out: Path, marker: Path, count: int, present: set[int], incomplete: bool
) -> None:
    """A merge never silently replaces an earlier merge of more shards (exit 2): ``runner merge
    OUT shard-0... --partial`` over a complete merge in OUT would lose the other shards' merged
    output. Refused when OUT holds a shard this merge lacks (the marker's ``merged``; a marker
    from before it recorded them: more parts than this merge has), or, with another shard count,
    when this merge is incomplete. ``--force`` replaces it anyway."""
    try:
        was = orjson.loads(marker.read_bytes())
        old_count = int(was.get("count"))
        merged = was.get("merged")
        if merged is None:  # an older marker: only its parts' paths
            old = set(range(len(was["parts"])))
            lost = len(old) > len(present)
        else:
            old = {int(i) for i in merged}
            lost = bool(old - present)
    except (OSError, orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        return  # no readable record of what it holds: the fingerprint check above decided
    if old_count != count:
        lost = incomplete
    if not lost:
        return

    def shards(ids: set[int]) -> str:
        return ", ".join(map(str, sorted(ids))) or "none"

    raise ConfigError(
        f"{out}: holds an earlier merge of shard(s) {shards(old)} of {old_count}; this merge "
        f"of shard(s) {shards(present)} of {count} would replace it with less: give every "
        "part again (e.g. a quoted glob of the shards' results files), write to another OUT, "
        "or pass --force to replace it"
    )


def _refuse_inputs(
    loaded: Sequence[_Part],
    first: dict[str, Any],
    outputs: list[tuple[str, Path]],
    inputs: Sequence[Path] = (),
) -> None:
    """Even with --force, never write over the parts or the inputs they read (exit 2); paths
    are compared resolved, so a symlink to an input is refused too."""
    taken: dict[Path, str] = {p.resolve(): "an input of the merge" for p in inputs}
    if first.get("jobs_file"):
        taken[Path(first["jobs_file"]).resolve()] = "the jobs file the shards read"
    for p in loaded:
        if p.manifest.get("contexts_file"):
            taken[Path(p.manifest["contexts_file"]).resolve()] = "the contexts the shards read"
    for p in loaded:
        for kind, path in (
            ("results", p.results),
            ("latency", p.latency),
            ("summary", p.summary),
            # its sidecars too: a shard without its meta file or manifest no longer resumes
            # or merges (--force wrote the merge over them)
            ("meta file", p.results.with_name(p.results.name + ".meta.json")),
            ("manifest", manifest_path(p.results)),
            ("summary state", state_path(p.summary)),
        ):
            taken[path.resolve()] = f"the {kind} of shard {p.index}"
    for what, path in outputs:
        if path.resolve() in taken:
            raise ConfigError(
                f"merge: {what} {path} is {taken[path.resolve()]}; choose another output path"
            )


# What a failed write of the merge leaves (its full-disk message): the merge only reads them.
_LEFT = "the parts are untouched and a merge again redoes it"


def _atomic(path: Path, data: bytes) -> None:
    replace_bytes(path, data, name=f"merge into {path}", left=_LEFT)


def _write_error(path: Path, exc: OSError) -> SinkError:
    """A write of the merge that failed: a full disk is exit 75 (free space, run the same
    command again: the parts are untouched, the merge is redone), like a run's own outputs."""
    return sink_error(f"merge into {path}: cannot write: {exc.strerror or exc}", exc, left=_LEFT)


def _input_order(paths: Sequence[Path]) -> Path | None:
    """The jobs file to order the merge by: when every part ran with ``--order input`` (its
    manifest says so) and that file still holds what the shards read; else shard order."""
    manifests = [read_manifest(p) for p in paths]
    if not manifests or any(m.get("order") != "input" for m in manifests):
        return None
    jobs = unchanged_input(manifests[0])
    if jobs is None:
        print(
            f"runner: the parts ran with --order input, but {manifests[0].get('jobs_file')} is "
            "gone or changed since: merged in shard order",
            file=sys.stderr,
        )
    return jobs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # OUT/ is refused as --latency d1/ is, not written as a file named OUT (a Path drops the /)
    parser.add_argument("out", type=file_arg, help="merged results JSONL (X.results.jsonl)")
    parser.add_argument("parts", nargs="+", help="the shards' results files (or a glob)")
    parser.add_argument("-c", "--config", type=Path, help="TOML config (for prices)")
    parser.add_argument(
        "--model",
        type=model_arg,
        help="model of the records that name none, for prices (default: the parts')",
    )
    parser.add_argument("--partial", action="store_true", help="merge with shards missing")
    parser.add_argument("--force", action="store_true", help="overwrite an existing OUT")


@contextlib.contextmanager
def _locked(outputs: Sequence[Path]) -> Iterator[None]:
    """Hold the locks a run takes on these outputs: a merge by hand is refused (exit 2), even
    with ``--force``, while a run (plain or ``--workers``) writes them, instead of replacing the
    file under it (its answers then went on into the unlinked file, lost). ``--workers``' own
    merge runs under the lock its parent holds, so this is for ``runner merge`` only."""
    from .sinks import acquire_lock, release_lock

    held: list[tuple[Path, int]] = []
    try:
        for path in outputs:
            if path.parent.is_dir():  # no directory yet: nothing can be writing there
                lock = lock_of(path)
                held.append((lock, acquire_lock(lock, path)))
        yield
    finally:
        for lock, fd in reversed(held):
            release_lock(lock, fd)


def main(ns: argparse.Namespace) -> int:
    from .config import load_config
    from .pathargs import results_file

    config = load_config(ns.config)
    paths = [results_file(p, "a shard's results file") for p in expand_parts(ns.parts)]
    results_file(ns.out, "a results file (OUT)")
    # A FIFO or a device there was replaced by the merge's rename (as root, /dev/null), or
    # blocked it (a FIFO as OUT): refused, as a run refuses them.
    labels = ("OUT", "OUT's latency file", "OUT's summary")
    for label, path in zip(labels, merged_paths(ns.out), strict=True):
        check_output_file(label, path)
    model = ns.model or read_manifest(paths[0]).get("model") if paths else None

    def price_of(m: str | None) -> Price | None:
        return config.price(m or model)  # a record without a model is the parts' model's

    order_by = _input_order(paths)

    def finish(summary: dict[str, Any], _shards: Sequence[dict[str, Any] | None]) -> None:
        # The run's exit-code contract (README, exit codes): failed jobs, or shards left out
        # (--partial), exit 1; the summary records the code, as a run's does.
        shards = summary["shards"]
        incomplete = shards["missing"] or shards["unfinished"]
        summary["exit_code"] = 1 if summary["jobs"]["failed"] or incomplete else 0

    extra = [Path(p) for p in (ns.config, config.contexts) if p is not None]
    out = ns.out
    with _locked(merged_paths(out)):
        rep = merge(
            out,
            paths,
            price_of=price_of,
            partial=ns.partial,
            force=ns.force,
            order_by=order_by,
            finish=finish,
            inputs=extra,
        )
    print(render_summary(rep.summary, title="merged summary"), file=sys.stderr)
    if rep.missing or rep.unfinished:
        print(
            f"runner: merged shards {list(rep.merged)} of {rep.count}; missing {list(rep.missing)},"
            f" unfinished {list(rep.unfinished)}",
            file=sys.stderr,
        )
        return 1
    print(f"runner: merged {rep.count} shards into {rep.results}", file=sys.stderr)
    return int(rep.summary["exit_code"])
