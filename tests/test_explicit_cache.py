"""Explicit Gemini caches per cache group, end to end against the simulated Gemini API."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from runner.api import run
from runner.config import RunConfig
from runner.mock import MockConfig, serve
from runner.models import Price
from runner.sinks import MetaCacheJournal

PREFIX = "Clause {c}: the supplier shall indemnify the customer against all losses. " * 80
PRICE = Price(input=0.30, cached_input=0.03, output=2.50, cache_storage=1.0)
FAST = {"latency": "model", "base_ms": 5.0, "decode_ms_per_token": 0.5, "jitter": 0.0}


def write_jobs(
    tmp: Path, groups: int, per_group: int, *, seed: int = 1, small: int = 0
) -> tuple[Path, Path]:
    ctx = tmp / "contexts.jsonl"
    jobs = tmp / "jobs.jsonl"
    with ctx.open("wb") as fh:
        for c in range(groups):
            fh.write(orjson.dumps({"cache_id": f"doc{c}", "system": PREFIX.format(c=c)}) + b"\n")
        for c in range(small):
            fh.write(orjson.dumps({"cache_id": f"tiny{c}", "system": f"Be brief {c}."}) + b"\n")
    lines = [(f"doc{c}", q) for c in range(groups) for q in range(per_group)]
    lines += [(f"tiny{c}", q) for c in range(small) for q in range(per_group)]
    random.Random(seed).shuffle(lines)
    with jobs.open("wb") as fh:
        for cid, q in lines:
            line = {"id": f"{cid}-q{q}", "cache_id": cid, "query": f"question {q} on {cid}?"}
            line["params"] = {"max_tokens": 4}
            fh.write(orjson.dumps(line) + b"\n")
    return jobs, ctx


def config(tmp: Path, url: str, **kw: Any) -> RunConfig:
    base: dict[str, Any] = {
        "provider": "gemini",
        "base_url": url.rsplit("/v1", 1)[0] + "/v1beta",
        "model": "gemini-2.5-flash",
        "concurrency": 16,
        "progress": "off",
        "output": tmp / "r.jsonl",
        "latency": tmp / "l.jsonl",
        "summary": tmp / "s.json",
        "contexts": tmp / "contexts.jsonl",
        "prices": {"gemini-2.5-flash": PRICE},
        "min_cacheable_tokens": 1024,
    }
    base.update(kw)
    return RunConfig(**base)


async def mock_stats(url: str) -> dict[str, Any]:
    root = url.rsplit("/v1", 1)[0]
    async with aiohttp.ClientSession() as s, s.get(root + "/stats") as r:
        data: dict[str, Any] = await r.json()
    return data


def results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_explicit_caches_cover_every_group_and_none_is_left(tmp_path: Path) -> None:
    jobs, _ = write_jobs(tmp_path, groups=6, per_group=12, small=1)
    mock = MockConfig(gemini_implicit_cache=False, **FAST)
    async with serve(mock) as url:
        outcome = await run(jobs, config(tmp_path, url))
        st = await mock_stats(url)
    res = results(tmp_path / "r.jsonl")
    assert outcome.exit_code == 0
    assert Counter(r["custom_id"] for r in res) == Counter(
        line["id"] for line in map(orjson.loads, jobs.read_bytes().splitlines())
    )
    g = st["gemini"]
    assert g["caches_created"] == 6  # the tiny group is below the minimum: no cache
    assert g["caches_alive"] == 0
    assert g["caches_deleted"] == 6
    # every job of a big group was billed its prefix as cached
    lat = {r["custom_id"]: r for r in results(tmp_path / "l.jsonl")}
    big = [r for cid, r in lat.items() if cid.startswith("doc")]
    assert all(r["cached_tokens"] and r["cached_tokens"] >= 1024 for r in big)
    assert all(not r["cached_tokens"] for cid, r in lat.items() if cid.startswith("tiny"))
    body = res[0]["response"]["body"]
    assert "candidates" in body and "usageMetadata" in body
    cost = outcome.summary["cost"]
    assert cost["storage"] > 0 and cost["cache_create"] > 0
    assert cost["saving_net"] < cost["saving"]
    live, deleted = MetaCacheJournal(tmp_path / "r.jsonl").names()
    assert live == [] and len(deleted) == 6
