"""Helpers shared by the benchmarks: start the simulated provider, run a child, measure it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
PY = sys.executable
# The words the contract-like contexts of bench_cache and bench_explicit_cache are drawn from.
LEGAL_WORDS = (
    "agreement party supplier customer indemnify liability warranty term termination notice "
    "confidential information breach remedy damages governing law jurisdiction assignment "
    "force majeure payment invoice schedule services deliverables acceptance audit insurance"
).split()


@contextmanager
def mock_server(*flags: str) -> Iterator[tuple[str, int]]:
    """Start ``runner mock`` on a free loopback port; yield (base URL, pid); stop it by pid."""
    proc = subprocess.Popen(
        [PY, "-m", "runner.mock", "--host", "127.0.0.1", "--port", "0", *flags],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        if not url.startswith("http"):
            raise SystemExit(f"mock did not start: {url!r}")
        yield url, proc.pid
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM by pid; SIGKILL if it has not exited 10 s later."""
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process, from /proc (no extra dependency)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


@dataclass(frozen=True, slots=True)
class ChildRun:
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    returncode: int
    stdout: str
    stderr: str


def run_child(
    cmd: list[str],
    timeout: float = 600.0,
    *,
    cwd: Path = ROOT,
    env: dict[str, str] | None = None,
) -> ChildRun:
    """Run a command to completion; measure its wall time, its own CPU time and peak RSS."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=cwd, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, ru = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return ChildRun(
            wall,
            ru.ru_utime + ru.ru_stime,
            ru.ru_maxrss / 1024.0,
            proc.returncode,
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def precompile() -> None:
    """Write the bytecode of runner and the bare clients (``__pycache__``, git-ignored) first.

    An installed package ships compiled, and an editable one compiles on its first start; but
    with ``PYTHONDONTWRITEBYTECODE`` set (as on the shared development machine) nothing is
    written and every timed child would recompile runner's ~14,000 lines of source, about
    0.08 s of CPU that no user pays. ``compileall`` writes regardless of that variable.
    """
    import compileall

    for folder in (ROOT / "runner", ROOT / "benchmarks" / "clients"):
        compileall.compile_dir(folder, quiet=1)


def make_jobs(path: Path, n: int, *, max_tokens: int = 16) -> Path:
    """A compact-shape jobs file of ``n`` short questions (no shared context)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and sum(1 for _ in path.open("rb")) == n:
        return path
    with path.open("wb") as fh:
        for i in range(n):
            fh.write(
                orjson.dumps(
                    {
                        "id": f"q-{i}",
                        "query": f"Question {i}: what is {i} plus {i}?",
                        "params": {"max_tokens": max_tokens},
                    }
                )
                + b"\n"
            )
    return path


def runner_run(
    jobs: Path, url: str, tag: str, *extra: str, concurrency: int, timeout: float = 600.0
) -> tuple[ChildRun, dict[str, Any]]:
    """`runner run` against ``url`` with outputs at bench-out/TAG.*; the child and its summary."""
    r = run_child(
        [
            PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
            "--model", "mock-1", "--concurrency", str(concurrency), "--no-resume",
            "--progress", "off", "-o", str(OUT / f"{tag}.results.jsonl"),
            "--latency", str(OUT / f"{tag}.latency.jsonl"),
            "--summary", str(OUT / f"{tag}.summary.json"), *extra,
        ],
        timeout,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"runner run ({tag}) failed ({r.returncode}): {r.stderr[-3000:]}")
    summary: dict[str, Any] = orjson.loads((OUT / f"{tag}.summary.json").read_bytes())
    return r, summary
