"""Explicit Gemini caches per cache group, end to end against the simulated Gemini API."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

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
FAST: dict[str, Any] = {
    "latency": "model",
    "base_ms": 5.0,
    "decode_ms_per_token": 0.5,
    "jitter": 0.0,
}


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
            line: dict[str, Any] = {
                "id": f"{cid}-q{q}",
                "cache_id": cid,
                "query": f"question {q} on {cid}?",
            }
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


def capped_mock(cap_s: float, base_ms: float, **kw: Any) -> MockConfig:
    """The simulated Gemini with no implicit cache, every TTL capped at ``cap_s`` and each
    request ``base_ms`` long (no decode time, no jitter): the expiry tests' server."""
    return MockConfig(
        gemini_implicit_cache=False,
        gemini_max_ttl_s=cap_s,
        latency="model",
        base_ms=base_ms,
        decode_ms_per_token=0.0,
        jitter=0.0,
        **kw,
    )


async def run_capped_group(
    tmp: Path, mock: MockConfig, *, per_group: int, concurrency: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One cache group of ``per_group`` jobs against ``mock``, checked for what a cache kept
    alive under the server's cap gives: exit 0, one cache created, none expired or recreated,
    none left, every job read from the cache. Returns the mock's ``gemini`` stats and the
    summary's ``explicit_caches``."""
    jobs, _ = write_jobs(tmp, groups=1, per_group=per_group)
    async with serve(mock) as url:
        outcome = await run(jobs, config(tmp, url, concurrency=concurrency))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    g, info = st["gemini"], outcome.summary["explicit_caches"]
    assert g["caches_created"] == 1 and g["caches_expired"] == 0, (g, info)
    assert info["recreated"] == 0 and g["caches_alive"] == 0, (g, info)
    lat = results(tmp / "l.jsonl")
    assert len(lat) == per_group
    assert all(r["cached_tokens"] >= 1024 for r in lat)  # no job fell back to a full prompt
    return g, info


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


async def test_cache_expiring_mid_group_is_recreated_without_a_failed_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server caps every TTL at 0.15 s while each job takes ~0.3 s, and refuses every PATCH
    (so neither a dispatch nor the refresher can keep a cache): caches keep expiring."""
    from runner.explicit_cache import CacheAPIError
    from runner.providers import GeminiBackend

    async def refused(self: GeminiBackend, name: str, *, ttl_s: float) -> Any:
        raise CacheAPIError("PATCH: 503 UNAVAILABLE", status=503, retriable=True)

    monkeypatch.setattr(GeminiBackend, "extend_cache", refused)
    jobs, _ = write_jobs(tmp_path, groups=1, per_group=8)
    async with serve(capped_mock(0.15, 300.0)) as url:
        outcome = await run(jobs, config(tmp_path, url, concurrency=1, explicit_ttl_s=0.15))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    res = results(tmp_path / "r.jsonl")
    assert len(res) == 8 and all(r["error"] is None for r in res)
    info = outcome.summary["explicit_caches"]
    assert st["gemini"]["caches_expired"] >= 1
    assert info["recreated"] >= 1
    assert st["gemini"]["caches_alive"] == 0


async def test_failed_create_falls_back_to_full_prompts(tmp_path: Path) -> None:
    jobs, _ = write_jobs(tmp_path, groups=3, per_group=5)
    # The server's minimum is above every prefix: each create is refused with 400.
    mock = MockConfig(gemini_implicit_cache=False, gemini_min_cache_tokens=100_000, **FAST)
    async with serve(mock) as url:
        outcome = await run(jobs, config(tmp_path, url))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    res = results(tmp_path / "r.jsonl")
    assert len(res) == 15 and all(r["error"] is None for r in res)
    assert outcome.summary["explicit_caches"]["create_failures"] == 3
    assert st["gemini"]["caches_created"] == 0 and st["gemini"]["requests_with_cache"] == 0


async def _post(url: str, path: str, doc: dict[str, Any]) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.post(url + path, json=doc) as r:
        assert r.status == 200, await r.text()
        data: dict[str, Any] = await r.json()
    return data


async def test_resume_reuses_live_leftovers_and_deletes_the_rest(tmp_path: Path) -> None:
    from runner.explicit_cache import group_tag, run_tag
    from runner.jobs import load_contexts, read_jobs

    jobs, ctx = write_jobs(tmp_path, groups=3, per_group=5)
    contexts = load_contexts(ctx, max_line_bytes=1 << 20)
    read = read_jobs(jobs, contexts=contexts, max_line_bytes=1 << 20)
    groups: list[str] = sorted(cast("set[str]", {j.group for j in read}))  # type: ignore[union-attr]
    tag = run_tag(tmp_path / "r.jsonl")
    mock = MockConfig(gemini_implicit_cache=False, **FAST)
    async with serve(mock) as url:
        base = url.rsplit("/v1", 1)[0] + "/v1beta"
        body = {
            "model": "models/gemini-2.5-flash",
            "systemInstruction": {"parts": [{"text": PREFIX.format(c=0)}]},
            "ttl": "600s",
        }
        # What a crashed run may leave: a cache for a group (reusable), a duplicate of it,
        # and one whose group is not in this input (to delete).
        for name in (group_tag(groups[0]), group_tag(groups[0]), "0123456789abcdef"):
            await _post(base, "/cachedContents", {**body, "displayName": f"runner:{tag}:{name}"})
        # Someone else's cache must survive.
        await _post(base, "/cachedContents", {**body, "displayName": "not ours"})
        outcome = await run(jobs, config(tmp_path, url))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    info = outcome.summary["explicit_caches"]
    assert info["adopted"] == 1 and info["created"] == 2
    assert info["leftovers_deleted"] == 2
    assert st["gemini"]["caches_alive"] == 1  # only the foreign one


async def test_guard_stop_deletes_the_caches_it_created(tmp_path: Path) -> None:
    jobs, _ = write_jobs(tmp_path, groups=4, per_group=30)
    mock = MockConfig(gemini_implicit_cache=False, **FAST)
    async with serve(mock) as url:
        outcome = await run(jobs, config(tmp_path, url, max_cost=0.002, concurrency=4))
        st = await mock_stats(url)
    assert outcome.exit_code == 3
    assert outcome.summary["explicit_caches"]["created"] >= 1
    assert st["gemini"]["caches_alive"] == 0


@pytest.fixture
def mock_root() -> Iterator[str]:
    """A simulated provider in its own process (it outlives the runs killed by the tests)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner.mock", "--port", "0", "--base-ms", "30",
         "--decode-ms-per-token", "0", "--no-gemini-implicit-cache"],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        yield proc.stdout.readline().decode().strip().rsplit("/v1", 1)[0]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def gemini_stats(root: str) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(urllib.request.urlopen(root + "/stats").read())["gemini"]
    return data


