"""``--order input`` holds after a resume and after ``--retry-failed``.

A resumed run writes only the jobs that had no result (or, with ``--retry-failed``, a transient
error): they land after the lines already in ``R``. Under ``--order input`` the run then puts
``R`` back in input order when it closes, by an atomic rewrite (temporary file, fsync, rename);
a ``kill -9`` at any point of it leaves every good result exactly once, and the next run sorts.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import mock_config, mock_process, runner
from hypothesis import given, settings
from hypothesis import strategies as st
from sink_helpers import crash, ten_jobs

from runner.api import run
from runner.config import RunConfig
from runner.mock import MockConfig, serve
from runner.models import LatencyRecord
from runner.results import ResultLine
from runner.sinks import Outputs, open_outputs

PY = sys.executable


def write_jobs(tmp: Path, n: int) -> Path:
    jobs = tmp / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(
            orjson.dumps({"id": f"q{i}", "query": f"question {i}?", "params": {"max_tokens": 4}})
            + b"\n"
            for i in range(n)
        )
    )
    return jobs


def rows(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def key(row: dict[str, Any]) -> Any:
    return row["custom_id"] if row["custom_id"] is not None else row["line"]


def ids(path: Path) -> list[Any]:
    return [key(r) for r in rows(path)]


def config(tmp: Path, url: str, **kw: Any) -> RunConfig:
    return mock_config(tmp, url, **{"concurrency": 16, "order": "input", **kw})


async def test_retry_failed_keeps_input_order(tmp_path: Path) -> None:
    """The user's report: failures spread over the file, retried, must come back in place."""
    n = 80
    jobs = write_jobs(tmp_path, n)
    want = [f"q{i}" for i in range(n)]
    async with serve(MockConfig(latency="zero", fault_http_503=0.3, seed=4)) as url:
        first = await run(jobs, config(tmp_path, url, max_attempts=1))
    failed = [r["custom_id"] for r in rows(tmp_path / "r.jsonl") if r["error"]]
    assert first.exit_code == 1 and len(failed) >= 5
    assert ids(tmp_path / "r.jsonl") == want
    # Still flaky: some retried jobs fail again and a third run retries those.
    async with serve(MockConfig(latency="zero", fault_http_503=0.3, seed=9)) as url:
        await run(jobs, config(tmp_path, url, max_attempts=1, retry_failed=True))
    assert ids(tmp_path / "r.jsonl") == want
    async with serve(MockConfig(latency="zero")) as url:
        last = await run(jobs, config(tmp_path, url, retry_failed=True))
    assert last.exit_code == 0
    assert ids(tmp_path / "r.jsonl") == want  # every id once, in input order
    # sorted before the summary was written: a summary older than R means an unfinished run
    assert (tmp_path / "s.json").stat().st_mtime_ns >= (tmp_path / "r.jsonl").stat().st_mtime_ns
    assert all(r["error"] is None for r in rows(tmp_path / "r.jsonl"))
    assert sorted(ids(tmp_path / "l.jsonl")) == sorted(want)  # one latency record per result
    left = {"jobs.jsonl", "l.jsonl", "r.jsonl", "r.jsonl.meta.json", "s.json"}
    assert set(os.listdir(tmp_path)) == left  # no R.tmp, R.pending or lock is left


# -- the sink alone ---------------------------------------------------------------------------


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    return ten_jobs(tmp_path)


def open_(jobs: Path, **config: Any) -> Outputs:
    cfg = RunConfig(**{"order": "input", **config})
    return open_outputs(cfg, jobs_path=jobs, model="m", flush_every=1, fsync=False)


def put(out: Outputs, cid: str | None, line: int, code: str | None = None) -> None:
    res = ResultLine("x", cid, line, error_code=code, error_message=None if code is None else "m")
    out.sink.write(res, LatencyRecord(custom_id=cid, error_code=code))


def feed(
    out: Outputs,
    lines: range,
    *,
    fail: frozenset[int] = frozenset(),
    bad: frozenset[int] = frozenset(),
    stall: frozenset[int] = frozenset(),
) -> list[int]:
    """Ask for every line in order, as the engine does; answer those not done, in reverse (as
    when a slow first job holds the rest), except the ``stall`` ones; return the lines sent.
    ``fail`` lines get a transient error, ``bad`` ones are line-keyed invalid input."""
    sent = []
    for line in lines:
        key: str | int = line if line in bad else f"j{line}"
        if not out.sink.done(key):
            sent.append(line)
    for line in reversed(sent):
        if line in stall:
            continue
        cid = None if line in bad else f"j{line}"
        code = "invalid_input" if line in bad else ("timeout" if line in fail else None)
        put(out, cid, line, code)
    return sent


