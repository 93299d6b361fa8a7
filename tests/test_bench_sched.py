"""The benchmark's reading of ``perf sched`` traces (benchmarks/_sched.py), on fixed text.

``bench_scaleout.py workers --sched-trace`` reports how much of the cores' idle time passed
while a process waited for a core elsewhere; these pin that arithmetic down without perf.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_sched", ROOT / "benchmarks" / "_sched.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_sched"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


sched = _load()

HEADER = """\
           time    cpu  task name                       wait time  sch delay   run time  state
                        [tid/pid]                          (msec)     (msec)     (msec)
--------------- ------  ------------------------------  ---------  ---------  ---------  -----
"""

# CPU 1: process 20 runs 10.000-10.004 and is preempted (R) by 30 (woken at 10.003, queued
# 1 ms), which runs 10.004-10.008; 20 runs again 10.008-10.010. CPU 0: process 40 runs
# 10.000-10.004, its thread 41 10.004-10.005, then the CPU idles 10.005-10.010, while 20
# waits on CPU 1 until 10.008: 3 ms of idle core with a process waiting for one.
TRACE = (
    HEADER
    + """\
   10.004000 [0001]  python[20]                          0.000      0.000      4.000      R
   10.004000 [0000]  python[40]                          0.000      0.000      4.000      S
   10.005000 [0000]  libuv-worker[41/40]                 0.000      0.000      1.000      S
   10.008000 [0001]  python[30]                          0.000      1.000      4.000      S
   10.010000 [0001]  python[20]                          4.000      0.000      2.000      S
   10.010000 [0000]  <idle>                              0.000      0.000      5.000      I
"""
)


def test_idle_while_a_process_waits_elsewhere() -> None:
    s = sched.parse(TRACE)
    assert s.cpus == 2
    assert s.wall_s == pytest.approx(0.010)
    assert s.idle_s == pytest.approx(0.005)
    assert s.idle_while_waiting_s == pytest.approx(0.003)
    assert s.tasks[20].cpu_s == pytest.approx(0.006)
    assert s.tasks[20].waited_s == pytest.approx(0.004)  # preempted: 10.004 to 10.008
    assert s.tasks[30].waited_s == pytest.approx(0.001)  # woken, queued behind 20
    assert s.tasks[40].cpu_s == pytest.approx(0.005)  # its thread counts to the process
    assert s.tasks[40].comm == "python"


def test_only_the_idle_time_that_overlaps_a_wait_counts() -> None:
    # CPU 0: 20 preempted at 10.002 by 30, back at 10.004; idle from 10.006. CPU 1: idle until
    # 10.003, then 50. Of CPU 1's 3 ms idle, 1 ms (10.002-10.003) overlaps 20's wait.
    text = HEADER + (
        "10.002000 [0000] python[20] 0.000 0.000 2.000 R\n"
        "10.003000 [0001] <idle> 0.000 0.000 3.000 I\n"
        "10.004000 [0000] python[30] 0.000 0.000 2.000 S\n"
        "10.006000 [0000] python[20] 2.000 0.000 2.000 S\n"
        "10.008000 [0000] <idle> 0.000 0.000 2.000 I\n"
        "10.008000 [0001] python[50] 0.000 0.000 5.000 S\n"
    )
    s = sched.parse(text)
    assert s.idle_s == pytest.approx(0.005)
    assert s.idle_while_waiting_s == pytest.approx(0.001)
    assert s.tasks[20].waited_s == pytest.approx(0.002)


def test_a_wait_counts_once_however_many_cpus_idle_beside_it() -> None:
    # 20 is preempted on CPU 0 at 10.002 and next runs on CPU 1 at 10.006; both CPUs idle
    # 10.004-10.006 (30 has left CPU 0): 2 ms with one process waiting, not 4.
    text = HEADER + (
        "10.002000 [0000] python[20] 0.000 0.000 2.000 R\n"
        "10.004000 [0000] python[30] 0.000 0.000 2.000 S\n"
        "10.004000 [0001] python[50] 0.000 0.000 4.000 S\n"
        "10.006000 [0000] <idle> 0.000 0.000 2.000 I\n"
        "10.006000 [0001] <idle> 0.000 0.000 2.000 I\n"
        "10.008000 [0001] python[20] 4.000 0.000 2.000 S\n"
    )
    s = sched.parse(text)
    assert s.idle_s == pytest.approx(0.004)
    assert s.idle_while_waiting_s == pytest.approx(0.002)


def test_no_events_is_an_error() -> None:
    with pytest.raises(ValueError):
        sched.parse(HEADER)


def test_command_tree_follows_forks_from_the_command_perf_started() -> None:
    script = """\
 perf    19 [001] 9.9: sched:sched_waking: comm=perf-exec pid=20 prio=120 target_cpu=000
 python  20 [001] 10.0: sched:sched_process_fork: comm=python pid=20 child_comm=python child_pid=30
 python  30 [001] 10.1: sched:sched_process_fork: comm=python pid=30 child_comm=python child_pid=31
 python  40 [000] 10.1: sched:sched_process_fork: comm=python pid=40 child_comm=python child_pid=41
"""
    assert sched.tree(script) == {20, 30, 31}
