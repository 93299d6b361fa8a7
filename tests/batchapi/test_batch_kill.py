"""``kill -9`` of ``runner run --via batch`` at every step, then a re-run: no job is submitted
twice (counted at the mock), every job ends with exactly one result."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchapi.conftest import assert_each_job_once, make_inputs, read_jsonl
from helpers import mock_process

from runner.sinks import read_meta_section

PY = sys.executable
N_CTX, N_Q = 3, 4


@pytest.fixture
def mock_url() -> Iterator[str]:
    # One server per test: an Anthropic batch carries no metadata, so a crashed create is found
    # again by its time and request count, and an earlier test's batch must not be there to match.
    batch = orjson.dumps({"duration_s": 0.4}).decode()
    with mock_process("--latency", "zero", "--batch", batch) as url:
        yield url


def mock_batch_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as resp:
        stats: dict[str, Any] = orjson.loads(resp.read())["batch"]
    return stats


def setup(tmp: Path, url: str, shape: str) -> list[str]:
    jobs, ctx = make_inputs(tmp, N_CTX, N_Q)
    (tmp / "c.toml").write_text(
        f'provider = "{shape}"\nbase_url = "{url}"\npoll_interval = 0.03\nbatch_max_requests = 5\n'
    )
    return ["run", str(jobs), "--contexts", str(ctx), "-c", str(tmp / "c.toml"), "--via", "batch"]


def cli(
    args: list[str], env: dict[str, str] | None = None, *, quiet: bool = False
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [PY, "-m", "runner", *args, "--progress", "off"],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL if quiet else subprocess.PIPE,
    )


def check(tmp: Path, url: str, shape: str, before: dict[str, Any]) -> None:
    assert_each_job_once(tmp / "jobs.jsonl")
    after = mock_batch_stats(url)
    chunks = read_meta_section(tmp / "jobs.results.jsonl", "batch")["chunks"]
    # Every job went into exactly one created batch, and every batch created is journaled.
    assert after["requests"] - before["requests"] == N_CTX * N_Q
    created = after["creates"][shape] - before["creates"][shape]
    assert created == len({c["batch_id"] for c in chunks if c["batch_id"]}) == len(chunks)


# Anthropic batches have no upload step: that pair is not generated.
_STEPS = [
    (shape, point)
    for shape in ("openai", "anthropic")
    for point in ("upload", "create", "poll", "download")
    if not (shape == "anthropic" and point == "upload")
]


@pytest.mark.parametrize(("shape", "point"), _STEPS)
def test_kill_9_at_each_step_then_rerun(
    tmp_path: Path, mock_url: str, shape: str, point: str
) -> None:
    args = setup(tmp_path, mock_url, shape)
    before = mock_batch_stats(mock_url)
    proc = cli(args, {"RUNNER_BATCH_KILL_AT": point})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    if point == "poll":
        # `runner status --live` asks the provider and changes nothing.
        results = tmp_path / "jobs.results.jsonl"
        meta = tmp_path / "jobs.results.jsonl.meta.json"
        before_files = meta.read_bytes(), results.read_bytes()
        cfg = str(tmp_path / "c.toml")
        status = [PY, "-m", "runner", "status", str(results), "--live", "-c", cfg]
        out = subprocess.run(status, capture_output=True, text=True, timeout=60)
        assert out.returncode == 1, out.stderr  # the run was killed: it never ended
        assert "(live)" in out.stdout and "not done" in out.stdout, out.stdout
        assert (meta.read_bytes(), results.read_bytes()) == before_files
    proc = cli(args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    check(tmp_path, mock_url, shape, before)


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
def test_kill_9_at_random_moments_then_rerun(tmp_path: Path, mock_url: str, shape: str) -> None:
    args = setup(tmp_path, mock_url, shape)
    before = mock_batch_stats(mock_url)
    rng = random.Random(shape)
    kills = 0
    for _ in range(8):
        proc = cli(args, quiet=True)
        try:
            proc.wait(rng.uniform(0.2, 1.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            kills += 1
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
        time.sleep(0.05)
    else:
        proc = cli(args, quiet=True)
        assert proc.wait(60) == 0
    assert kills >= 1
    check(tmp_path, mock_url, shape, before)


def create_foreign_anthropic_batch(url: str, n: int) -> str:
    """Another run's batch of ``n`` requests, created through the same account."""
    body = {
        "requests": [
            {
                "custom_id": f"foreign-{i}",
                "params": {
                    "model": "mock-1",
                    "max_tokens": 5,
                    "messages": [{"role": "user", "content": f"someone else's question {i}"}],
                },
            }
            for i in range(n)
        ]
    }
    req = urllib.request.Request(
        url + "/messages/batches",
        data=orjson.dumps(body),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return str(orjson.loads(resp.read())["id"])


def test_a_foreign_batch_of_the_same_size_is_not_adopted(tmp_path: Path, mock_url: str) -> None:
    # Found in review: after a crash between journaling `creating` and the create itself, the
    # next run adopted any batch created since with the same request count (Anthropic batches
    # carry no metadata), e.g. another run's. Now such a batch is checked against the ids the
    # chunk sent once it ends, set aside when they differ, and the chunk is submitted anew.
    args = setup(tmp_path, mock_url, "anthropic")
    before = mock_batch_stats(mock_url)
    proc = cli(args, {"RUNNER_BATCH_KILL_AT": "creating"})
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    results = tmp_path / "jobs.results.jsonl"
    (creating,) = [
        c
        for c in read_meta_section(results, "batch")["chunks"]
        if c["batch_id"] is None and c["state"] == "creating"
    ]
    assert mock_batch_stats(mock_url)["creates"]["anthropic"] == before["creates"]["anthropic"]
    foreign = create_foreign_anthropic_batch(mock_url, len(creating["ids"]))
    proc = cli(args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert_each_job_once(tmp_path / "jobs.jsonl")
    chunks = read_meta_section(results, "batch")["chunks"]
    assert foreign not in {c["batch_id"] for c in chunks}
    mine = next(c for c in chunks if c["key"] == creating["key"])
    assert mine["foreign"] == [foreign] and mine["attempt"] == 1 and mine["state"] == "done"
    assert all(
        r["custom_id"] and not r["custom_id"].startswith("foreign") for r in read_jsonl(results)
    )
    # The chunk was submitted once, after the foreign batch was set aside; nothing twice.
    after = mock_batch_stats(mock_url)
    assert after["requests"] - before["requests"] == N_CTX * N_Q + len(creating["ids"])
    created = after["creates"]["anthropic"] - before["creates"]["anthropic"] - 1
    assert created == len({c["batch_id"] for c in chunks if c["batch_id"]}) == len(chunks)
