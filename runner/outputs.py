"""Where a run writes, decided and checked before anything is opened for writing.

A run writes three files, and two sidecars of the results file ``R``:

* ``R`` (default ``JOBS.results.jsonl`` beside the jobs file; ``-o DIR`` or ``-o DIR/`` puts it
  in ``DIR`` under the jobs file's name: an existing directory, or ``config.output_is_dir``);
* the latency file and the summary, by default *next to the results file*: ``X.results.jsonl``
  gives ``X.latency.jsonl`` and ``X.summary.json`` (``X.jsonl`` gives the same), so two runs with
  different ``-o`` never share a latency file or a summary;
* ``R.meta.json`` (which input and model wrote ``R``) and ``R.lock``.

:func:`check_outputs` refuses, with a :class:`~runner.errors.ConfigError` (exit 2), any output
that resolves (after symlinks, or as a hard link) to an input (the jobs, contexts or config file)
or to another output, and any output that cannot be written (a directory, a missing or
unwritable parent). It only looks: it creates, truncates and deletes nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Final

from .config import RunConfig
from .errors import ConfigError

__all__ = [
    "OutputPlan",
    "beside",
    "check_output_file",
    "check_outputs",
    "lock_of",
    "plan_outputs",
    "run_plan",
    "sibling",
    "through_link",
]

_RESULTS_SUFFIX = ".results.jsonl"


def sibling(results: Path, kind: str) -> Path:
    """``X.results.jsonl`` (or ``X.jsonl``, or ``X``) -> ``X.<kind>`` in the same directory."""
    name = results.name
    for suffix in (_RESULTS_SUFFIX, ".jsonl"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    return results.with_name(f"{name}.{kind}")


def _results_in(directory: Path, jobs_path: Path | None) -> Path:
    stem = jobs_path.with_suffix("").name if jobs_path is not None else "jobs"
    return directory / (stem + _RESULTS_SUFFIX)


class OutputPlan:
    """The paths one run writes.

    Never compared or shown: a plain slotted class with Final fields, like
    :class:`runner.cache.Dispatch` (start-up cost).
    """

    __slots__ = ("latency", "results", "summary")

    def __init__(self, results: Path, latency: Path, summary: Path) -> None:
        self.results: Final = results
        self.latency: Final = latency
        self.summary: Final = summary

    @property
    def meta(self) -> Path:
        return beside(self.results, ".meta.json")

    @property
    def lock(self) -> Path:
        return lock_of(self.results)

    def labelled(self) -> list[tuple[str, Path]]:
        """Every path the run may create, replace or delete, with the option that names it.

        The sidecars count: opening the outputs deletes a stale ``R.tmp`` (and, starting
        afresh, ``R.pending``), takes over ``L.lock`` and ``S.lock``, and each atomic rewrite
        writes ``X.tmp`` and renames it over ``X``; an input or another output of that name
        was deleted or overwritten (``runner run out.tmp -o out`` lost its jobs file).
        """
        results, latency, summary, meta = self.results, self.latency, self.summary, self.meta
        return [
            ("the results file (-o)", results),
            ("the latency file (--latency)", latency),
            ("the summary (--summary)", summary),
            ("the meta file of the results", meta),
            ("the lock file of the results", self.lock),
            ("the lock file of the latency file", lock_of(latency)),
            ("the lock file of the summary", lock_of(summary)),
            ("the journal of held results (--order input)", beside(results, ".pending")),
            ("the temporary file of the results", beside(through_link(results), ".tmp")),
            ("the temporary file of the latency file", beside(through_link(latency), ".tmp")),
            ("the temporary file of the summary", beside(through_link(summary), ".tmp")),
            ("the temporary file of the meta file", beside(through_link(meta), ".tmp")),
        ]


def beside(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended to its name, in the same directory: an output's
    sidecar (``R.meta.json``, ``R.pending``, ``X.tmp``, ``X.lock``). The one definition of
    that naming (``sinks._sidecar`` is this function).

    Not ``with_name``: ``.`` (an empty ``--latency``) has no name, and is refused as a
    directory later; ``with_name`` raised ValueError on it before that check could run.
    """
    return path.parent / (path.name + suffix)