BAD = frozenset({5})
ALL: list[Any] = [f"j{i}" if i not in BAD else i for i in range(1, 11)]


def test_retry_failed_puts_retried_lines_in_place(jobs: Path) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({1, 3, 10}), bad=BAD)
    assert ids(out.results_path) == ALL
    with open_(jobs, retry_failed=True) as again:
        assert feed(again, range(1, 11), fail=frozenset({3}), bad=BAD) == [1, 3, 10]
    assert ids(again.results_path) == ALL
    with open_(jobs, retry_failed=True) as third:
        assert feed(third, range(1, 11), bad=BAD) == [3]
    assert ids(third.results_path) == ALL
    assert [r["error"] for r in rows(third.results_path)].count(None) == 9  # all but the bad line
    assert sorted(ids(third.latency_path), key=str) == sorted(ALL, key=str)


def test_resume_after_a_stop_fills_the_holes_in_place(jobs: Path) -> None:
    with open_(jobs) as out:  # j1 and j4 never ended (a stop): the rest is written at close
        feed(out, range(1, 8), stall=frozenset({1, 4}), bad=BAD)
    assert ids(out.results_path) == ["j2", "j3", 5, "j6", "j7"]
    with open_(jobs) as again:
        assert feed(again, range(1, 11), bad=BAD) == [1, 4, 8, 9, 10]
    assert ids(again.results_path) == ALL


def test_a_retried_result_held_behind_a_stalled_one_is_put_in_place(jobs: Path) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({2, 4}), bad=BAD)
    with open_(jobs, retry_failed=True) as again:  # j2 never ends: j4 waits for it till close
        assert feed(again, range(1, 11), bad=BAD, stall=frozenset({2})) == [2, 4]
    assert ids(again.results_path) == [x for x in ALL if x != "j2"]


def test_a_held_failure_dropped_by_retry_failed_does_not_come_back(jobs: Path) -> None:
    """A transient failure held in R.pending is dropped by --retry-failed (and its latency
    record with it): it must leave the journal too, or a later plain resume takes it back as
    a result without a latency record."""
    out = open_(jobs)
    feed(out, range(1, 4), fail=frozenset({3}), stall=frozenset({1}))  # j2, j3 held behind j1
    crash(out)
    again = open_(jobs, retry_failed=True)  # drops j3 (to run again), keeps j2; reads nothing
    crash(again)
    with open_(jobs) as third:
        assert feed(third, range(1, 11), bad=BAD) == [1, 3, 4, 5, 6, 7, 8, 9, 10]
    assert ids(third.results_path) == ALL
    assert sorted(ids(third.latency_path), key=str) == sorted(ALL, key=str)
    assert all(r["error"] is None for r in rows(third.results_path) if r["custom_id"])


def test_a_resume_cut_before_the_sort_is_sorted_by_the_next_run(jobs: Path) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({2, 8}), bad=BAD)
    again = open_(jobs, retry_failed=True)
    feed(again, range(1, 11), bad=BAD)
    again.flush()
    crash(again)  # kill -9 after the retried answers were written, before the run ended
    assert sorted(ids(jobs.parent / "jobs.results.jsonl"), key=str) == sorted(ALL, key=str)
    assert ids(jobs.parent / "jobs.results.jsonl") != ALL
    stale = jobs.parent / "jobs.results.jsonl.tmp"
    stale.write_bytes(b'{"id": "x", "custom_id": "j1"')  # as a kill -9 mid-rewrite leaves it
    with open_(jobs) as third:
        assert not stale.exists()
        assert feed(third, range(1, 11), bad=BAD) == []  # nothing is sent again
    assert ids(third.results_path) == ALL
    assert sorted(ids(third.latency_path), key=str) == sorted(ALL, key=str)


