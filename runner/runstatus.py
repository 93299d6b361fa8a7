"""What ``runner status R`` says of any run's output, read-only: its input, whether a run holds
it now, and how the last one ended (its summary file). The batch journal of a ``--via batch``
run follows (:mod:`runner.batchapi.status`).

An operator of a scheduled run asks these first: is it still going, how much of the input is
done, did the last run succeed and why did it stop. Before, a direct run's status was its
count of result lines and "no batch journal".
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import socket
import time
from pathlib import Path
from typing import Any

import orjson

from .jobs import count_jobs, count_lines
from .merge import MERGED_SUFFIX
from .outputs import beside, lock_of, sibling
from .shards import MANIFEST_SUFFIX, MAX_SHARDS, ShardSpec, shard_path
from .sinks import lock_holder, meta_path_of, read_regular

__all__ = [
    "counted",
    "merged_lines",
    "pending_lines",
    "run_lines",
    "run_output",
    "status_code",
    "unmerged_lines",
]

#: symlinks followed from the path given to ``runner status`` before giving up (a loop)
_MAX_HOPS = 40


def run_output(path: Path) -> Path:
    """The results path of the run (or merge) that ``path`` names, as that run named it.

    A run given ``-o LINK`` names its meta file, summary and merge marker beside ``LINK`` (and
    its lock beside the file ``LINK`` names, :func:`~runner.outputs.lock_of`): ``LINK`` is its
    own answer. A symlink to another run's results (``latest.jsonl -> runs/r.jsonl``) has no
    meta file beside it: the link is followed, one hop at a time, to the first name that has
    one, the name that run was given. ``path`` itself when no name along the way has one.
    """
    seen: set[Path] = set()
    here = path
    for _ in range(_MAX_HOPS):
        if _described(here):
            return here
        if here in seen or not here.is_symlink():
            break
        seen.add(here)
        try:
            target = Path(os.readlink(here))
        except OSError:
            break
        here = target if target.is_absolute() else here.parent / target
    return path


def _described(results: Path) -> bool:
    """Whether a run's meta file or a merge's marker sits beside the name ``results``."""
    return meta_path_of(results).exists() or beside(results, MERGED_SUFFIX).exists()


def run_lines(results: Path, done: int) -> list[str]:
    """The lines after ``R: N result lines``; ``done``: those N."""
    return [_input_line(results, done), _lock_line(results), _summary_line(results)]


def merged_lines(results: Path, done: int) -> list[str] | None:
    """The same for the output of ``runner merge`` (no meta file; its marker names the
    shards merged), None when ``results`` is no merge either."""
    marker = _read_json(beside(results, MERGED_SUFFIX))
    if not isinstance(marker, dict):
        return None
    merged = marker.get("merged") or []
    return [
        f"{results}: {done:,} result lines",
        f"merged: shards {', '.join(map(str, merged))} of {marker.get('count')}",
        _lock_line(results),
        _summary_line(results),
    ]


def _read_json(path: Path) -> Any:
    try:
        return orjson.loads(read_regular(path))  # a FIFO there: no JSON, no hang
    except (OSError, orjson.JSONDecodeError):
        return None


def pending_lines(results: Path, done: int) -> list[str] | None:
    """The lines of an output whose run has not written its meta file or merge marker yet but
    holds (or, killed, left) its lock: a ``--workers`` run before its merge, whose shards
    write beside it. None when there is no lock either: not a runner output."""
    if lock_holder(lock_of(results)) is None:
        return None
    return [
        f"{results}: {done:,} result lines",
        "input: not recorded yet (a --workers run writes its shards' outputs, merged at its end)",
        _lock_line(results),
        _summary_line(results),
    ]


def _shards_beside(results: Path) -> list[tuple[int, int, Path]]:
    """``(K, N, path)`` of every shard's results file that a ``-o results`` run with
    ``--shard K/N`` (``--shard-count``, ``--shard auto``) writes beside ``results``."""
    probe = ".shard-0-of-1"
    head, _, tail = shard_path(results, ShardSpec(0, 1)).name.rpartition(probe)
    name = re.compile(rf"{re.escape(head)}\.shard-(\d+)-of-(\d+){re.escape(tail)}")
    try:
        names = os.listdir(results.parent)
    except OSError:
        return []
    found = []
    for entry in names:
        m = name.fullmatch(entry)
        # a count runner would refuse (a stray name) is no shard of it
        if m is not None and int(m.group(1)) < int(m.group(2)) <= MAX_SHARDS:
            found.append((int(m.group(1)), int(m.group(2)), results.parent / entry))
    return sorted(found)


def unmerged_lines(results: Path) -> list[str] | None:
    """The lines for the name that shards were given (``-o R`` of a Kubernetes Indexed Job or
    a Slurm array) before ``runner merge`` wrote it: each shard count's shards beside it, how
    each ended, the ones missing and the merge command. None when no shard is there."""
    found = _shards_beside(results)
    if not found:
        return None
    lines = [f"{results}: not written yet: the shards' outputs beside it are not merged"]
    said = {STATUS_DONE: "done", STATUS_NOT_DONE: "not done", STATUS_RUNNING: "running"}
    for count in sorted({n for _, n, _ in found}):
        mine = {k: status_code(p) for k, n, p in found if n == count}
        by = {word: [k for k, code in mine.items() if said[code] == word] for word in said.values()}
        states = "; ".join(f"{word} {_ranges(ks)}" for word, ks in by.items() if ks)
        if missing := _gaps(sorted(mine), count):  # not range(count): N may be millions
            states += f"{'; ' if states else ''}missing {missing}"
        lines.append(f"shards of {count}: {states}")
        glob = shard_path(results, ShardSpec(0, count)).name.replace(".shard-0-", ".shard-*-")
        lines.append(
            f"once every shard is done: runner merge {shlex.quote(str(results))} "
            f"{shlex.quote(str(results.parent / glob))} "
            f"(`runner status` of one shard's results file tells how it ended)"
        )
    return lines


def _gaps(present: list[int], count: int) -> str:
    """The indices below ``count`` not in the sorted ``present``, as :func:`_ranges` writes
    them, in time and memory of ``len(present)``."""
    out, start = [], 0
    for k in [*present, count]:
        if k > start:
            out.append(str(start) if k == start + 1 else f"{start}-{k - 1}")
        start = k + 1
    return ", ".join(out)


def _ranges(indices: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``: a missing shard list of a large array stays short."""
    runs: list[list[int]] = []
    for k in indices:
        if runs and runs[-1][1] == k - 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    out = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    return ", ".join(out)


