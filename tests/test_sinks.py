"""Tests of the results and latency writers: batching, resume, repair, metadata, lock, ordering."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import runner.sinks as sinks
from runner.config import RunConfig
from runner.errors import ConfigError, ResumeError, SinkError
from runner.models import LatencyRecord
from runner.results import ResultLine
from runner.sinks import Outputs, default_paths, open_outputs, write_summary

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def jobs(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.jsonl"
    path.write_text("".join(f'{{"custom_id": "j{i}", "query": "q"}}\n' for i in range(10)))
    return path


def result(cid: str, code: str | None = None, line: int = 0) -> ResultLine:
    if code is not None:
        return ResultLine(f"batch_req_{cid}", cid, line, error_code=code, error_message="m")
    return ResultLine(f"batch_req_{cid}", cid, line, 200, None, orjson.Fragment(b'{"raw":1}'))


def put(out: Outputs, cid: str, line: int = 0, code: str | None = None) -> None:
    out.sink.write(result(cid, code, line), LatencyRecord(custom_id=cid, error_code=code))


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), "partial last line"
    return [orjson.loads(raw) for raw in data.splitlines()]


def ids(path: Path) -> list[str]:
    return [obj["custom_id"] for obj in lines(path)]


def open_(jobs: Path, model: str = "m", **config: Any) -> Outputs:
    return open_outputs(RunConfig(**config), jobs_path=jobs, model=model, fsync=False)


def run_to_end(jobs: Path, cids: list[str], **config: Any) -> Outputs:
    with open_(jobs, **config) as out:
        for i, cid in enumerate(cids, 1):
            if not out.done(cid):
                put(out, cid, i)
    return out


def child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python process running ``code`` against this checkout."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def dead_pid() -> int:
    """The pid of a child already reaped (pids are not reused that soon)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- paths and plain writing ----------------------------------------------------------------


def test_default_paths_sit_beside_the_jobs_file() -> None:
    got = default_paths(Path("examples/jobs.jsonl"), RunConfig())
    assert got == (
        Path("examples/jobs.results.jsonl"),
        Path("examples/jobs.latency.jsonl"),
        Path("examples/jobs.summary.json"),
    )


def test_default_paths_honour_the_config() -> None:
    config = RunConfig(output=Path("r.jsonl"), latency=Path("l.jsonl"), summary=Path("s.json"))
    assert default_paths(Path("jobs.jsonl"), config) == (
        Path("r.jsonl"),
        Path("l.jsonl"),
        Path("s.json"),
    )


def test_writes_valid_jsonl_with_raw_bodies_and_lean_latency(jobs: Path) -> None:
    with open_(jobs) as out:
        put(out, "j0")
        out.write(result("j1", line=2), LatencyRecord(custom_id="j1", itl_ms=[1.5, 2.0]))
    res = lines(out.results_path)
    assert [r["custom_id"] for r in res] == ["j0", "j1"]
    assert res[0]["response"]["body"] == {"raw": 1}
    lat = lines(out.latency_path)
    assert "itl_ms" not in lat[0]
    assert lat[1]["itl_ms"] == [1.5, 2.0]
    assert list(lat[0]) == list(LatencyRecord.__dataclass_fields__)[:-1]
    assert not out.lock_path.exists()


def test_flushes_in_batches_of_flush_every(jobs: Path) -> None:
    out = open_outputs(RunConfig(), jobs_path=jobs, model="m", flush_every=3, fsync=False)
    with out:
        put(out, "j0")
        put(out, "j1")
        assert out.results_path.read_bytes() == b""
        assert out.latency_path.read_bytes() == b""
        put(out, "j2")
        assert ids(out.results_path) == ["j0", "j1", "j2"]
        assert ids(out.latency_path) == ["j0", "j1", "j2"]
        put(out, "j3")
        assert len(ids(out.results_path)) == 3
        out.flush()
        assert ids(out.results_path) == ["j0", "j1", "j2", "j3"]
        out.flush()  # nothing pending: no empty write, no error
    assert ids(out.results_path) == ["j0", "j1", "j2", "j3"]


def test_closing_flushes_even_when_the_run_fails(jobs: Path) -> None:
    with pytest.raises(KeyError), open_(jobs) as out:
        put(out, "j0")
        raise KeyError("boom")
    assert ids(out.results_path) == ["j0"]
    out.close()  # a second close does nothing


