"""Red team 3: `--workers N` when a worker dies (SIGKILL, as the OOM killer does) or raises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def _setup(d: Path, n: int, base_ms: float) -> tuple[Path, Path]:
    cfg = d / "cfg.toml"
    cfg.write_text(
        'model = "m-1"\nconcurrency = 4\n[mock]\n'
        f"base_ms = {base_ms}\nprefill_ms_per_token = 0.005\ndecode_ms_per_token = 0.1\n"
    )
    jobs = d / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"j{i}", "query": f"question {i}?"}) + b"\n")
    return jobs, cfg


def _cmd(jobs: Path, cfg: Path, out: Path) -> list[str]:
    return [str(jobs), "-c", str(cfg), "-o", str(out), "--workers", "2", "--progress", "off"]


def _ids(path: Path) -> list[str]:
    return [orjson.loads(raw)["custom_id"] for raw in path.read_bytes().splitlines()]


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(c) for c in text.split()]


def _rerun_completes_once(jobs: Path, cfg: Path, out: Path, n: int) -> None:
    """The same command again: it resumes and merges, every job once."""
    again = subprocess.run(
        [sys.executable, "-m", "runner", "run", *_cmd(jobs, cfg, out)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(_ids(out)) == sorted(f"j{i}" for i in range(n))


def test_a_worker_killed_by_sigkill_exits_137_with_the_resume_hint_and_the_rerun_merges(
    tmp_path: Path,
) -> None:
    # Found: the parent exited 247 (sys.exit(-9)), a code no table lists, with no resume hint.
    jobs, cfg = _setup(tmp_path, 400, base_ms=40.0)
    out = tmp_path / "r.results.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", *_cmd(jobs, cfg, out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    part = tmp_path / "r.shard-0-of-2.results.jsonl"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0):
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    kids = _children(proc.pid)
    assert len(kids) == 2
    os.kill(kids[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGKILL, err.decode()
    assert b"exit code 137" in err and b"run the same command again to resume" in err
    assert not out.exists()
    # The re-run sends shard 0's other ~195 jobs without the 40 ms base latency (a resume
    # checks the jobs file, not the config's [mock] section).
    cfg.write_text(cfg.read_text().replace("base_ms = 40.0", "base_ms = 0.0", 1))
    _rerun_completes_once(jobs, cfg, out, 400)


DRIVER = """
import sys
import runner.api as api
import runner.workers as workers

real_child = workers._child

def boom(*args, **kwargs):
    raise RuntimeError("injected defect")

def child(args):
    if "1/2" in args:  # the worker of shard 1 meets a defect at the end of its run
        api._add_cache_cost = boom
    real_child(args)

workers._child = child
from runner.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_worker_that_raises_is_a_crash_not_a_merge_refused_with_exit_2(tmp_path: Path) -> None:
    # Found: a worker's uncaught exception exits 1 ("some jobs failed"), so the parent merged,
    # the merge refused the unfinished shard, and the run exited 2 ("do not retry") telling the
    # user to re-run with --shard K/N, which --workers refuses.
    jobs, cfg = _setup(tmp_path, 40, base_ms=1.0)
    out = tmp_path / "r.results.jsonl"
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    crashed = subprocess.run(
        [sys.executable, str(driver), "run", *_cmd(jobs, cfg, out)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    err = crashed.stderr.decode()
    assert "RuntimeError: injected defect" in err
    assert crashed.returncode == 1, err
    assert "shard 1/2 stopped with exit code 1 before finishing" in err
    assert "run the same command again to resume" in err
    assert "--shard K/N" not in err
    assert not out.exists()
    _rerun_completes_once(jobs, cfg, out, 40)
