"""The collector stays out of the way at many request slots (runner.gcpolicy): the young
threshold of `runner run` and `runner bench` grows with their slots; `runner mock` sets its own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import PY, mock_process

from runner import gcpolicy

# Runs `runner ARGS` in a child, as a process of its own (main() without argv), and reports
# from inside it how often the collector ran.
_COUNTING = """
import gc, json, sys
from runner import cli
seen = {0: 0, 1: 0, 2: 0}
def count(phase, info):
    if phase == "start":
        seen[info["generation"]] += 1
gc.callbacks.append(count)
sys.argv = ["runner", *sys.argv[1:]]
code = cli.main()
print(json.dumps({"code": code, "collections": seen, "threshold": gc.get_threshold()[0]}))
"""


def _run(tmp_path: Path, url: str, concurrency: int, jobs: int) -> dict[str, object]:
    path = tmp_path / "jobs.jsonl"
    path.write_text(
        "".join(json.dumps({"id": f"q{i}", "query": f"question {i}"}) + "\n" for i in range(jobs))
    )
    args = [
        "run", str(path), "--provider", "openai", "--base-url", url, "--concurrency",
        str(concurrency), "--progress", "off", "--quiet", "--no-resume",
        "-o", str(tmp_path / "out.results.jsonl"),
    ]  # fmt: skip
    return _count(*args)


def _count(*args: str) -> dict[str, object]:
    done = subprocess.run([PY, "-c", _COUNTING, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


def test_the_threshold_follows_the_request_slots() -> None:
    assert gcpolicy.gen0_threshold(1) == gcpolicy.GEN0_FLOOR
    assert gcpolicy.gen0_threshold(64) == gcpolicy.GEN0_FLOOR
    assert gcpolicy.gen0_threshold(512) == 512 * gcpolicy.GEN0_PER_SLOT
    assert gcpolicy.gen0_threshold(10**6) == gcpolicy.GEN0_MAX


def test_many_slots_do_not_make_the_collector_run_every_few_turns(tmp_path: Path) -> None:
    # 3,000 answers at 512 slots: with the fixed threshold of 10,000 the young generation was
    # collected 11 times (the answers of hundreds of slots land in one turn of the loop, and
    # the frees of objects that survived a collection are not taken off the count); with a
    # threshold that grows with the slots, once or twice.
    with mock_process("--latency", "zero") as url:
        report = _run(tmp_path, url, 512, 3000)
    assert report["code"] == 0
    assert report["threshold"] == gcpolicy.gen0_threshold(512)
    collections = report["collections"]
    assert isinstance(collections, dict)
    assert collections["0"] <= 3, collections
    assert collections["1"] == collections["2"] == 0, collections


def test_a_benchmark_at_many_slots_is_not_paused_by_its_own_collector() -> None:
    # `runner bench` times every request: a collection in the middle of one is counted as the
    # server's time. 2,000 requests at 512 slots: 60-odd collections with CPython's default,
    # one or two middle and full ones among them (pauses of 70-130 ms at 10,000 requests).
    with mock_process("--latency", "zero") as url:
        report = _count(
            "bench", "--base-url", url, "--model", "mock-1", "--concurrency", "512",
            "--requests", "2000", "--output-tokens", "4",
        )  # fmt: skip
    assert report["code"] == 0
    assert report["threshold"] == gcpolicy.gen0_threshold(512)
    collections = report["collections"]
    assert isinstance(collections, dict)
    assert collections["0"] <= 3, collections


# `runner mock` in a child that says on SIGUSR1 how often its collector has run so far.
_MOCK_COUNTING = """
import argparse, gc, signal, sys
from runner.mock.cli import add_arguments, main
seen = [0]
gc.callbacks.append(lambda phase, info: seen.__setitem__(0, seen[0] + (phase == "start")))
signal.signal(signal.SIGUSR1, lambda *_: print("collections", seen[0], file=sys.stderr, flush=True))
parser = argparse.ArgumentParser()
add_arguments(parser)
raise SystemExit(main(parser.parse_args(sys.argv[1:])))
"""


def test_the_mock_serves_many_connections_without_running_its_collector_every_few_turns(
    tmp_path: Path,
) -> None:
    # 3,000 requests from 512 connections: with CPython's default threshold the mock's
    # collector ran about 45 times (1 s of its CPU per 20,000 requests at 1,024 connections).
    import signal
    import time

    with subprocess.Popen(
        [PY, "-c", _MOCK_COUNTING, "--port", "0", "--latency", "zero"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as mock:
        assert mock.stdout is not None and mock.stderr is not None
        err = mock.stderr

        def collections() -> int:
            mock.send_signal(signal.SIGUSR1)
            line = err.readline().split()
            assert line[0] == "collections", line
            return int(line[1])

        try:
            url = mock.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:"), url
            time.sleep(0.1)
            before = collections()
            report = _run(tmp_path, url, 512, 3000)
            assert report["code"] == 0
            assert collections() - before <= 2
        finally:
            mock.terminate()
            mock.wait(30)