def _older_than_results(results: Path, summary: Path) -> bool:
    """Whether the results file was written after the summary beside it was: the summary is
    of an earlier run, and the last run that wrote results wrote its own elsewhere
    (``--summary``) or never ended. Every run writes its summary after its last result."""
    try:
        return results.stat().st_mtime_ns > summary.stat().st_mtime_ns
    except OSError:
        return False


def counted(path: Path, *, jobs: bool = False) -> int:
    """``count_jobs`` (``jobs``) or ``count_lines`` of ``path``, read once per ``runner status``
    while the file stays as it was: the text's lines and its exit code ask the same files.

    :raises OSError: the file cannot be read (ValueError for an input that is no jobs file).
    """
    st = os.stat(path)
    return _counted(str(path), jobs, st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=32)
def _counted(path: str, jobs: bool, _size: int, _mtime_ns: int, _ino: int) -> int:
    return count_jobs(Path(path)) if jobs else count_lines(Path(path))


def _input_line(results: Path, done: int) -> str:
    meta = _read_json(meta_path_of(results))
    jobs = meta.get("jobs_file") if isinstance(meta, dict) else None
    if not isinstance(jobs, str):
        return "input: not recorded"
    shard = _read_json(beside(results, MANIFEST_SUFFIX))
    if isinstance(shard, dict):  # which jobs are this shard's only a run's parse tells
        return f"input: {jobs}, shard {shard.get('shard')} of {shard.get('count')}"
    try:
        total = counted(Path(jobs), jobs=True)
    except (OSError, ValueError):  # InputError is a ValueError: gone or unreadable
        return f"input: {jobs} (cannot be read from here)"
    left = max(0, total - done)
    return f"input: {jobs}, {total:,} jobs; {left:,} without a result"


