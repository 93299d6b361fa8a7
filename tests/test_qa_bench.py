"""Found by QA: ``runner bench --jobs F`` without ``--requests`` or ``--duration`` never ended:
the jobs file was cycled for ever (a two-line file gave 23,808 requests in 8 s), though
docs/BENCH.md says "a jobs file is sent once by default" and shows that very command. Against a
paid provider that is spending without bound. A jobs file is now sent once unless
``--requests`` (cycled up to N) or ``--duration`` (cycled until the time is up) asks for more."""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import orjson

from runner import bench


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    return p.parse_args(list(argv))


def _jobs(tmp: Path, n: int) -> Path:
    path = tmp / "jobs.jsonl"
    path.write_bytes(
        b"".join(orjson.dumps({"id": f"j{i}", "query": "q"}) + b"\n" for i in range(n))
    )
    return path


def _measured(spec: bench.BenchSpec, cap: int = 1000) -> list[str]:
    return [j.custom_id for j in itertools.islice(spec.make_jobs(spec.requests, ""), cap)]


def test_a_jobs_file_is_sent_once_by_default(tmp_path: Path) -> None:
    spec = bench.build_spec(parse("--jobs", str(_jobs(tmp_path, 3))))
    assert _measured(spec) == ["j0", "j1", "j2"]


def test_requests_and_duration_still_cycle_the_file(tmp_path: Path) -> None:
    jobs = str(_jobs(tmp_path, 2))
    spec = bench.build_spec(parse("--jobs", jobs, "--requests", "5"))
    assert _measured(spec) == ["j0", "j1", "j0#1", "j1#1", "j0#2"]
    spec = bench.build_spec(parse("--jobs", jobs, "--duration", "1"))
    assert len(_measured(spec, cap=50)) == 50  # until the deadline stops the workers
    warm = list(spec.make_jobs(3, "warmup-"))  # warm-up asks for its own count
    assert [j.custom_id for j in warm] == ["warmup-j0", "warmup-j1", "warmup-j0#1"]


def test_bench_over_a_jobs_file_ends(tmp_path: Path) -> None:
    """The whole command, on the built-in mock: it ends, one record per line of the file."""
    jobs = _jobs(tmp_path, 4)
    latency = tmp_path / "lat.jsonl"
    ns = parse("--jobs", str(jobs), "--mock-latency", "zero", "--latency", str(latency))
    assert bench.main(ns) == 0
    assert len(latency.read_bytes().splitlines()) == 4
