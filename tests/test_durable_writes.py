"""Files swapped in by rename are durable (runner.sinks.replacing): the summary, the shard
manifest, ``S.state``, the merge's results, latency, summary and marker, the metrics textfile.
Each is written beside, fsynced, renamed, and its directory fsynced, so a power loss never
leaves an empty or torn file under a name that claims completeness; a failed write keeps the
old file and leaves no temporary file."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from shard_helpers import fast_mock, query_jobs, run_shard, run_shards
from sink_helpers import full_disk

from runner.errors import DiskFull
from runner.merge import MERGED_SUFFIX, merge, merged_paths
from runner.partstate import state_path
from runner.shards import manifest_path
from runner.sinks import replace_bytes

FAST_MOCK = {"base_ms": 1.0, "decode_ms_per_token": 0.05}


@pytest.fixture(autouse=True)
def _fast_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    fast_mock(monkeypatch, FAST_MOCK)


Event = tuple[str, ...]


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[Event]:
    """Every fsync (by the path its descriptor names) and rename, in order."""
    seen: list[Event] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        seen.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        seen.append(("replace", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return seen


def assert_durable(seen: list[Event], path: Path) -> None:
    """``path`` was renamed into place from a file fsynced before, and its directory fsynced
    after the rename."""
    target = str(path.resolve())
    at = [i for i, e in enumerate(seen) if e[0] == "replace" and e[2] == os.fspath(path)]
    assert at, f"{path} was not swapped in by a rename: {seen}"
    i = at[-1]
    tmp = str(Path(seen[i][1]).resolve())
    before = [e for e in seen[:i] if e[0] == "fsync"]
    assert ("fsync", tmp) in before, f"{path}: its data was not fsynced before the rename"
    assert ("fsync", str(path.parent.resolve())) in seen[i + 1 :], (
        f"{path}: its directory was not fsynced after the rename"
    )
    assert target and not Path(tmp).exists()


def test_a_shards_summary_manifest_and_state_are_durable(
    tmp_path: Path, events: list[Event]
) -> None:
    run_shard(query_jobs(tmp_path, 12, "q {i}"), 0, 2)
    results = tmp_path / "jobs.shard-0-of-2.results.jsonl"
    summary = tmp_path / "jobs.shard-0-of-2.summary.json"
    for path in (summary, manifest_path(results), state_path(summary)):
        assert path.is_file()
        assert_durable(events, path)


def test_the_merged_outputs_and_marker_are_durable(tmp_path: Path, events: list[Event]) -> None:
    parts = run_shards(query_jobs(tmp_path, 12, "q {i}"), 2)
    events.clear()
    out = tmp_path / "all.results.jsonl"
    merge(out, parts)
    results, latency, summary = merged_paths(out)
    for path in (results, latency, summary, out.with_name(out.name + MERGED_SUFFIX)):
        assert_durable(events, path)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


# -- a failed write keeps the old file and leaves no temporary file ----------------------------


@pytest.fixture
def tiny_fs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A 64 KiB file system, too small for the new file (sink_helpers.full_disk)."""
    with full_disk(tmp_path, monkeypatch, fill=False) as mnt:
        yield mnt


def test_a_full_file_system_keeps_the_old_file_and_no_temporary_one(tiny_fs: Path) -> None:
    path = tiny_fs / "x.summary.json"
    replace_bytes(path, b'{"old": true}\n')
    with pytest.raises(DiskFull) as err:
        replace_bytes(path, b"x" * (200 << 10))  # more than the whole file system
    assert "x.summary.json: cannot write" in str(err.value)
    assert path.read_bytes() == b'{"old": true}\n'
    assert sorted(p.name for p in tiny_fs.iterdir()) == ["x.summary.json"]


def test_a_full_disk_under_the_merged_summary_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = run_shards(query_jobs(tmp_path, 12, "q {i}"), 2)
    out = tmp_path / "all.results.jsonl"
    merge(out, parts)
    summary = merged_paths(out)[2]
    old = summary.read_bytes()
    real = os.fsync

    def full(fd: int) -> None:  # the data reaches the disk only at the fsync: ENOSPC there
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".summary.json.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DiskFull):
        merge(out, parts)
    assert summary.read_bytes() == old
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