def test_creates_missing_output_directories(jobs: Path, tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "r.jsonl"
    out = run_to_end(jobs, ["j0"], output=target, latency=tmp_path / "c" / "l.jsonl")
    assert ids(target) == ["j0"]
    assert ids(out.latency_path) == ["j0"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_failed_write_is_a_sink_error_naming_the_file(jobs: Path) -> None:
    out = open_(jobs, latency=Path("/dev/full"))
    put(out, "j0")
    with pytest.raises(SinkError, match="/dev/full"):
        out.flush()
    with pytest.raises(SinkError):  # never silently retried: the buffer may be half written
        out.flush()
    out.close()
    assert not out.lock_path.exists()


def test_write_summary_is_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "s" / "summary.json"
    write_summary(path, {"jobs": {"total": 1}})
    write_summary(path, {"jobs": {"total": 2}})
    assert orjson.loads(path.read_bytes()) == {"jobs": {"total": 2}}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]


def test_all_names_every_public_function_and_class() -> None:
    defined = {
        name
        for name, value in vars(sinks).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == sinks.__name__
    }
    assert defined == {
        "InputOrder",
        "MetaCacheJournal",
        "Outputs",
        "acquire_lock",
        "check_resume",
        "default_paths",
        "lock_holder",
        "meta_path_of",
        "open_outputs",
        "read_meta_section",
        "read_regular",
        "release_lock",
        "replace_bytes",
        "replacing",
        "sink_error",
        "whole_lines_end",
        "write_meta_section",
        "write_summary",
    }
    assert defined <= set(sinks.__all__)


# -- resume ---------------------------------------------------------------------------------


def test_resume_skips_ids_already_written(jobs: Path) -> None:
    run_to_end(jobs, ["j0", "j1"])
    with open_(jobs) as out:
        assert out.skipped == 2
        assert out.done("j0") and out.done("j1") and not out.done("j2")
        put(out, "j2")
    assert ids(out.results_path) == ["j0", "j1", "j2"]
    assert ids(out.latency_path) == ["j0", "j1", "j2"]


def test_partial_last_lines_are_cut_off(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0", "j1"])
    with out.results_path.open("ab") as fh:
        fh.write(b'{"custom_id": "j2", "resp')
    with out.latency_path.open("ab") as fh:
        fh.write(b'{"custom_id": "j2"}\n{"custom_id": "j3", "cac')
    with open_(jobs) as again:
        assert again.skipped == 2
        assert not again.done("j2")
        put(again, "j2")
    assert ids(out.results_path) == ["j0", "j1", "j2"]
    assert ids(out.latency_path) == ["j0", "j1", "j2"]


def test_a_file_that_is_one_torn_line_is_emptied(jobs: Path) -> None:
    out = run_to_end(jobs, [])
    out.results_path.write_bytes(b'{"custom_id": "j0"' + b"x" * 200_000)
    with open_(jobs) as again:
        assert again.skipped == 0
    assert out.results_path.read_bytes() == b""


def test_unreadable_complete_lines_are_dropped(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0"])
    with out.results_path.open("ab") as fh:
        fh.write(b"\0\0\0\0\n[1]\n")
    with open_(jobs) as again:
        assert again.skipped == 1
    assert ids(out.results_path) == ["j0"]


def test_latency_lines_without_a_result_are_dropped(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0", "j1"])
    with out.latency_path.open("ab") as fh:
        fh.write(orjson.dumps(LatencyRecord(custom_id="j2")) + b"\n")
    with open_(jobs) as again:
        assert not again.done("j2")
        put(again, "j2")
    assert ids(out.latency_path) == ["j0", "j1", "j2"]
    assert ids(out.results_path) == ["j0", "j1", "j2"]


def test_errors_count_as_done_without_retry_failed(jobs: Path) -> None:
    with open_(jobs) as out:
        put(out, "j0", code="timeout")
        put(out, "j1", code="http_4xx")
    with open_(jobs) as again:
        assert again.done("j0") and again.done("j1")


def test_retry_failed_reruns_only_retriable_errors(jobs: Path) -> None:
    with open_(jobs) as out:
        put(out, "j0")
        put(out, "j1", code="timeout")
        put(out, "j2", code="http_4xx")
        put(out, "j3", code="http_5xx")
    with open_(jobs, retry_failed=True) as again:
        assert [again.done(c) for c in ("j0", "j1", "j2", "j3")] == [True, False, True, False]
        assert again.skipped == 2
        assert ids(out.results_path) == ["j0", "j2"]
        assert ids(out.latency_path) == ["j0", "j2"]
        put(again, "j1")
        put(again, "j3")
    assert ids(out.results_path) == ["j0", "j2", "j1", "j3"]
    assert [r["error"] for r in lines(out.results_path)][2:] == [None, None]
    assert ids(out.latency_path) == ["j0", "j2", "j1", "j3"]
    assert not list(out.results_path.parent.glob("*.tmp"))


def test_no_resume_starts_afresh(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0", "j1"])
    with open_(jobs, model="other", resume=False) as again:
        assert again.skipped == 0 and not again.done("j0")
        assert out.results_path.read_bytes() == b""
        assert out.latency_path.read_bytes() == b""
        put(again, "j5")
    meta = orjson.loads(sinks._sidecar(out.results_path, ".meta.json").read_bytes())
    assert meta["model"] == "other"
    with open_(jobs, model="other") as third:
        assert third.done("j5") and not third.done("j0")


# -- metadata -------------------------------------------------------------------------------


def test_meta_records_input_and_model(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0"])
    meta = orjson.loads(sinks._sidecar(out.results_path, ".meta.json").read_bytes())
    assert meta["jobs_file"] == str(jobs.resolve())
    assert meta["model"] == "m"
    assert meta["version"] == 2
    assert meta["jobs"]["size"] == jobs.stat().st_size  # the whole file, not its head
    assert meta["jobs"]["sha256"] == hashlib.sha256(jobs.read_bytes()).hexdigest()


def test_resuming_with_another_model_is_refused(jobs: Path) -> None:
    out = run_to_end(jobs, ["j0"])
    with pytest.raises(ResumeError, match=r"model 'm', not 'gpt'.*--no-resume.*-o") as info:
        open_(jobs, model="gpt")
    assert str(out.results_path) in str(info.value)
    assert not out.lock_path.exists()  # a refusal leaves no lock behind


def test_resuming_onto_another_input_is_refused(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    run_to_end(jobs, ["j0"], output=output)
    other = tmp_path / "other.jsonl"
    other.write_text('{"custom_id": "x", "query": "q"}\n')
    with pytest.raises(ResumeError, match=r"written for the input .*jobs\.jsonl.*--no-resume"):
        open_(other, output=output)
    jobs.write_text('{"custom_id": "edited", "query": "q"}\n' + jobs.read_text())
    with pytest.raises(ResumeError, match="differs from it within its first"):
        open_(jobs, output=output)


def test_appending_jobs_or_moving_the_input_keeps_resume(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    run_to_end(jobs, ["j0"], output=output)
    with jobs.open("a") as fh:
        fh.write('{"custom_id": "j10", "query": "q"}\n')
    with open_(jobs, output=output) as out:
        assert out.done("j0")
    moved = tmp_path / "moved.jsonl"
    moved.write_bytes(jobs.read_bytes())
    with open_(moved, output=output) as out:
        assert out.done("j0")
    meta = orjson.loads(sinks._sidecar(output, ".meta.json").read_bytes())
    assert meta["jobs_file"] == str(moved.resolve())


def test_results_without_meta_are_not_resumed(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    output.write_bytes(result("j0").to_json())
    with pytest.raises(ResumeError, match=r"r\.jsonl\.meta\.json is missing"):
        open_(jobs, output=output)
    with open_(jobs, output=output, resume=False) as out:
        assert out.skipped == 0


# -- lock -----------------------------------------------------------------------------------

HOLDER = """
import sys
from pathlib import Path
from runner.config import RunConfig
from runner.sinks import open_outputs
out = open_outputs(RunConfig(output=Path(sys.argv[2])), jobs_path=Path(sys.argv[1]), model="m")
print("ready", flush=True)
sys.stdin.read()
out.close()
"""


def test_a_live_runner_holding_the_lock_refuses_a_second(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "r.jsonl"
    proc = child(HOLDER, str(jobs), str(output))
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        with pytest.raises(
            ResumeError, match=rf"being written by another runner \(pid {proc.pid}\)"
        ):
            open_(jobs, output=output)
        # It holds flock, so it is alive: the advice is to wait or stop it, never to remove the
        # lock file (which let the next run take a fresh lock and write beside it).
        with pytest.raises(ResumeError, match=r"holds .*r\.jsonl\.lock: wait for it to end") as e:
            open_(jobs, output=output, resume=False)
        assert "remove" not in str(e.value).replace("removing the file would not stop it", "")
    finally:
        proc.communicate("")
    assert proc.returncode == 0
    assert not sinks._sidecar(output, ".lock").exists()
    with open_(jobs, output=output) as out:
        assert out.lock_path.exists()


def test_two_outputs_in_one_process_exclude_each_other(jobs: Path) -> None:
    with open_(jobs), pytest.raises(ResumeError, match=f"pid {os.getpid()}"):
        open_(jobs)


def test_a_stale_lock_of_a_dead_runner_is_taken_over(jobs: Path) -> None:
    lock = jobs.with_name("jobs.results.jsonl.lock")
    lock.write_text(f"{dead_pid()} {socket.gethostname()}\n")
    with open_(jobs) as out:
        assert lock.read_text() == f"{os.getpid()} {socket.gethostname()}\n"
        put(out, "j0")
    assert not lock.exists()


def test_a_lock_naming_a_live_process_is_respected_without_flock(
    jobs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where flock does not exclude (some network file systems) the pid is the safeguard.
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock = jobs.with_name("jobs.results.jsonl.lock")
    lock.write_text(f"{os.getppid()} {socket.gethostname()}\n")
    # the pid may be another process's now: only here is removing the file the advice
    with pytest.raises(ResumeError, match=rf"pid {os.getppid()}\); remove .* if that is wrong"):
        open_(jobs)
    assert lock.exists()  # not ours to remove
    lock.write_text(f"{os.getppid()} some-other-host\n")  # pid unknowable there: flock decides
    with open_(jobs):
        pass


# -- input order ----------------------------------------------------------------------------


def test_order_input_releases_results_in_input_order(jobs: Path) -> None:
    out = open_outputs(
        RunConfig(order="input"), jobs_path=jobs, model="m", flush_every=1, fsync=False
    )
    with out:
        for cid in "abcd":  # the engine asks once per input item, in input order
            assert not out.sink.done(cid)
        put(out, "c", 5)
        put(out, "b", 3)
        assert ids(out.results_path) == []
        put(out, "a", 2)
        assert ids(out.results_path) == ["a", "b", "c"]
        assert ids(out.latency_path) == ["c", "b", "a"]  # records are written as jobs end
        assert not out.sink.done("e")
        put(out, "e", 9)
        assert ids(out.results_path) == ["a", "b", "c"]
        put(out, "d", 8)
        assert ids(out.results_path) == ["a", "b", "c", "d", "e"]


def test_order_input_close_writes_results_held_behind_a_job_that_never_ended(jobs: Path) -> None:
    with open_(jobs, order="input") as out:
        for cid in "abcd":
            assert not out.sink.done(cid)
        put(out, "d", 4)
        put(out, "b", 2)
        put(out, "c", 3)
    assert ids(out.results_path) == ["b", "c", "d"]


def test_completion_order_ignores_line_numbers(jobs: Path) -> None:
    with open_(jobs) as out:
        assert out.sink is out
        assert not out.sink.done("y")
        put(out, "z", 9)
        put(out, "y", 1)
    assert ids(out.results_path) == ["z", "y"]


def test_an_output_that_cannot_be_opened_is_a_sink_error_and_frees_the_lock(
    jobs: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    output = tmp_path / "r.jsonl"
    with pytest.raises(SinkError, match=r"taken: cannot open"):
        open_(jobs, output=output, latency=taken, resume=False)
    assert not sinks._sidecar(output, ".lock").exists()
    assert not sinks._sidecar(taken, ".lock").exists()
    with pytest.raises(SinkError, match=r"cannot create the directory"):
        open_(jobs, output=jobs / "sub" / "r.jsonl")


@pytest.mark.parametrize("where", ["file-as-dir", "proc"])
def test_an_output_path_that_cannot_be_made_is_exit_2_before_any_job(
    jobs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    """A directory or lock that cannot be created is the user's path, found before anything is
    sent: a usage error (exit 2) naming the path, like every other bad argument."""
    from runner import cli

    output = jobs / "r.jsonl" if where == "file-as-dir" else Path("/proc/runner-test.jsonl")
    code = cli.main(["run", str(jobs), "--provider", "mock", "-o", str(output), "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(output.parent) in err
    assert not (tmp_path / "r.latency.jsonl").exists()


def test_jobs_given_in_memory_check_only_the_model(jobs: Path, tmp_path: Path) -> None:
    output = tmp_path / "mem.jsonl"
    config = RunConfig(output=output)
    with open_outputs(config, jobs_path=None, model="m", fsync=False) as out:
        put(out, "a")
    assert out.latency_path == tmp_path / "mem.latency.jsonl"
    with open_outputs(config, jobs_path=None, model="m", fsync=False) as out:
        assert out.done("a")
    with pytest.raises(ResumeError, match="model"):
        open_outputs(config, jobs_path=None, model="x", fsync=False)
    with pytest.raises(ResumeError, match="written for the input jobs given in memory"):
        open_(jobs, output=output)
    with pytest.raises(ConfigError, match="output path is needed"):
        open_outputs(RunConfig(), jobs_path=None, model="m")
