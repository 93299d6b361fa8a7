"""A full disk (ENOSPC) when the output lock is claimed: the run made ``R.lock`` and could not
write its pid into it, and the empty file stayed behind (the next run took it over, but it was
litter, and looked like a lock). What the run created is removed; a lock another process
holds is left as it was."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs
from sink_helpers import full_disk

from runner.errors import SinkError
from runner.sinks import acquire_lock


@pytest.fixture
def full_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with full_disk(tmp_path, monkeypatch, fill=True) as mnt:
        yield mnt


def _made(mnt: Path) -> list[str]:
    return sorted(p.name for p in mnt.iterdir() if p.name != "filler")


def test_a_full_disk_at_the_lock_leaves_no_lock_file(
    tmp_path: Path, full_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    out = full_fs / "out.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "-o", str(out))
    assert code == 75, err
    assert "No space left on device" in err
    assert _made(full_fs) == []  # no out.results.jsonl.lock


def test_acquire_lock_removes_the_lock_it_created_when_the_claim_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lock = tmp_path / "r.jsonl.lock"

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SinkError, match="No space left on device"):
        acquire_lock(lock, tmp_path / "r.jsonl")
    assert not lock.exists()
    monkeypatch.undo()
    os.close(acquire_lock(lock, tmp_path / "r.jsonl"))  # nothing held: the next run takes it


def test_a_lock_another_process_holds_is_untouched_on_a_full_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = write_jobs(tmp_path, 3)
    with full_disk(tmp_path, monkeypatch, fill=False) as mnt:
        out = mnt / "out.results.jsonl"
        lock = mnt / "out.results.jsonl.lock"
        held = f"{os.getpid()} {socket.gethostname()}\n".encode()
        lock.write_bytes(held)
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # another runner, writing
            fill = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
            try:  # now fill the disk
                while True:
                    os.write(fill, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
            finally:
                os.close(fill)
            config = str(fast_config(tmp_path))
            code, err = cli_run(capsys, "run", str(jobs), "-c", config, "-o", str(out))
            assert code == 2, err
            assert "being written by another runner" in err
            assert lock.read_bytes() == held
            assert _made(mnt) == ["out.results.jsonl.lock"]
        finally:
            os.close(fd)


def test_a_stale_lock_taken_over_is_removed_when_the_claim_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A dead runner's lock: this run holds it under flock (no one else can), so it goes too."""
    lock = tmp_path / "r.jsonl.lock"
    lock.write_bytes(b"999999999 " + socket.gethostname().encode() + b"\n")

    def full(fd: int, data: bytes, offset: int) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "pwrite", full)
    with pytest.raises(SinkError, match="No space left on device"):
        acquire_lock(lock, tmp_path / "r.jsonl")
    assert not lock.exists()
