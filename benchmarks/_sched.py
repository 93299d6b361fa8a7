"""Where the cores went during one run, from the kernel's own scheduler events (``perf sched``).

``bench_scaleout.py workers --sched-trace`` records one ``--workers 1`` and one ``--workers 2``
run with ``perf sched record -a`` and reads ``perf sched timehist --state`` back. Each line of
that is one time slice: the task that ran, on which CPU, how long, and the state it left in
(``R``: preempted, still runnable). From it this module adds up, for the whole process's wall:

- each process's CPU time and the time it was runnable but had no core (preempted, or woken
  and not yet run);
- the CPUs' idle time, and the part of it during which some process was runnable without a
  core: time the machine had both work and a free core and did not put them together.

Only the standard library and the ``perf`` binary; nothing here runs unless asked.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

_TASK = re.compile(r"^(?P<comm>.*)\[(?P<tid>-?\d+)(?:/(?P<pid>-?\d+))?\]$")

Interval = tuple[float, float]


@dataclass(slots=True)
class Task:
    """One process (all its threads): CPU time and time spent runnable without a core."""

    comm: str
    cpu_s: float = 0.0
    slices: int = 0
    waited_s: float = 0.0


@dataclass(slots=True)
class Split:
    wall_s: float
    cpus: int
    idle_s: float
    #: idle core time while a process was runnable and had no core (at each instant, the
    #: smaller of the idle CPUs and the waiting processes)
    idle_while_waiting_s: float
    tasks: dict[int, Task] = field(default_factory=dict)


def available() -> bool:
    """True when ``perf sched record`` works here (the binary, and the kernel's tracepoints)."""
    if shutil.which("perf") is None:
        return False
    probe = subprocess.run(
        ["perf", "sched", "record", "-o", "/dev/null", "--", "true"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


def record(cmd: list[str], data: Path) -> list[str]:
    """The command line that runs ``cmd`` under ``perf sched record`` into ``data``."""
    return ["perf", "sched", "record", "-a", "-o", str(data), "--", *cmd]


def timehist(data: Path) -> str:
    return subprocess.run(
        ["perf", "sched", "timehist", "--state", "-i", str(data)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


_ROOT = re.compile(r"comm=perf-exec pid=(\d+)")
_FORK = re.compile(r"sched_process_fork: comm=.*? pid=(\d+) child_comm=.*? child_pid=(\d+)")


def command_tree(data: Path) -> set[int]:
    """The process and thread ids of the command ``perf`` ran and everything it forked."""
    text = subprocess.run(
        ["perf", "script", "-i", str(data)], capture_output=True, text=True, check=True
    ).stdout
    return tree(text)


def tree(script: str) -> set[int]:
    """From ``perf script`` text: the command's id and every id forked below it."""
    root = _ROOT.search(script)
    if root is None:
        raise ValueError("the trace does not show the command perf started")
    ids = {int(root[1])}
    children: dict[int, list[int]] = {}
    for m in _FORK.finditer(script):
        children.setdefault(int(m[1]), []).append(int(m[2]))
    todo = list(ids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in ids:
                ids.add(c)
                todo.append(c)
    return ids


def _paired_away(idle: list[Interval], waiting: list[Interval]) -> float:
    """Seconds of idle core with a runnable process beside it: at each instant the smaller of
    the number of idle CPUs and the number of processes waiting for one, added over time."""
    edges = sorted(
        [(a, 1, 0) for a, _ in idle] + [(b, -1, 0) for _, b in idle]
        + [(a, 0, 1) for a, _ in waiting] + [(b, 0, -1) for _, b in waiting]
    )  # fmt: skip
    total, idle_n, wait_n, last = 0.0, 0, 0, 0.0
    for t, di, dw in edges:
        total += min(idle_n, wait_n) * (t - last)
        idle_n, wait_n, last = idle_n + di, wait_n + dw, t
    return total


def parse(text: str) -> Split:
    """Read ``perf sched timehist --state`` output (header lines are skipped)."""
    rows: list[tuple[float, float, int, str, int, int, float, str]] = []
    for line in text.splitlines():
        p = line.split()
        if len(p) < 7 or not p[1].startswith("["):
            continue
        try:
            end, cpu = float(p[0]), int(p[1].strip("[]"))
            delay, run = float(p[-3]) / 1e3, float(p[-2]) / 1e3
        except ValueError:
            continue
        name = " ".join(p[2:-4])
        if name.startswith("<idle>"):
            rows.append((end - run, end, cpu, "<idle>", -1, -1, delay, p[-1]))
            continue
        m = _TASK.match(name)
        if m is None:
            continue
        tid = int(m["tid"])
        rows.append((end - run, end, cpu, m["comm"], int(m["pid"] or tid), tid, delay, p[-1]))
    if not rows:
        raise ValueError("no scheduler events in the trace")
    t0, t1 = min(r[0] for r in rows), max(r[1] for r in rows)
    ncpu = max(r[2] for r in rows) + 1
    idle: list[Interval] = []
    waiting: list[Interval] = []
    tasks: dict[int, Task] = {}
    last_out: dict[int, tuple[float, str]] = {}  # per thread: when it left a CPU, how
    for start, end, _cpu, comm, pid, tid, delay, state in rows:
        if pid < 0:
            idle.append((start, end))
            continue
        t = tasks.setdefault(pid, Task(comm if tid == pid else ""))
        if tid == pid:
            t.comm = comm
        t.cpu_s += end - start
        t.slices += 1
        prev = last_out.get(tid)
        if prev is not None and prev[1] == "R":
            wait = (prev[0], start)  # preempted: runnable since it left a CPU
        elif delay > 0:
            wait = (start - delay, start)  # woken, then queued for a core
        else:
            wait = None
        if wait is not None and wait[1] > wait[0]:
            t.waited_s += wait[1] - wait[0]
            waiting.append(wait)
        last_out[tid] = (end, state)
    return Split(
        wall_s=t1 - t0,
        cpus=ncpu,
        idle_s=sum(b - a for a, b in idle),
        idle_while_waiting_s=_paired_away(idle, waiting),
        tasks=tasks,
    )
