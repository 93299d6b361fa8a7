"""``--workers N`` against the CPUs the process may use: a warning past them, exit 2 past four
per CPU. ``--workers 64`` on a 2-core box started 64 processes: one worker's event loop already
keeps its share of ``--concurrency`` in flight, so workers past the CPUs add processes (memory,
shard files, a longer merge), never throughput."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from promise_helpers import fast_config, write_jobs

from runner.errors import ConfigError
from runner.workers import MAX_WORKERS_PER_CPU, check_worker_count

ROOT = Path(__file__).resolve().parent.parent
needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity (Linux)"
)


@pytest.mark.parametrize(("n", "cpus"), [(1, 1), (2, 2), (16, 16), (2, 64)])
def test_no_more_workers_than_cpus_is_said_nothing(n: int, cpus: int) -> None:
    assert check_worker_count(n, cpus) is None


@pytest.mark.parametrize(("n", "cpus"), [(2, 1), (4, 1), (3, 2), (8, 2)])
def test_more_workers_than_cpus_is_a_warning(n: int, cpus: int) -> None:
    said = check_worker_count(n, cpus)
    assert said is not None and said.startswith(f"--workers {n} is more than the {cpus} CPU")


@pytest.mark.parametrize(("n", "cpus"), [(5, 1), (9, 2), (64, 2), (65, 16)])
def test_more_than_four_per_cpu_is_refused(n: int, cpus: int) -> None:
    assert n > MAX_WORKERS_PER_CPU * cpus
    with pytest.raises(ConfigError, match=f"--workers {n}: at most 4 per CPU") as info:
        check_worker_count(n, cpus)
    assert info.value.exit_code == 2
    assert f"use --workers {cpus} " in str(info.value)


def _run_on_one_cpu(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    one = {min(os.sched_getaffinity(0))}
    cmd = [sys.executable, "-m", "runner", "run", *args]
    return subprocess.run(
        cmd,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=lambda: os.sched_setaffinity(0, one),  # as taskset -c 0 would
    )


@needs_affinity
def test_the_cli_warns_past_the_cpus_and_refuses_past_four_per_cpu(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path, 'provider = "mock"\n')
    r = _run_on_one_cpu(tmp_path, jobs.name, "-c", config.name, "--workers", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    warnings = [line for line in r.stderr.splitlines() if "CPU" in line]
    assert warnings == [
        "runner: warning: --workers 2 is more than the 1 CPU this process may use: the "
        "workers take turns on them, adding processes but not throughput"
    ]
    assert len((tmp_path / "jobs.results.jsonl").read_bytes().splitlines()) == 4
    # -q: no warning (as every other warning)
    r = _run_on_one_cpu(tmp_path, jobs.name, "-c", config.name, "--workers", "2", "-q")
    assert r.returncode == 0 and "CPU" not in r.stderr, r.stderr[-2000:]

    out = tmp_path / "five"
    r = _run_on_one_cpu(tmp_path, jobs.name, "-c", config.name, "--workers", "5", "-o", f"{out}/")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "runner: error: --workers 5: at most 4 per CPU (1 CPU here, so 4); each worker would "
        "get under a quarter of a core, and one already keeps its share of --concurrency in "
        "flight: use --workers 1 (--concurrency sets the requests in flight)"
    )
    assert not out.exists()  # nothing started, nothing created
