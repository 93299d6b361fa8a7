"""``runner status LINK`` finds the run the way a run given that path names its files.

Found by a red team: ``runner status latest.jsonl``, a symlink to a run's results, said
"no meta file latest.jsonl.meta.json: not a runner output". A run given ``-o LINK`` names its
meta file and summary beside ``LINK`` (its lock beside the file ``LINK`` names); a symlink to a
run's results has no meta file beside it, so status follows the link, one hop at a time, to the
name the run was given (``runstatus.run_output``)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner.runstatus import run_output


def _status(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str, str]:
    from runner import cli

    capsys.readouterr()
    try:
        code = cli.main(["status", str(path)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def test_status_of_a_symlink_to_a_runs_results_reports_that_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 5)
    config = fast_config(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    real = runs / "r.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(real), "-q")[0] == 0
    latest = tmp_path / "latest.jsonl"
    latest.symlink_to(Path("runs") / "r.jsonl")  # relative, as `ln -s` is mostly used
    again = tmp_path / "again"
    again.symlink_to(latest.name)  # a link to the link
    for link in (latest, again):
        code, out, err = _status(capsys, link)
        assert code == 0, err
        assert f"{link}: a symlink to " in out and "r.jsonl, the output of the run below" in out
        assert "r.jsonl: 5 result lines" in out
        assert f"input: {jobs}, 5 jobs; 0 without a result" in out
        assert "exit 0, 5 ok, 0 failed" in out and str(runs / "r.summary.json") in out
    # the lock is read where the run takes it: a live holder shows as running
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (runs / "r.jsonl.lock").write_text(f"{other.pid} {socket.gethostname()}\n")
        code, out, _ = _status(capsys, latest)
        assert f"running: yes, pid {other.pid}" in out
        assert code == 3  # the exit code reads the same lock (runstatus.status_code)
    finally:
        other.kill()
        other.wait()
        (runs / "r.jsonl.lock").unlink()


def test_status_of_an_output_given_as_a_symlink_reads_the_names_that_run_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path)
    (tmp_path / "store").mkdir()
    link = tmp_path / "LINK.jsonl"
    link.symlink_to(tmp_path / "store" / "r.jsonl")
    assert cli_run(capsys, "run", str(jobs), "-c", str(config), "-o", str(link), "-q")[0] == 0
    assert (tmp_path / "LINK.jsonl.meta.json").exists()  # beside the name the run was given
    assert run_output(link) == link
    code, out, err = _status(capsys, link)
    assert code == 0, err
    assert out.startswith(f"{link}: 4 result lines")
    assert str(tmp_path / "LINK.summary.json") in out


def test_a_dangling_or_looping_link_is_refused_as_before_never_followed_for_ever(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    loop_a, loop_b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    os.symlink(loop_b.name, loop_a)
    os.symlink(loop_a.name, loop_b)
    dangling = tmp_path / "d.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    for path in (loop_a, dangling):
        assert run_output(path) == path
        code, _, err = _status(capsys, path)
        assert code == 2 and f"no meta file {path}.meta.json: not a runner output" in err, err
