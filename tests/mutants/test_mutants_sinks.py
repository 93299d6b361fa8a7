"""Sinks behaviour that surviving mutants of ``runner/sinks.py`` showed untested.

Each test names the behaviour; docs/TESTING.md lists the mutants it was written against.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import orjson
import pytest
from test_sinks import open_, put

from runner.errors import ResumeError
from runner.sinks import (
    META_VERSION,
    MetaCacheJournal,
    meta_path_of,
    read_meta_section,
    write_meta_section,
)


def test_the_cache_journal_records_names_as_they_are_created_and_deleted(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    journal = MetaCacheJournal(results)
    assert journal.names() == ([], [])  # no meta file yet
    journal.record(["a", "b"], [])
    journal.record(["b", "c"], ["a"])  # b is not listed twice; a moves to deleted
    assert journal.names() == (["b", "c"], ["a"])
    journal.record([], ["c"])  # the earlier deletion of a is remembered
    assert journal.names() == (["b"], ["a", "c"])
    meta = orjson.loads(meta_path_of(results).read_bytes())
    assert meta["version"] == META_VERSION  # a journal that starts the meta file stamps it
    assert meta["caches"] == {"live": ["b"], "deleted": ["a", "c"]}


def test_the_cache_journal_keeps_the_rest_of_the_meta_file_and_the_last_deletions(
    tmp_path: Path,
) -> None:
    results = tmp_path / "r.jsonl"
    path = meta_path_of(results)
    path.write_bytes(orjson.dumps({"version": 1, "jobs": 3, "caches": "garbled"}))
    journal = MetaCacheJournal(results)
    assert journal.names() == ([], [])  # a garbled section reads as empty, not as a crash
    journal.record(["x"], [])
    assert orjson.loads(path.read_bytes()) == {
        "version": 1,
        "jobs": 3,
        "caches": {"live": ["x"], "deleted": []},
    }
    journal.record([], [f"n{i}" for i in range(1005)])
    live, deleted = journal.names()
    assert live == ["x"]
    assert deleted == [f"n{i}" for i in range(5, 1005)]  # the newest thousand
    path.write_bytes(orjson.dumps({"caches": {"live": ["y", 7], "deleted": None}}))
    assert journal.names() == (["y"], [])  # entries that are not names are skipped


def test_meta_sections_round_trip_and_the_runs_own_keys_are_refused(tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    meta_path_of(results).write_bytes(orjson.dumps({"version": META_VERSION, "jobs": 2}))
    assert read_meta_section(results, "batch") is None
    write_meta_section(results, "batch", {"id": "b1"})
    assert read_meta_section(results, "batch") == {"id": "b1"}
    assert read_meta_section(results, "jobs") == 2  # untouched
    for key in ("jobs_file", "jobs", "contexts", "model", "version"):
        with pytest.raises(ValueError, match="not a free section"):
            write_meta_section(results, key, 1)
    assert read_meta_section(tmp_path / "other.jsonl", "batch") is None  # no meta file


def test_a_lock_held_from_another_host_names_that_host(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    lock = output.with_name("r.jsonl.lock")
    lock.write_text("4242 some-other-host\n")
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a live holder, as far as flock says
        with pytest.raises(ResumeError, match=r"another runner \(pid 4242 on some-other-host\)"):
            open_(jobs, output=output)
    finally:
        os.close(fd)


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(f'{{"custom_id": "j{i}", "query": "q"}}\n' for i in range(3)))
    return path


def test_resume_refuses_results_whose_latency_file_is_missing(jobs: Path, tmp_path: Path) -> None:
    output, latency = tmp_path / "r.jsonl", tmp_path / "r.latency.jsonl"
    with open_(jobs, output=output, latency=latency) as out:
        put(out, "j0")
    latency.unlink()
    with pytest.raises(ResumeError, match=r"missing, but .* holds results"):
        open_(jobs, output=output, latency=latency)
    output.write_bytes(b'{"custom_id": "j0", "resp')  # only a torn first line: no result yet
    with open_(jobs, output=output, latency=latency) as out:
        assert not out.done("j0")


def test_resume_keeps_results_of_the_same_contexts_and_names_a_new_one(
    jobs: Path, tmp_path: Path
) -> None:
    ctx = tmp_path / "c.jsonl"
    ctx.write_text('{"cache_id": "c", "system": "S"}\n')
    output = tmp_path / "r.jsonl"
    with open_(jobs, output=output, contexts=ctx) as out:
        put(out, "j0")
    with open_(jobs, output=output, contexts=ctx) as out:
        assert out.done("j0")  # unchanged contexts: the answer stands
    plain = tmp_path / "p.jsonl"
    with open_(jobs, output=plain) as out:
        put(out, "j0")
    with pytest.raises(ResumeError, match="had no contexts file and this one has;"):
        open_(jobs, output=plain, contexts=ctx)


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        (b"{torn", "is not readable"),
        (b'{"version": 1}', "written by an older runner"),
        (b'{"version": 99}', "is not readable"),
    ],
)
def test_resume_refuses_a_meta_file_it_cannot_trust(
    jobs: Path, tmp_path: Path, meta: bytes, problem: str
) -> None:
    output = tmp_path / "r.jsonl"
    with open_(jobs, output=output) as out:
        put(out, "j0")
    meta_path_of(output).write_bytes(meta)
    with pytest.raises(ResumeError, match=problem):
        open_(jobs, output=output)
    assert output.read_bytes().count(b"\n") == 1  # the results are left as they were
