"""A shard that gets no job says why (README, "Scaling out": a group is never split).

The examples' 306 jobs in 6 cache groups, run as the README's 8-index Indexed Job, left some
pods with a table of zeros ("jobs 0 ok, 0 failed") and nothing else: it read like a pod that
found no input or a wrong path.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config


def _one_group(tmp: Path, n: int) -> Path:
    path = tmp / "jobs.jsonl"
    contexts = tmp / "contexts.jsonl"
    contexts.write_text(json.dumps({"cache_id": "g", "system": "s"}) + "\n")
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "cache_id": "g", "query": "q"}) + "\n" for i in range(n))
    )
    return path


def test_a_shard_without_jobs_says_that_groups_are_never_split(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = _one_group(tmp_path, 5)
    config = str(fast_config(tmp_path))
    said = {}
    for k in (0, 1):
        code, said[k] = cli_run(
            capsys, "run", str(jobs), "-c", config, "--contexts", str(tmp_path / "contexts.jsonl"),
            "--shard", f"{k}/2", "-o", str(tmp_path / "r.results.jsonl"),
        )  # fmt: skip
        assert code == 0, said[k]
    empty = [k for k in (0, 1) if "jobs       0 ok" in said[k]]
    assert len(empty) == 1, said  # the one group went to one shard
    (k,) = empty
    assert f"shard {k} of 2 holds none of the jobs of {jobs}" in said[k]
    assert "a group is never split" in said[k]
    assert "holds none" not in said[1 - k]  # the shard that ran the group says nothing


@pytest.mark.parametrize("fmt", [(), ("--log-format", "json")], ids=["text", "json"])
def test_workers_leave_the_note_to_the_run(tmp_path: Path, fmt: tuple[str, ...]) -> None:
    # --workers 2 over one group: one worker is empty; the run as a whole is not. The real CLI,
    # so that the workers' own standard error is read too.
    jobs = _one_group(tmp_path, 4)
    config = str(fast_config(tmp_path))
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(jobs), "-c", config, "--contexts",
         str(tmp_path / "contexts.jsonl"), "--workers", "2", "--concurrency", "2", *fmt],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "run summary (2 workers)" in done.stderr or '"workers":2' in done.stderr
    assert "holds none" not in done.stderr and "holds no jobs" not in done.stderr