def cli_args(root: str, jobs: Path, ctx: Path) -> list[str]:
    return [
        sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx),
        "--provider", "gemini", "--base-url", root + "/v1beta", "--progress", "off",
        "--model", "gemini-2.5-flash", "--concurrency", "8",
    ]  # fmt: skip


def test_kill_9_then_rerun_gives_every_job_once_and_leaves_no_cache(
    tmp_path: Path, mock_root: str
) -> None:
    jobs, ctx = write_jobs(tmp_path, groups=8, per_group=50)
    args = cli_args(mock_root, jobs, ctx)
    rng = random.Random(15)
    left = []
    for _ in range(4):
        run_proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
        # Kill at a random moment while the run holds caches (creates may be in flight too).
        deadline = time.monotonic() + 30
        while run_proc.poll() is None and time.monotonic() < deadline:
            if gemini_stats(mock_root)["caches_alive"]:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        run_proc.kill()
        run_proc.wait()
        left.append(gemini_stats(mock_root)["caches_alive"])
    assert max(left) > 0  # the kills did leave caches behind for the re-runs to clean
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    g = gemini_stats(mock_root)
    ids = Counter(r["custom_id"] for r in results(tmp_path / "jobs.results.jsonl"))
    assert len(ids) == 400 and set(ids.values()) == {1}
    assert g["caches_alive"] == 0, g
    assert g["caches_created"] >= 8


