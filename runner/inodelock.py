"""One output file under two names (hard links): a second run on it is refused.

The lock file ``R.lock`` is keyed on the output's name once symlinks are resolved
(:func:`runner.outputs.lock_of`). Two hard links to one file are two names with no link
between them to resolve: ``runner run jobs -o r.jsonl`` and, at the same time, ``runner run
jobs2 -o h.jsonl`` with ``h.jsonl`` a hard link to ``r.jsonl`` took two locks and both
appended to the one file (or the second, starting afresh, truncated the first one's results).

So a run also holds ``flock`` on the output files themselves for its whole life: the kernel
keys that lock on the file (its inode), whatever name opened it. The results and latency
files are held from the moment the outputs are opened (those that exist before anything is
touched, the others as soon as they are created); the summary when it exists at the start (it
is only ever replaced whole, by a rename, so two names of it never mix two runs' writes). A
run that finds one of its files held is refused with exit 2 before anything is touched,
naming the other run's name of the file where it is in the same directory.

The descriptors are opened read-only: taking the lock needs no write access and never changes
the file. Where the file system has no ``flock`` (some network mounts), the name's lock is
all there is, as before.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path

from .errors import ResumeError

__all__ = ["HeldFiles"]

#: errors that mean "this file system (or file) cannot be locked here": the name's lock holds
_NO_FLOCK = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.EBADF})


class HeldFiles:
    """The output files one run holds ``flock`` on, by inode; :meth:`close` releases them."""

    __slots__ = ("_fds",)

    def __init__(self) -> None:
        self._fds: dict[tuple[int, int], int] = {}

    def take(self, path: Path) -> None:
        """Hold ``flock`` on the regular file ``path`` names, if it exists (once per inode).

        :raises ResumeError: another live process holds it: the same file is an output of a
            run going on now under another name (a hard link), or under this one.
        """
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return  # not there yet, or unreadable: nothing to hold (the name's lock holds)
        try:
            st = os.fstat(fd)
            ident = (st.st_dev, st.st_ino)
            if not stat.S_ISREG(st.st_mode) or ident in self._fds:
                os.close(fd)
                return
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(path, st) from None
        except OSError as exc:
            os.close(fd)
            if exc.errno in _NO_FLOCK:
                return
            raise
        self._fds[ident] = fd

    def close(self) -> None:
        """Release every lock (closing the descriptor drops ``flock``). Idempotent."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            os.close(fd)


def _refusal(path: Path, st: os.stat_result) -> ResumeError:
    """The message of a file held by another run: its other name in the same directory (and
    the pid in that name's lock) when it can be found."""
    other = _other_name(path, st)
    if other is None:
        where = (
            f"another name of it ({st.st_nlink} names: a hard link)"
            if st.st_nlink > 1
            else "another name of it"
        )
        said = f"{path} is being written by another runner under {where}"
    else:
        said = (
            f"{path} is the same file as {other} (a hard link), which another runner is "
            f"writing{_holder(other)}"
        )
    return ResumeError(
        f"{said}: two runs would write one file; wait for it to end, or give this run "
        "outputs of its own (a copy, not a hard link)"
    )


def _other_name(path: Path, st: os.stat_result) -> Path | None:
    """A name of the file ``st`` other than ``path``, in ``path``'s directory (the common case:
    ``ln r.jsonl h.jsonl``); None when none is there (or the directory cannot be read)."""
    directory = Path(os.path.realpath(path)).parent
    own = {os.path.realpath(path), os.path.abspath(path)}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    est = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (est.st_dev, est.st_ino) == (st.st_dev, st.st_ino) and entry.path not in own:
                    return Path(entry.path)
    except OSError:
        return None
    return None


def _holder(other: Path) -> str:
    from .outputs import lock_of
    from .sinks import lock_holder

    held = lock_holder(lock_of(other))
    if held is None or held[0] is None:
        return ""
    pid, host, _ = held
    return f" (pid {pid}{f' on {host}' if host else ''})"
