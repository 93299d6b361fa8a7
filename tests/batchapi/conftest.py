"""Shared helpers for the batch API tests: inputs, configs, an in-process mock, output readers."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.config import RunConfig
from runner.mock import MockConfig
from runner.mock.server import MockServer
from runner.models import Price

WORDS = "indemnity liability warranty termination notice assignment payment audit".split()
PRICE = Price(input=1.0, output=4.0, cached_input=0.1, cache_write=1.25)


def make_inputs(tmp: Path, n_ctx: int, n_q: int, *, seed: int = 7) -> tuple[Path, Path]:
    """``n_ctx`` contexts of ~1,300 tokens (cacheable), ``n_q`` shuffled questions each, with a
    per-job ``max_tokens`` so a result can be matched to its job by its completion tokens."""
    rng = random.Random(seed)
    ctx = tmp / "contexts.jsonl"
    jobs = tmp / "jobs.jsonl"
    with ctx.open("wb") as fh:
        for c in range(n_ctx):
            words = [f"Contract {c}."]
            while sum(len(w) + 1 for w in words) < 1300 * 4:
                words.append(rng.choice(WORDS))
            fh.write(orjson.dumps({"cache_id": f"ctx-{c}", "system": " ".join(words)}) + b"\n")
    pairs = [(c, q) for c in range(n_ctx) for q in range(n_q)]
    rng.shuffle(pairs)
    with jobs.open("wb") as fh:
        for i, (c, q) in enumerate(pairs):
            line = {
                "id": f"c{c}-q{q}",
                "cache_id": f"ctx-{c}",
                "query": f"Question {q}: what does clause {q} say?",
                "params": {"max_tokens": 1 + i % 9},
            }
            fh.write(orjson.dumps(line) + b"\n")
    return jobs, ctx


def batch_config(url: str, provider: str, ctx: Path, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "provider": provider,
        "base_url": url,
        "model": "mock-1",
        "contexts": ctx,
        "via": "batch",
        "poll_interval": 0.02,
        "progress": "off",
        "prices": {"mock-1": PRICE},
    }
    base.update(kw)
    return RunConfig(**base)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def job_max_tokens(jobs: Path) -> dict[str, int]:
    return {j["id"]: j["params"]["max_tokens"] for j in read_jsonl(jobs)}


def assert_each_job_once(jobs: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every job has exactly one result line and one latency line."""
    want = sorted(job_max_tokens(jobs))
    results = read_jsonl(jobs.with_name("jobs.results.jsonl"))
    latency = read_jsonl(jobs.with_name("jobs.latency.jsonl"))
    assert sorted(r["custom_id"] for r in results) == want
    assert sorted(r["custom_id"] for r in latency) == want
    return results, latency


MockFactory = Callable[..., Any]


@pytest.fixture
async def mock() -> AsyncIterator[MockFactory]:
    """``await mock(batch={...}, **mock_options)`` starts a mock; returns (server, base URL)."""
    started: list[MockServer] = []

    async def start(batch: dict[str, Any] | None = None, **options: Any) -> tuple[MockServer, str]:
        b = {"duration_s": 0.3, **(batch or {})}
        server = MockServer(MockConfig(latency="zero", batch=b, **options))
        url = await server.start()
        started.append(server)
        return server, url

    yield start
    for s in started:
        await s.close()
