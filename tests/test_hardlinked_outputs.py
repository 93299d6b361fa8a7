"""Two runs on one output file through two hard links are refused (exit 2, nothing touched).

Found by a red team: the lock ``R.lock`` is keyed on the output's name (after symlinks), and
two hard links to one file are two names, so ``runner run jobs -o r.jsonl`` and, at the same
time, ``runner run jobs2 -o h.jsonl`` (``ln r.jsonl h.jsonl``) both wrote the one file; with
``--no-resume`` the second truncated the first one's results. A run now also holds ``flock`` on
its output files, which the kernel keys on the inode (runner/inodelock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import mock_process, run_until_requests
from promise_helpers import cli_run, fast_config, write_jobs

from runner.config import RunConfig
from runner.sinks import open_outputs


def snapshot(directory: Path) -> dict[str, tuple[int, bytes]]:
    return {p.name: (p.stat().st_ino, p.read_bytes()) for p in directory.iterdir()}


@pytest.mark.parametrize("no_resume", [False, True])
@pytest.mark.parametrize("what", ["-o", "--latency", "--summary"])
def test_a_second_run_on_a_hard_link_of_a_live_runs_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, no_resume: bool
) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    real = {"-o": out / "r.jsonl", "--latency": out / "l.jsonl", "--summary": out / "s.json"}
    real["--summary"].write_bytes(b"{}\n")  # an earlier run's summary, resumed by the live one
    held = open_outputs(
        RunConfig(output=real["-o"], latency=real["--latency"], summary=real["--summary"]),
        jobs_path=jobs,
        model="mock-1",
        fsync=False,
    )
    try:
        real["-o"].write_bytes(b'{"custom_id": "q0"}\n')  # what the live run wrote so far
        real["--latency"].write_bytes(b'{"custom_id": "q0"}\n')
        link = out / "h"
        os.link(real[what], link)
        mine = {
            "-o": tmp_path / "mine.jsonl",
            "--latency": tmp_path / "mine.latency.jsonl",
            "--summary": tmp_path / "mine.summary.json",
        }
        flags = {**{k: str(v) for k, v in mine.items()}, what: str(link)}
        argv = [a for k, v in flags.items() for a in (k, v)]
        before = snapshot(out)
        code, err = cli_run(
            capsys,
            "run",
            str(jobs),
            "-c",
            str(config),
            *argv,
            *(["--no-resume"] if no_resume else []),
        )
        assert code == 2, err
        assert f"{link} is the same file as {real[what]} (a hard link)" in err, err
        assert f"pid {os.getpid()}" in err  # the live run's, from its lock
        assert snapshot(out) == before  # nothing truncated, appended, replaced or left behind
        assert not any(p.exists() for p in mine.values())
    finally:
        held.close()
    # Once the live run has ended, a run on the link is a run like any other.
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *argv, "--no-resume")
    assert code == 0, err


def test_two_live_processes_on_two_hard_links_of_one_results_file(tmp_path: Path) -> None:
    """Across processes, as the red team ran it: a run going on, the second on a hard link."""
    jobs = write_jobs(tmp_path, 400)
    with mock_process("--latency", "model", "--base-ms", "50", "--jitter", "0") as url:
        config = tmp_path / "c.toml"
        config.write_text(
            f'provider = "openai"\nbase_url = "{url}"\nmodel = "mock-1"\nprogress = "off"\n'
            "concurrency = 2\n"
        )
        first = tmp_path / "r.jsonl"
        proc = run_until_requests(
            url,
            [str(jobs), "-c", str(config), "-o", str(first), "-q"],
            4,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            hard = tmp_path / "h.jsonl"
            os.link(first, hard)
            argv = ["run", str(jobs), "-c", str(config), "-o", str(hard), "--no-resume", "-q"]
            second = subprocess.run(
                [sys.executable, "-m", "runner", *argv],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.poll() is None, "the first run ended: the check meant nothing"
        finally:
            proc.terminate()
            proc.wait(30)
    assert second.returncode == 2, second.stderr
    assert f"{hard} is the same file as {first} (a hard link)" in second.stderr
    assert f"(pid {proc.pid}" in second.stderr
    assert not hard.with_name("h.jsonl.meta.json").exists()
