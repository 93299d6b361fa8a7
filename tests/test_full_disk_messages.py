"""What a failed write or read says: a full disk before any result of the run was written
does not claim "the results already written are whole lines", and a read that fails during a
merge is a read of the file it names, not "cannot write"."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config, write_jobs
from sink_helpers import full_disk

from runner.cli import main
from runner.errors import InputError
from runner.merge import merge
from runner.shards import manifest_path

WHOLE = "results already written are whole lines"
NOTHING = "no result of this run was written yet"
UNREADABLE = Path("/proc/self/mem")  # opens, and reading it at offset 0 is EIO: a real fault


@pytest.fixture
def full_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A file system with no block left (sink_helpers.full_disk)."""
    with full_disk(tmp_path, monkeypatch, fill=True) as mnt:
        yield mnt


def test_a_full_disk_at_the_lock_says_nothing_was_written(
    tmp_path: Path, full_fs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    out = full_fs / "out.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "-o", str(out))
    assert code == 75, err
    assert "No space left on device" in err and NOTHING in err, err
    assert WHOLE not in err, err
    assert not out.exists() or out.stat().st_size == 0


def test_a_full_disk_at_the_first_results_write_says_nothing_was_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 5)
    results = tmp_path / "jobs.results.jsonl"
    real = os.write

    def full(fd: int, data: bytes | memoryview) -> int:
        if results.exists() and os.path.samestat(os.fstat(fd), results.stat()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    monkeypatch.setattr(os, "write", real)
    assert code == 75, err
    assert "jobs.results.jsonl: cannot write" in err and NOTHING in err, err
    assert WHOLE not in err, err
    assert results.read_bytes() == b""


# -- a read that fails during an --order input merge -------------------------------------------


def _shards(d: Path) -> tuple[Path, list[Path]]:
    jobs = d / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"j{i}", "query": f"q{i}"}) + b"\n" for i in range(8))
    )
    cfg = fast_config(d)
    for k in range(2):
        args = ["run", str(jobs), "-c", str(cfg), "--order", "input", "--shard", f"{k}/2"]
        assert main(args) == 0
    return jobs, [d / f"jobs.shard-{k}-of-2.results.jsonl" for k in range(2)]


def test_an_unreadable_jobs_file_in_an_input_order_merge_is_a_read_error(tmp_path: Path) -> None:
    _, parts = _shards(tmp_path)
    out = tmp_path / "all.results.jsonl"
    with pytest.raises(InputError) as err:
        merge(out, parts, order_by=UNREADABLE)
    assert str(err.value).startswith(f"{UNREADABLE}: cannot read: "), err.value
    assert "write" not in str(err.value)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_an_unreadable_part_in_an_input_order_merge_is_a_read_error(tmp_path: Path) -> None:
    jobs, parts = _shards(tmp_path)
    # shard 1's results become a file that opens but fails to read (its manifest still says
    # what the shard wrote, so the merge gets as far as reading it)
    bad = tmp_path / "bad" / parts[1].name
    bad.parent.mkdir()
    for sidecar in tmp_path.glob("jobs.shard-1-of-2.*"):
        if sidecar != parts[1]:
            shutil.copy(sidecar, bad.parent / sidecar.name)
    bad.symlink_to(UNREADABLE)
    assert manifest_path(bad).is_file()
    out = tmp_path / "all.results.jsonl"
    with pytest.raises(InputError) as err:
        merge(out, [parts[0], bad], order_by=jobs)
    assert str(err.value).startswith(f"{bad}: cannot read: "), err.value
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