def _lock_line(results: Path) -> str:
    lock = lock_of(results)  # where a run takes it: beside the file a symlink names
    held = lock_holder(lock)
    if held is None:
        return "running: no (no lock)"
    pid, host, alive = held
    who = f"pid {pid if pid is not None else 'unknown'}" + (f" on {host}" if host else "")
    try:
        # UTC, as the summary's ended_at beside it
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(lock.stat().st_mtime))
    except OSError:
        since = "?"
    if alive:
        return f"running: yes, {who}, since {since}"
    if host and host != socket.gethostname():
        return f"running: locked by {who} since {since} (another host: cannot tell from here)"
    return f"running: no; {lock} was left by {who} (not running): the next run takes it over"


def _summary_line(results: Path) -> str:
    path = sibling(results, "summary.json")
    s = _read_json(path)
    if not isinstance(s, dict) or not isinstance(s.get("jobs"), dict):
        return f"last summary: none at {path}"
    if _older_than_results(results, path):
        return (
            f"last summary: none of the last run at {path}: the results were written after it "
            "(by a run given --summary elsewhere, or one that never ended)"
        )
    jobs = s["jobs"]
    why = f" (stopped: {s['stopped']})" if s.get("stopped") else ""
    said = [f"{jobs.get('ok', 0):,} ok", f"{jobs.get('failed', 0):,} failed"]
    if s.get("not_sent"):
        said.append(f"{s['not_sent']:,} not sent")
    return (
        f"last summary: ended {s.get('ended_at', '?')}, exit {s.get('exit_code', '?')}{why}, "
        f"{', '.join(said)} ({path})"
    )


#: ``runner status``'s exit codes (README, "Commands"), for a script that asks without parsing
#: the text: 0 the last run ended with every job done; 1 it did not (failed or unsent jobs, a
#: stop, no summary saying it ended, or a lock its dead run left); 3 a run holds the output now
#: (or a run on another host does: it cannot be told from here). 2 is an output that is not a
#: runner's, or a usage error, as for every command.
STATUS_DONE, STATUS_NOT_DONE, STATUS_RUNNING = 0, 1, 3


def status_code(results: Path) -> int:
    """The exit code of ``runner status`` for ``results`` (:data:`STATUS_DONE` ...), from what
    the lines above say: the lock's holder, then the last summary. A symlink to a run's
    results is followed as the lines above follow it (:func:`run_output`)."""
    results = run_output(results)
    held = lock_holder(lock_of(results))
    if held is not None:
        _, host, alive = held
        if alive or (host and host != socket.gethostname()):
            return STATUS_RUNNING
        return STATUS_NOT_DONE  # killed while it held the output: it never ended
    if not _described(results):
        shards = _shards_beside(results)  # the shards' -o name, not merged yet: never done
        if any(status_code(path) == STATUS_RUNNING for _, _, path in shards):
            return STATUS_RUNNING
    summary = sibling(results, "summary.json")
    s = _read_json(summary)
    if not isinstance(s, dict) or not isinstance(s.get("jobs"), dict):
        return STATUS_NOT_DONE
    if _older_than_results(results, summary):  # another run's: the last one said nothing here
        return STATUS_NOT_DONE
    # A --via batch run's summary has no exit_code: its failed jobs, and the jobs of batches
    # left uncollected (pending_jobs: a batch lost, 404), say it instead.
    code = s.get("exit_code", 1 if s["jobs"].get("failed") else 0)
    batch = s.get("batch")
    batch = batch if isinstance(batch, dict) else {}
    done = code == 0 and not s.get("stopped") and not s.get("not_sent")
    if not done or batch.get("pending_jobs"):
        return STATUS_NOT_DONE
    # The summary is of the input as that run read it: jobs added to it since (or results
    # lost from R) are jobs without a result, which the "input:" line counts.
    return STATUS_NOT_DONE if _jobs_left(results) else STATUS_DONE


def _jobs_left(results: Path) -> int:
    """The input's jobs past the result lines of ``results`` (0 when that cannot be told: no
    input recorded, a shard's, or one that cannot be read from here)."""
    meta = _read_json(meta_path_of(results))
    jobs = meta.get("jobs_file") if isinstance(meta, dict) else None
    if not isinstance(jobs, str) or beside(results, MANIFEST_SUFFIX).exists():
        return 0
    try:
        return max(0, counted(Path(jobs), jobs=True) - counted(results))
    except (OSError, ValueError):
        return 0
