"""A run beside a server on this machine yields the CPU to it (runner/cpu.py)."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import PY, mock_process, run_until_requests, runner

from runner.config import RunConfig
from runner.cpu import LOCAL_NICE, is_local, wanted_nice
from runner.errors import ConfigError

pytestmark = pytest.mark.skipif(not hasattr(os, "getpriority"), reason="no process priorities")


@pytest.mark.parametrize(
    ("url", "local"),
    [
        ("http://127.0.0.1:8080/v1", True),
        ("http://127.3.4.5/v1", True),
        ("http://localhost:11434/v1", True),
        ("http://api.localhost/v1", True),
        ("http://[::1]:8000/v1", True),
        ("http://[::ffff:127.0.0.1]:8000/v1", True),
        ("http://0.0.0.0:8000/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.7:8000/v1", False),
        ("http://[2001:db8::1]/v1", False),
        ("http://notlocalhost/v1", False),
        ("http://[::1/v1", False),  # not a URL: no opinion, no change
        (None, False),
        ("", False),
    ],
)
def test_which_servers_are_on_this_machine(url: str | None, local: bool) -> None:
    assert is_local(url) is local


def test_the_nice_a_config_asks_for() -> None:
    here = RunConfig(provider="openai", base_url="http://127.0.0.1:9/v1")
    far = RunConfig(provider="openai", base_url="https://api.openai.com/v1")
    assert wanted_nice(here) == LOCAL_NICE == 5
    assert wanted_nice(far) == 0
    assert wanted_nice(here.with_overrides(nice=0)) == 0  # as started
    assert wanted_nice(far.with_overrides(nice=12)) == 12
    assert wanted_nice(RunConfig()) == 0  # the built-in simulated provider: no server


@pytest.mark.parametrize("bad", [-1, 20])
def test_nice_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ConfigError, match="nice must be 0"):
        RunConfig(nice=bad)


def test_nice_out_of_range_is_exit_2_before_anything(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "query": "q"}\n')
    r = runner("run", str(jobs), "--nice", "20", cwd=tmp_path)
    assert r.returncode == 2
    assert "nice must be 0 (as started) to 19, got 20" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]


_CALL = (
    "import os; from runner.config import RunConfig; from runner.cpu import "
    "yield_to_local_server as y; c = RunConfig(provider='openai', base_url={url!r}, nice={n}); "
    "print(y(c), os.getpriority(os.PRIO_PROCESS, 0))"
)


@pytest.mark.parametrize(
    ("start", "url", "n", "after"),
    [
        (0, "http://127.0.0.1:9/v1", None, 5),
        (0, "https://api.openai.com/v1", None, 0),
        (0, "http://127.0.0.1:9/v1", 0, 0),
        (0, "https://api.openai.com/v1", 3, 3),
        (10, "http://127.0.0.1:9/v1", None, 10),  # a lower priority given to it stays
    ],
)
def test_the_process_runs_at_the_nice_asked(
    start: int, url: str, n: int | None, after: int
) -> None:
    # relative to this process's own nice: an earlier in-process `runner run` against a local
    # server (cli.main, as a command does) may have lowered pytest's priority, which `nice`
    # and every child inherit
    base = os.getpriority(os.PRIO_PROCESS, 0)
    after = min(19, max(base + start, after))
    out = subprocess.run(
        ["nice", "-n", str(start), PY, "-c", _CALL.format(url=url, n=n)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == [str(after), str(after)]


def test_the_python_api_leaves_the_callers_priority_alone(tmp_path: Path) -> None:
    import asyncio

    from runner.api import run

    with mock_process("--latency", "zero") as url:
        jobs = tmp_path / "jobs.jsonl"
        jobs.write_text('{"id": "a", "query": "q"}\n')
        before = os.getpriority(os.PRIO_PROCESS, 0)
        cfg = RunConfig(provider="openai", base_url=url, model="mock-1", progress="off")
        asyncio.run(run(jobs, cfg.with_overrides(output=str(tmp_path / "r.jsonl"))))
        assert os.getpriority(os.PRIO_PROCESS, 0) == before


def _tree(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for k in kids for p in _tree(int(k))]


@pytest.mark.parametrize(("flags", "want"), [([], 5), (["--nice", "0"], 0)])
def test_a_run_and_its_workers_beside_a_local_server(
    tmp_path: Path, flags: list[str], want: int
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "j{i}", "query": "q {i}"}}\n' for i in range(40)))
    with mock_process("--base-ms", "400", "--jitter", "0") as url:
        args = [str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
                "--concurrency", "2", "--workers", "2", "-q", *flags]  # fmt: skip
        proc = run_until_requests(url, args, 2, cwd=tmp_path)
        try:
            tree = _tree(proc.pid)
            assert len(tree) >= 3  # the parent and its two workers
            base = os.getpriority(os.PRIO_PROCESS, 0)  # inherited: see the test above
            assert {os.getpriority(os.PRIO_PROCESS, p) for p in tree} == {max(base, want)}
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