async def test_storage_is_billed_for_the_groups_running_time_only(tmp_path: Path) -> None:
    """Groups run in waves (2 open at a time): each cache must die with its group, not at the
    end of the run, so cache-seconds stay within 1.5x the groups' running time."""
    jobs, _ = write_jobs(tmp_path, groups=6, per_group=10)
    mock = MockConfig(
        gemini_implicit_cache=False, latency="model", base_ms=40.0, decode_ms_per_token=0.0
    )
    async with serve(mock) as url:
        cfg = config(tmp_path, url, concurrency=4, max_active_groups=2)
        outcome = await run(jobs, cfg)
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in results(tmp_path / "l.jsonl"):
        g = r["cache_id"]
        first[g] = min(first.get(g, r["started_at"]), r["started_at"])
        last[g] = max(last.get(g, r["ended_at"]), r["ended_at"])
    running = sum(last[g] - first[g] for g in first)
    lives = st["gemini"]["lifetimes"]
    assert len(lives) == 6
    cache_s = sum(x["end"] - x["start"] for x in lives)
    assert cache_s <= 1.5 * running, (cache_s, running)
    # and the summary bills storage from the same lifetimes
    assert outcome.summary["explicit_caches"]["cache_seconds"] == pytest.approx(cache_s, rel=0.2)


def test_sigint_drains_and_deletes_the_caches(tmp_path: Path, mock_root: str) -> None:
    jobs, ctx = write_jobs(tmp_path, groups=8, per_group=40)
    proc = subprocess.Popen(cli_args(mock_root, jobs, ctx), stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while gemini_stats(mock_root)["caches_alive"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # wait until the run holds caches
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    g = gemini_stats(mock_root)
    assert g["caches_created"] >= 1 and g["caches_alive"] == 0


def test_caches_command_lists_and_deletes_leftovers(tmp_path: Path, mock_root: str) -> None:
    from runner.explicit_cache import run_tag

    out = tmp_path / "jobs.results.jsonl"
    tag = run_tag(out)
    base = mock_root + "/v1beta"
    body = {
        "model": "models/gemini-2.5-flash",
        "systemInstruction": {"parts": [{"text": PREFIX.format(c=0)}]},
    }
    for name in (f"runner:{tag}:aaaa", f"runner:{tag}:bbbb", "someone else's"):
        req = urllib.request.Request(
            base + "/cachedContents",
            data=orjson.dumps({**body, "displayName": name}),
            method="POST",
            headers={"content-type": "application/json"},
        )
        urllib.request.urlopen(req).read()
    cmd = [sys.executable, "-m", "runner", "caches", str(out), "--provider", "gemini"]
    cmd += ["--base-url", base]
    listed = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("cachedContents/") == 2 and "someone" not in listed.stdout
    assert gemini_stats(mock_root)["caches_alive"] == 3  # listing deletes nothing
    deleted = subprocess.run([*cmd, "--delete"], capture_output=True, text=True, timeout=60)
    assert deleted.returncode == 0, deleted.stderr
    assert gemini_stats(mock_root)["caches_alive"] == 1  # only the foreign one is left


async def test_batch_shape_jobs_use_explicit_caches_too(tmp_path: Path) -> None:
    """OpenAI Batch lines (system + question) group automatically and translate to Gemini."""
    jobs = tmp_path / "batch.jsonl"
    with jobs.open("wb") as fh:
        for i in range(12):
            system = PREFIX.format(c=i % 2)
            body = {
                "model": "gemini-2.5-flash",
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": f"question {i}?"},
                ],
                "max_tokens": 3,
            }
            line = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
            fh.write(orjson.dumps({**line, "body": body}) + b"\n")
    async with serve(MockConfig(gemini_implicit_cache=False, **FAST)) as url:
        outcome = await run(jobs, config(tmp_path, url, contexts=None))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    res = results(tmp_path / "r.jsonl")
    assert sorted(r["custom_id"] for r in res) == sorted(f"r{i}" for i in range(12))
    usage = [r["response"]["body"]["usageMetadata"] for r in res]
    assert all(u["cachedContentTokenCount"] >= 1024 for u in usage)
    assert all(r["response"]["body"]["candidates"][0]["finishReason"] for r in res)
    assert st["gemini"]["caches_created"] == 2 and st["gemini"]["caches_alive"] == 0
