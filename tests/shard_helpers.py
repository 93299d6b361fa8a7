"""Set-up shared by the tests that run shards in this process and merge them."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner import runtime
from runner.cli import main
from runner.config import RunConfig
from runner.mock import MockConfig


def fast_mock(monkeypatch: pytest.MonkeyPatch, defaults: Mapping[str, Any]) -> None:
    """In-process runs get the built-in mock with ``defaults`` (faster than its own) unless a
    config says otherwise. For an autouse fixture: tests about shards and merges need answers,
    not the default mock's realistic waits."""
    real = runtime.mock_config

    def fast(config: RunConfig, given: Mapping[str, Any] | None = None) -> MockConfig:
        return real(config, {**defaults, **(given or {})})

    monkeypatch.setattr(runtime, "mock_config", fast)


def query_jobs(d: Path, n: int, query: str = "q{i}") -> Path:
    """``d/jobs.jsonl``: ``n`` jobs, ids ``j0``.., each asking ``query.format(i=i)``."""
    jobs = d / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(
            orjson.dumps({"id": f"j{i}", "query": query.format(i=i)}) + b"\n" for i in range(n)
        )
    )
    return jobs


def run_shard(jobs: Path, k: int, n: int, *flags: str, codes: Collection[int] = (0,)) -> None:
    """``runner run JOBS --progress off FLAGS --shard K/N`` in this process; its exit code is
    one of ``codes``."""
    assert main(["run", str(jobs), "--progress", "off", *flags, "--shard", f"{k}/{n}"]) in codes


def run_shards(jobs: Path, n: int, *flags: str, codes: Collection[int] = (0,)) -> list[Path]:
    """:func:`run_shard` for every shard K of N; their results files, by the default names."""
    for k in range(n):
        run_shard(jobs, k, n, *flags, codes=codes)
    return [jobs.with_name(f"{jobs.stem}.shard-{k}-of-{n}.results.jsonl") for k in range(n)]
