"""``runner status R`` on the name that shards were given (``-o R`` in the README's Indexed
Job and Slurm array), before ``runner merge R`` wrote it.

A wrapper that waited for the array asked ``runner status out/eval.results.jsonl`` and got
exit 2, "no meta file ...: not a runner output", whatever the shards beside it had done: the
same answer as a typo in the path, and nothing about the shards or the merge still to run.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner import cli


def _status(capsys: pytest.CaptureFixture[str], results: Path) -> tuple[int, str]:
    """(exit code, standard output and error) of ``runner status results``."""
    capsys.readouterr()
    try:
        code = cli.main(["status", str(results)])
    except SystemExit as exc:
        code = int(exc.code or 0)
    said = capsys.readouterr()
    return code, said.out + said.err


def test_unmerged_shards_are_listed_with_the_merge_command_and_never_done(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 12)
    config = str(fast_config(tmp_path))
    out = tmp_path / "out" / "eval.results.jsonl"
    for k in (0, 1, 3):  # shard 2 of 4 never ran (a pod still pending)
        code, _ = cli_run(
            capsys, "run", str(jobs), "-c", config, "--shard", f"{k}/4", "-o", str(out), "-q"
        )
        assert code == 0
    code, said = _status(capsys, out)
    assert code == 1, said  # not done: a shard is missing and nothing is merged
    assert "not written yet" in said and "not merged" in said
    assert "shards of 4: done 0-1, 3; missing 2" in said
    glob = tmp_path / "out" / "eval.shard-*-of-4.results.jsonl"
    assert f"runner merge {out} '{glob}'" in said
    assert "not a runner output" not in said

    # every shard there and done: still 1 until the merge, which status then describes
    assert cli_run(capsys, "run", str(jobs), "-c", config, "--shard", "2/4", "-o", str(out))[0] == 0
    code, said = _status(capsys, out)
    assert code == 1 and "shards of 4: done 0-3\n" in said, said
    assert cli_run(capsys, "merge", str(out), str(glob))[0] == 0
    code, said = _status(capsys, out)
    assert code == 0 and "merged: shards 0, 1, 2, 3 of 4" in said, said


def test_a_running_shard_makes_the_unmerged_name_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 6)
    config = str(fast_config(tmp_path))
    out = tmp_path / "eval.results.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", config, "--shard", "0/2", "-o", str(out))[0] == 0
    assert cli_run(capsys, "run", str(jobs), "-c", config, "--shard", "1/2", "-o", str(out))[0] == 0
    lock = tmp_path / "eval.shard-1-of-2.results.jsonl.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(f"{holder.pid} {socket.gethostname()}\n")  # shard 1 runs again
        code, said = _status(capsys, out)
        assert code == 3, said
        assert "shards of 2: done 0; running 1" in said
    finally:
        holder.kill()
        holder.wait()
        lock.unlink()


def test_a_name_with_no_shards_beside_it_is_still_not_an_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = str(fast_config(tmp_path))
    out = tmp_path / "eval.results.jsonl"
    assert cli_run(capsys, "run", str(jobs), "-c", config, "--shard", "0/1", "-o", str(out))[0] == 0
    # eval.shard-0-of-1.results.jsonl is not a shard of val.results.jsonl
    code, said = _status(capsys, tmp_path / "val.results.jsonl")
    assert code == 2 and "not a runner output" in said, said


def test_a_stray_shard_count_is_not_listed_and_the_merge_command_is_shell_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A name with a shard count runner refuses (``-of-3000000000``: a hand copy, a typo)
    built ``set(range(N))`` for its missing shards: status hung, eating memory, for any N
    beyond memory. And an output directory with a space gave a merge command that the shell
    split in two."""
    jobs = write_jobs(tmp_path, 12)
    config = str(fast_config(tmp_path))
    out = tmp_path / "my runs" / "eval.results.jsonl"
    code, _ = cli_run(
        capsys, "run", str(jobs), "-c", config, "--shard", "0/2", "-o", str(out), "-q"
    )
    assert code == 0
    shard = out.parent / "eval.shard-0-of-2.results.jsonl"
    (out.parent / "eval.shard-0-of-10000001.results.jsonl").write_bytes(shard.read_bytes())
    code, said = _status(capsys, out)
    assert code == 1 and "shards of 2: done 0; missing 1" in said, said
    assert "10000001" not in said
    merge = next(line for line in said.splitlines() if "runner merge" in line)
    argv = shlex.split(merge.split(": ", 1)[1].split(" (`", 1)[0])
    glob = out.parent / "eval.shard-*-of-2.results.jsonl"
    assert argv == ["runner", "merge", str(out), str(glob)], merge
