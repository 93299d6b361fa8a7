"""Set-up shared by the tests that drive the sinks directly (no engine)."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from runner.sinks import Outputs


def ten_jobs(tmp: Path) -> Path:
    """``jobs.jsonl`` in ``tmp`` with ids j1..j10."""
    path = tmp / "jobs.jsonl"
    path.write_text("".join(f'{{"id": "j{i}", "query": "q"}}\n' for i in range(1, 11)))
    return path


def crash(out: Outputs) -> None:
    """What kill -9 does to an open run: the descriptors close, nothing else happens."""
    for fd in out._fds:
        os.close(fd)
    for _, fd in out._extra_locks:
        os.close(fd)
    if out._pend_fd >= 0:
        os.close(out._pend_fd)
    out._held.close()  # the flocks on the output files themselves (runner/inodelock.py)


@contextmanager
def full_disk(where: Path, monkeypatch: pytest.MonkeyPatch, *, fill: bool) -> Iterator[Path]:
    """A directory ``where/full`` whose writes meet ENOSPC: a real 64 KiB tmpfs (filled to its
    last block when ``fill``) where this process may mount one (root: CI); elsewhere the same
    errno, raised by ``os.write``, ``os.pwrite``, ``os.ftruncate`` and ``os.fsync`` for files
    under it (buffered data reaches the disk at the fsync), so the test runs everywhere."""
    mnt = where / "full"
    mnt.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]
    if subprocess.run(mount, capture_output=True).returncode == 0:
        try:
            if fill:
                fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
                try:
                    while True:
                        os.write(fd, b"\0" * 4096)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                finally:
                    os.close(fd)
            yield mnt
        finally:
            subprocess.run(["umount", str(mnt)], check=True)
        return
    inside = str(mnt) + os.sep
    room = 0 if fill else 64 << 10  # bytes a file under it may hold

    def over(fd: int, size: int) -> None:
        if size > room and os.readlink(f"/proc/self/fd/{fd}").startswith(inside):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    real_write, real_pwrite = os.write, os.pwrite
    real_truncate, real_fsync = os.ftruncate, os.fsync

    def write(fd: int, data: Any) -> int:
        over(fd, os.fstat(fd).st_size + len(data))
        return real_write(fd, data)

    def pwrite(fd: int, data: Any, offset: int) -> int:
        over(fd, offset + len(data))
        return real_pwrite(fd, data, offset)

    def ftruncate(fd: int, length: int) -> None:
        over(fd, length)
        real_truncate(fd, length)

    def fsync(fd: int) -> None:  # buffered writes reach the disk here
        over(fd, os.fstat(fd).st_size)
        real_fsync(fd)

    with monkeypatch.context() as m:
        for name, fn in (("write", write), ("pwrite", pwrite), ("ftruncate", ftruncate)):
            m.setattr(os, name, fn)
        m.setattr(os, "fsync", fsync)
        yield mnt