def through_link(path: Path) -> Path:
    """The file a rewrite of ``path`` replaces: the one it names when it is a symlink (see
    :func:`runner.sinks.replacing`), else ``path``."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def lock_of(path: Path) -> Path:
    """The lock file of the output ``path``: beside the file it names once symlinks are
    resolved, so that two runs writing one file under two names (``-o latest.jsonl``, a
    symlink to ``-o r.jsonl``) take one lock and the second is refused; a lock beside each
    name let both append every answer to the one file, and a ``--no-resume`` truncate it
    under the other."""
    return beside(Path(os.path.realpath(path)), ".lock")


def plan_outputs(config: RunConfig, jobs_path: Path | None) -> OutputPlan:
    """The results, latency and summary paths of a run (see the module docstring).

    :raises ConfigError: no output path can be derived (jobs in memory and no ``output``).
    """
    out = config.output
    if out is None:
        if jobs_path is None:
            raise ConfigError("an output path is needed when jobs are not read from a file")
        results = _results_in(jobs_path.parent, jobs_path)
    elif config.output_is_dir or out.is_dir():
        results = _results_in(out, jobs_path)
    else:
        results = out
    return OutputPlan(
        results=results,
        latency=config.latency or sibling(results, "latency.jsonl"),
        summary=config.summary or sibling(results, "summary.json"),
    )


def run_plan(
    config: RunConfig, jobs_path: Path | None, *, own_sink: bool = True
) -> OutputPlan | None:
    """The output plan of one run, computed once and passed to every step that needs it
    (checks, the batch-journal guard, explicit caches, :func:`runner.sinks.open_outputs`).

    With ``--summary -`` the plan's summary is the default file beside the results: checked
    and locked like the other outputs, though only standard output is written. ``None`` when
    the run writes no files of its own (a sink given, jobs in memory, no ``output``).

    :raises ConfigError: the run owns its outputs but no path can be derived.
    """
    if not (own_sink or jobs_path is not None or config.output is not None):
        return None
    if config.summary_to_stdout:
        config = replace(config, summary=None)
    return plan_outputs(config, jobs_path if jobs_path is not None else config.output)


def _identity(path: Path) -> tuple[str, tuple[int, int] | None]:
    """The resolved path, and (device, inode) when the file exists (catches hard links)."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError:
        return real, None
    return real, (st.st_dev, st.st_ino)


def _standard_stream(inode: tuple[int, int] | None) -> str | None:
    """Which standard stream (a regular file it is redirected to) is the file ``inode``."""
    if inode is None:
        return None
    for fd, name in ((0, "input"), (1, "output"), (2, "error")):
        try:
            st = os.fstat(fd)
        except OSError:
            continue  # closed
        if (st.st_dev, st.st_ino) == inode:
            return name
    return None


def _same(a: tuple[str, tuple[int, int] | None], b: tuple[str, tuple[int, int] | None]) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _read_only(path: Path) -> str:
    """`` (on a read-only file system)`` when that is why ``path`` cannot be written: as root,
    or with the mode bits allowing it, "not writable" sent the reader to the permissions when
    the volume was mounted read-only (a Kubernetes ``readOnly: true`` mount)."""
    try:
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return " (on a read-only file system)"
    except OSError:
        pass
    return ""


def check_output_file(label: str, path: Path) -> None:
    """ConfigError (exit 2) unless ``path`` can be written as an output: not a directory, no
    device, FIFO or socket, writable, in a directory that can take it and its temporary."""
    if path.is_dir():
        raise ConfigError(f"{label} {path} is a directory")
    if path.exists() and not path.is_file():
        # A device, FIFO or socket (/dev/null, /dev/stdout): an output is replaced by a rename
        # (the summary, a rewrite), which put a regular file in place of the device (as root,
        # --summary /dev/null replaced the system's /dev/null with the summary).
        raise ConfigError(
            f"{label} {path} is not a regular file; outputs are files runner replaces and "
            "resumes from (--summary - prints the summary on standard output)"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{label} {path} is not writable{_read_only(path)}")
    # The nearest existing ancestor must be a writable directory: the run creates the missing
    # directories, the file itself and (for replaced files) a temporary file beside it.
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{label} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = _read_only(parent).strip(" ()") or "not writable"
        raise ConfigError(f"{label} {path}: cannot create files in {parent} ({why})")


def check_outputs(
    outputs: Iterable[tuple[str, Path]], inputs: Iterable[tuple[str, Path | None]]
) -> None:
    """Refuse outputs that are inputs, coincide with each other, or cannot be written.

    :param outputs: ``(label, path)`` of every file the run writes (:meth:`OutputPlan.labelled`).
    :param inputs: ``(label, path)`` of every file the run reads (``None`` paths are skipped).
    :raises ConfigError: naming both files, before anything is opened for writing.
    """
    ins = [(label, path, _identity(path)) for label, path in inputs if path is not None]
    outs = list(outputs)
    seen: list[tuple[str, Path, tuple[str, tuple[int, int] | None]]] = []
    for label, path in outs:
        ident = _identity(path)
        for in_label, in_path, in_ident in ins:
            if _same(ident, in_ident):
                raise ConfigError(
                    f"{label} {path} is {in_label} {in_path}: refusing to overwrite an input; "
                    "choose another output path"
                )
        stream = _standard_stream(ident[1])
        if stream is not None:
            # --summary /dev/stdout with stdout sent to a file: the rename that writes the
            # summary replaced that file (the log before it lost, the lines after it written
            # to a file no name reaches any more).
            raise ConfigError(
                f"{label} {path} is standard {stream}: outputs are files runner replaces and "
                "resumes from; --summary - prints the summary on standard output"
            )
        for other_label, other_path, other_ident in seen:
            if _same(ident, other_ident):
                raise ConfigError(
                    f"{label} {path} and {other_label} {other_path} are the same file; "
                    "give each output its own path"
                )
        seen.append((label, path, ident))
    for label, path in outs:
        check_output_file(label, path)