def test_a_stopped_resume_keeps_the_lines_it_did_not_read_after_those_it_did(
    jobs: Path,
) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({2, 9}), bad=BAD)
    with open_(jobs, retry_failed=True) as again:
        assert feed(again, range(1, 6), bad=BAD) == [2]  # stopped after reading line 5
    assert ids(again.results_path) == ["j1", "j2", "j3", "j4", 5, "j6", "j7", "j8", "j10"]
    with open_(jobs, retry_failed=True) as third:
        assert feed(third, range(1, 11), bad=BAD) == [9]
    assert ids(third.results_path) == ALL


def test_an_ordered_resume_does_not_rewrite_the_results(jobs: Path) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 7), bad=BAD)
    inode = out.results_path.stat().st_ino
    with open_(jobs) as again:  # appends j7..j10 after j1..j6: already in order
        assert feed(again, range(1, 11), bad=BAD) == [7, 8, 9, 10]
    assert ids(again.results_path) == ALL
    assert again.results_path.stat().st_ino == inode
    with open_(jobs) as stopped:  # reads lines 1-3 only: the lines it did not read stay after
        assert feed(stopped, range(1, 4), bad=BAD) == []
    assert ids(stopped.results_path) == ALL
    assert stopped.results_path.stat().st_ino == inode


def test_a_result_written_after_the_sort_is_kept(jobs: Path) -> None:
    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({3}), bad=BAD)
    again = open_(jobs, retry_failed=True)
    feed(again, range(1, 11), bad=BAD)
    again.finish()  # sorts R: the file the run appends to is replaced
    assert ids(again.results_path) == ALL
    assert not again.sink.done("j11")
    put(again, "j11", 11)
    again.close()
    assert ids(again.results_path) == [*ALL, "j11"]


def test_results_in_completion_order_are_sorted_by_an_input_order_resume(jobs: Path) -> None:
    with open_(jobs, order="completion") as out:
        feed(out, range(1, 11), fail=frozenset({4}), bad=BAD)
    assert ids(out.results_path) == ALL[::-1]
    with open_(jobs, retry_failed=True) as again:
        assert feed(again, range(1, 11), bad=BAD) == [4]
    assert ids(again.results_path) == ALL


