"""Never touch an input, never mix two runs' outputs (README Reliability table, issue 9).

Every output path is decided and checked before anything is opened for writing: an output that
is an input (after symlinks) or another output, or that cannot be written, is exit 2 and leaves
every file as it was; nothing is truncated until the provider probe has passed too.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
from promise_helpers import (
    cli_run,
    fast_config,
    lines,
    load,
    refused_outputs,
    run_fast,
    write_jobs,
)

from runner import sinks
from runner.config import RunConfig
from runner.sinks import open_outputs


@pytest.mark.parametrize(
    "flags",
    [
        ["--latency", "{jobs}"],
        ["--summary", "{jobs}"],
        ["--summary", "{config}"],
        ["--latency", "{contexts}"],
        ["-o", "{jobs}", "--no-resume"],
        ["--summary", "{link}"],  # a symlink to the jobs file
        ["-o", "{tmp}/r.results.jsonl", "--latency", "{tmp}/r.results.jsonl.meta.json"],
    ],
)
def test_an_output_naming_an_input_is_refused_and_nothing_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    refused_outputs(tmp_path, capsys, "run", flags)


def test_two_outputs_on_one_file_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    same = tmp_path / "same.json"
    code, err = run_fast(capsys, jobs, "--latency", str(same), "--summary", str(same))
    assert code == 2 and "are the same file" in err
    assert not same.exists() and not (tmp_path / "jobs.results.jsonl").exists()


def test_latency_and_summary_default_next_to_the_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 20)
    config = fast_config(tmp_path)
    for d in ("a", "b"):
        code, err = cli_run(
            capsys, "run", str(jobs), "-c", str(config), "-o", f"{tmp_path}/{d}/r.results.jsonl"
        )
        assert code == 0, err
    for d in ("a", "b"):
        out = tmp_path / d
        assert len(lines(out / "r.latency.jsonl")) == 20  # never interleaved with the other run
        assert load(out / "r.summary.json")["jobs"]["ok"] == 20
    assert not (tmp_path / "jobs.latency.jsonl").exists()
    assert not (tmp_path / "jobs.summary.json").exists()


def test_the_lock_covers_the_latency_file_and_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    shared = tmp_path / "shared.latency.jsonl"
    summary = tmp_path / "shared.summary.json"
    held = open_outputs(
        RunConfig(output=tmp_path / "one.jsonl", latency=shared, summary=summary),
        jobs_path=jobs,
        model="mock-1",
        fsync=False,
    )
    try:
        for flag, path in (("--latency", shared), ("--summary", summary)):
            code, err = run_fast(capsys, jobs, "-o", str(tmp_path / "two.jsonl"), flag, str(path))
            assert code == 2 and "being written by another runner" in err, err
    finally:
        held.close()
    assert not (tmp_path / "two.jsonl").exists() or (tmp_path / "two.jsonl").stat().st_size == 0


def test_output_directory_and_trailing_slash_put_the_files_inside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path)
    existing = tmp_path / "existing"
    existing.mkdir()
    for target, where in ((str(existing), existing), (f"{tmp_path}/newdir/", tmp_path / "newdir")):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", target)
        assert code == 0, err
        assert where.is_dir()
        assert len(lines(where / "jobs.results.jsonl")) == 4
        assert len(lines(where / "jobs.latency.jsonl")) == 4
        assert load(where / "jobs.summary.json")["jobs"]["ok"] == 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_no_resume_deletes_nothing_when_the_probe_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 10)
    config = fast_config(tmp_path)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    outputs = ("jobs.results.jsonl", "jobs.latency.jsonl", "jobs.summary.json")
    before = {name: (tmp_path / name).read_bytes() for name in outputs}
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    code, err = cli_run(
        capsys,
        "run",
        str(jobs),
        "-c",
        str(config),
        "--no-resume",
        "--provider",
        "openai",
        "--base-url",
        url,
    )
    # Unreachable after its retries: transient, exit 75 (issue 12); nothing was touched.
    assert code == 75 and "pre-flight" in err
    assert {name: (tmp_path / name).read_bytes() for name in outputs} == before


@pytest.mark.parametrize("flag", ["-o", "--summary", "--latency"])
def test_an_unwritable_output_is_exit_2_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    jobs = write_jobs(tmp_path, 3)
    blocker = tmp_path / "plain-file"
    blocker.write_text("not a directory\n")
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), flag, str(blocker / "x.json")
    )
    assert code == 2, err
    assert "is not a directory" in err
    assert not (tmp_path / "jobs.results.jsonl").exists()  # nothing sent, nothing written


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permission bits")
def test_an_unwritable_directory_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, err = run_fast(capsys, jobs, "--summary", str(ro / "s.json"))
    finally:
        ro.chmod(0o700)
    assert code == 2 and "not writable" in err


def test_a_summary_that_cannot_be_written_keeps_the_figures_and_no_tmp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = write_jobs(tmp_path, 6)
    real_replace = os.replace

    def failing_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if str(dst).endswith(".summary.json"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(sinks.os, "replace", failing_replace)  # type: ignore[attr-defined]
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 75  # a full disk: re-run later, which writes the summary (runner/noop.py)
    assert "6 ok, 0 failed" in err  # the table is printed anyway
    assert "the summary could not be written" in err and "No space left" in err
    assert not list(tmp_path.glob("*.tmp"))
    assert not (tmp_path / "jobs.summary.json").exists()


def test_a_directory_the_run_may_not_write_is_exit_2_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Root writes through permission bits, so the refusal of the kernel is simulated here.
    jobs = write_jobs(tmp_path, 3)
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access

    def access(path: str | os.PathLike[str], mode: int, **kw: object) -> bool:
        return False if Path(path) == ro else real_access(path, mode)

    monkeypatch.setattr("runner.outputs.os.access", access)
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "--summary", str(ro / "s.json")
    )
    assert code == 2 and f"cannot create files in {ro}" in err
    assert not (tmp_path / "jobs.results.jsonl").exists()


async def test_the_output_plan_is_made_once_per_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found in review: a run derived its output paths 3-4 times (checks, the batch-journal
    # guard, explicit caches, opening the outputs); now once, passed to each step.
    import runner.api
    import runner.outputs
    import runner.sinks
    from runner import run

    calls: list[object] = []
    real = runner.outputs.plan_outputs

    def counted(*args: Any, **kw: Any) -> Any:
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(runner.outputs, "plan_outputs", counted)
    monkeypatch.setattr(runner.sinks, "plan_outputs", counted)
    monkeypatch.setattr(runner.api, "plan_outputs", counted, raising=False)  # where it was
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "query": "hi"}\n{"id": "b", "query": "ho"}\n')
    for via in ("direct", "batch"):
        calls.clear()
        cfg = RunConfig(via=via, progress="off", output=tmp_path / via, poll_interval=0.01)
        assert (await run(jobs, cfg)).exit_code == 0
        assert len(calls) == 1, via


async def test_two_runs_with_summary_to_stdout_share_a_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found while fixing the above: with `--summary -` the summary lock was ./-.lock, so a
    # second run with `--summary -` from the same directory was refused as "being written by
    # another runner" although its outputs were its own.
    from runner import run

    monkeypatch.chdir(tmp_path)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for p in (a, b):
        p.write_text('{"id": "x", "query": "hi"}\n')
    cfg = RunConfig(summary=Path("-"), progress="off")
    held = open_outputs(cfg, jobs_path=a, model=cfg.model)  # run A, still going
    try:
        assert (await run(b, cfg)).exit_code == 0
        assert not (tmp_path / "-.lock").exists()
    finally:
        held.close()
    assert '"jobs"' in capsys.readouterr().out


@pytest.mark.parametrize(
    ("path", "suffix", "want"),
    [
        ("out/r.jsonl", ".meta.json", "out/r.jsonl.meta.json"),
        ("r.jsonl", ".tmp", "r.jsonl.tmp"),
        ("/abs/dir/s.json", ".lock", "/abs/dir/s.json.lock"),
        (".", ".tmp", ".tmp"),  # no name (an empty --latency): no ValueError before the checks
    ],
)
def test_a_sidecar_is_named_by_one_definition(path: str, suffix: str, want: str) -> None:
    """``outputs`` (what the checks refuse) and ``sinks`` (what a run opens, removes and
    renames) had each their own copy of the naming, which differed on a path with no name:
    the checks and the run could look at two different files."""
    from runner import outputs

    assert sinks._sidecar is outputs.beside
    assert outputs.beside(Path(path), suffix) == Path(want)
    results = Path(path)
    if results.name:
        plan = outputs.OutputPlan(results, Path("l.jsonl"), Path("s.json"))
        assert plan.meta == sinks.meta_path_of(results) == Path(path + ".meta.json")