@pytest.mark.parametrize("when", ["before-rename", "after-rename"])
def test_a_failed_rewrite_leaves_the_results_whole(
    jobs: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    from runner import sinks
    from runner.errors import SinkError

    with open_(jobs) as out:
        feed(out, range(1, 11), fail=frozenset({1}), bad=BAD)
    before = sorted(ids(out.results_path), key=str)
    again = open_(jobs, retry_failed=True)
    real = sinks._replace

    def full(path: Path, fill: Any) -> None:
        def half(tmp: Any) -> None:  # the disk fills up half way through the temporary file
            tmp.write(b'{"id": "x", "custom_id": "j')
            raise OSError(errno.ENOSPC, "No space left on device")

        real(path, half)

    def eio(path: Path) -> None:  # R is replaced, then syncing its directory fails
        raise OSError(errno.EIO, "Input/output error")

    if when == "before-rename":
        monkeypatch.setattr(sinks, "_replace", full)
    else:
        monkeypatch.setattr(sinks, "_fsync_dir", eio)
    feed(again, range(1, 11), bad=BAD)
    with pytest.raises(SinkError, match=r"No space left|Input/output"):
        again.finish()
    put(again, "j11", 11)  # (the engine writes nothing more; a write must still not be lost)
    again.close()  # the sort is not tried twice: close flushes, syncs and unlocks
    got = ids(out.results_path)
    assert sorted(got, key=str) == sorted([*before, "j11"], key=str)  # every line once
    assert (got == [*ALL, "j11"]) == (when == "after-rename")
    assert not (jobs.parent / "jobs.results.jsonl.tmp").exists()
    monkeypatch.undo()
    with open_(jobs) as third:
        assert feed(third, range(1, 12), bad=BAD) == []
    assert ids(third.results_path) == [*ALL, "j11"]


# -- kill -9 during the rewrite ---------------------------------------------------------------

# Runs the CLI with the end-of-run sort of R cut by SIGKILL at one point: half way through
# writing any file named after R (the temporary file, or R itself were it rewritten in place),
# after that file is written but before a rename, or right after the rename.
KILL_AT = textwrap.dedent(
    """
    import builtins, os, signal, sys
    from runner import sinks
    from runner.cli import main

    point, results = sys.argv[1], sys.argv[2]
    real_open, real_rename = builtins.open, os.replace

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    class Half:
        def __init__(self, f):
            self.f, self.buf = f, bytearray()
        def write(self, data):
            self.buf += data
            return len(data)
        def writelines(self, lines):
            for x in lines:
                self.write(x)
        def flush(self):
            self.f.write(self.buf[: len(self.buf) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            die()
        fileno = close = flush
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.flush()

    def open_(file, mode="r", *a, **kw):
        f = real_open(file, mode, *a, **kw)
        if "w" in mode and os.path.basename(str(file)).startswith(results):
            return Half(f)
        return f

    def finish(self):
        if point == "mid-write":
            builtins.open = open_
        elif point == "before-rename":
            os.replace = lambda a, b: die()
        else:
            os.replace = lambda a, b: (real_rename(a, b), die())
        real_finish(self)

    real_finish = sinks.Outputs.finish
    sinks.Outputs.finish = finish
    sys.exit(main(sys.argv[3:]))
    """
)


def served(url: str) -> int:
    root = url.rsplit("/v1", 1)[0]
    return int(orjson.loads(urllib.request.urlopen(root + "/stats").read())["requests"])


@pytest.mark.parametrize("point", ["mid-write", "before-rename", "after-rename"])
def test_kill_9_during_the_sort_loses_and_duplicates_nothing(tmp_path: Path, point: str) -> None:
    n = 60
    jobs = write_jobs(tmp_path, n)
    want = [f"q{i}" for i in range(n)]
    res, lat = tmp_path / "jobs.results.jsonl", tmp_path / "jobs.latency.jsonl"

    def args(url: str, *extra: str) -> list[str]:
        return [
            "run", str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
            "--progress", "off", "--order", "input", *extra,
        ]  # fmt: skip

    with mock_process("--latency", "zero", "--fault-http-503", "0.3", "--seed", "4") as url:
        first = runner(*args(url, "--max-attempts", "1"))
    assert first.returncode == 1, first.stderr
    good = {x for x in res.read_bytes().splitlines() if orjson.loads(x)["error"] is None}
    assert 0 < len(good) < n
    with mock_process("--latency", "zero") as url:
        killed = subprocess.run(
            [PY, "-c", KILL_AT, point, res.name, *args(url, "--retry-failed")], capture_output=True
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
        # Whatever the point: every job's result once, the good ones as they were, and one
        # latency record for each.
        assert sorted(ids(res)) == sorted(want)
        assert good <= set(res.read_bytes().splitlines())
        assert sorted(ids(lat)) == sorted(want)
        assert (ids(res) == want) == (point == "after-rename")
        assert (tmp_path / "jobs.results.jsonl.tmp").exists() == (point != "after-rename")
        sent = served(url)
        again = runner(*args(url))  # a plain resume
        assert again.returncode == 0, again.stderr
        assert served(url) == sent  # nothing was sent again
    assert ids(res) == want
    assert sorted(ids(lat)) == sorted(want)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.pending"))


# -- runner merge by hand -----------------------------------------------------------------------


@pytest.mark.parametrize("how", ["input", "completion", "input, jobs file edited"])
def test_merge_by_hand_keeps_the_order_the_shards_ran_with(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.cli import main

    n = 40
    jobs = write_jobs(tmp_path, n)
    order = how.split(",")[0]
    with mock_process("--latency", "zero") as url:
        for k in range(2):
            args = ["run", str(jobs), "--provider", "openai", "--base-url", url]
            args += ["--model", "mock-1", "--progress", "off", "--order", order]
            assert main([*args, "--shard", f"{k}/2"]) == 0
    parts = [tmp_path / f"jobs.shard-{k}-of-2.results.jsonl" for k in range(2)]
    by_part = ids(parts[0]) + ids(parts[1])
    assert by_part != [f"q{i}" for i in range(n)]  # the shards interleave in the input
    if how.endswith("edited"):
        with jobs.open("ab") as fh:  # not the input the shards read any more
            fh.write(b'{"id": "late", "query": "q"}\n')
    out = tmp_path / "all.results.jsonl"
    capsys.readouterr()
    assert main(["merge", str(out), *map(str, parts)]) == 0
    err = capsys.readouterr().err
    if how == "input":
        assert ids(out) == [f"q{i}" for i in range(n)]
    else:
        assert ids(out) == by_part  # shard order
    assert ("--order input" in err) == how.endswith("edited"), err


def test_workers_retry_failed_keeps_input_order(tmp_path: Path) -> None:
    """Each worker's shard is sorted when it ends, so the merge can interleave the shards."""
    n = 60
    jobs = write_jobs(tmp_path, n)
    want = [f"q{i}" for i in range(n)]
    res = tmp_path / "jobs.results.jsonl"

    def args(url: str, *extra: str) -> list[str]:
        return [
            "run", str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
            "--progress", "off", "--order", "input", "--workers", "2", *extra,
        ]  # fmt: skip

    with mock_process("--latency", "zero", "--fault-http-503", "0.3", "--seed", "4") as url:
        first = runner(*args(url, "--max-attempts", "1"))
    assert first.returncode == 1, first.stderr
    assert ids(res) == want
    with mock_process("--latency", "zero") as url:
        again = runner(*args(url, "--retry-failed"))
    assert again.returncode == 0, again.stderr
    assert ids(res) == want
    assert all(r["error"] is None for r in rows(res))
    assert sorted(ids(tmp_path / "jobs.latency.jsonl")) == sorted(want)


# -- any sequence of runs -------------------------------------------------------------------

run_plans = st.lists(
    st.tuples(
        st.integers(0, 10),  # lines read before the run stops
        st.randoms(use_true_random=False),  # which jobs fail, stall, and the order they end in
        st.booleans(),  # --retry-failed
        st.booleans(),  # the run is killed (after its last flush) instead of closing
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(plans=run_plans)
def test_any_sequence_of_runs_ends_in_input_order_with_every_id_once(plans: list[Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        jobs = Path(tmp) / "jobs.jsonl"
        jobs.write_text("".join(f'{{"id": "j{i}", "query": "q"}}\n' for i in range(1, 11)))
        for stop, rnd, retry, kill in plans:
            out = open_(jobs, retry_failed=retry)
            sent = [i for i in range(1, stop + 1) if not out.sink.done(i if i in BAD else f"j{i}")]
            rnd.shuffle(sent)
            for line in sent:
                if rnd.random() < 0.2:
                    continue  # never ends: the run stops with it in flight
                code = rnd.choice([None, None, "timeout", "http_4xx"])
                put(out, None if line in BAD else f"j{line}", line, code)
            if kill:
                out.flush()
                crash(out)
            else:
                out.close()
            got = ids(out.results_path)
            pending = out.results_path.with_name(out.results_path.name + ".pending")
            held = [] if not pending.exists() else pending.read_bytes().splitlines()
            assert len(got) == len(set(got))  # never a result twice
            # R.pending may repeat lines already released into R: the next run skips those
            journal = {key(orjson.loads(raw.partition(b" ")[2])) for raw in held}
            on_disk = got + sorted(journal - set(got), key=str)
            assert sorted(ids(out.latency_path), key=str) == sorted(on_disk, key=str)
            if not kill:
                # The lines the run read come first, in input order; those it did not read
                # (it stopped) follow as they were, for the next run that reads them to sort.
                order = [x if isinstance(x, int) else int(x[1:]) for x in got]
                read = sorted(x for x in order if x <= stop)
                assert order[: len(read)] == read
                assert stop < 10 or order == read
        with open_(jobs, retry_failed=True) as last:
            feed(last, range(1, 11), bad=BAD)
        assert ids(last.results_path) == ALL
        assert sorted(ids(last.latency_path), key=str) == sorted(ALL, key=str)


@settings(max_examples=300, deadline=None)
@given(
    rid=st.text(max_size=8) | st.sampled_from(['x","custom_id":"y', "a\\", 'q"']),
    cid=st.none() | st.text(max_size=8) | st.sampled_from(['y"', "b\\", '","line":1']),
    line=st.integers(1, 10**6),
)
def test_line_key_reads_what_parsing_reads(rid: str, cid: str | None, line: int) -> None:
    """The sort reads each line's key from its bytes when it can: the same key as a parse,
    whatever the ids hold (quotes, backslashes, the text of the next field)."""
    from runner.results import line_key

    raw = ResultLine(rid, cid, line, 200, None, {"x": cid}).to_json()
    assert line_key(raw) == (cid if cid is not None else line)
    other = orjson.dumps({"custom_id": cid, "id": rid, "line": line})  # another writer's order
    assert line_key(other) == (cid if cid is not None else line)
    assert line_key(b"{not json}\n") is None and line_key(b"[1]\n") is None
