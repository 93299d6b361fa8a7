"""Red-team leftovers (3): Gemini cache listing, the server's TTL cap, storage of caches this run
did not see created, negative numbers in `runner report`, and which part a merge finds short."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from helpers import ManualClock as Clock
from helpers import serve_app
from scaleout import require_redis, start_redis
from test_explicit_cache import capped_mock, run_capped_group
from test_qa_redteam3_merge import _shards
from test_qa_redteam3_redis import delaying_proxy

from runner.cli import main
from runner.config import RunConfig
from runner.explicit_cache import CacheAPIError, CacheInfo, ExplicitCaches, group_tag
from runner.limits import RateController
from runner.models import Attempt, Job
from runner.providers import GeminiBackend, open_backend
from runner.redis_limits import RedisStore, SharedLimiter

# -- 1. a listing that pages for ever -----------------------------------------------------------


@asynccontextmanager
async def paging_server(tokens: list[str]) -> AsyncIterator[str]:
    """A Gemini-like cachedContents list whose next token after T is tokens[(i + 1) % n]:
    a server stuck on one token, or cycling through a few."""
    calls: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        got = request.query.get("pageToken", "")
        calls.append(got)
        i = tokens.index(got) if got in tokens else -1
        item = {
            "name": f"cachedContents/c{len(calls)}",
            "displayName": "runner:x:y",
            "usageMetadata": {"totalTokenCount": 5},
        }
        doc = {"cachedContents": [item], "nextPageToken": tokens[(i + 1) % len(tokens)]}
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/v1beta/cachedContents", handle)
    async with serve_app(app, "/v1beta") as base:
        yield base


async def listing_error(tokens: list[str]) -> str:
    """What a Gemini backend's ``list_caches`` raises against ``paging_server(tokens)``."""
    async with paging_server(tokens) as base:
        cfg = RunConfig(provider="gemini", base_url=base, model="gemini-2.5-flash")
        async with open_backend(cfg, base_url=base, api_key="k") as be:
            assert isinstance(be, GeminiBackend)
            with pytest.raises(CacheAPIError) as exc:
                await asyncio.wait_for(be.list_caches(), 10)
    return str(exc.value)


@pytest.mark.parametrize("tokens", [["same"], ["a+/=", "b", "c"]])
async def test_list_caches_stops_on_a_repeated_page_token(tokens: list[str]) -> None:
    err = await listing_error(tokens)
    assert "repeated nextPageToken" in err
    assert f"after {len(tokens) + 1} page(s)" in err


async def test_list_caches_stops_at_the_page_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.providers.gemini as gemini

    monkeypatch.setattr(gemini, "LIST_MAX_PAGES", 5)
    # never the same token twice: only the page cap ends it
    err = await listing_error([f"t{i}" for i in range(50)])
    assert "still a nextPageToken after 5 pages (5 caches)" in err


# -- 2. the server's TTL cap --------------------------------------------------------------------


async def test_a_server_ttl_cap_is_planned_for_every_job_keeps_the_cache(tmp_path: Path) -> None:
    """The server caps every TTL at 1 s (its create answer's expireTime says so) while the group
    runs ~2 s: the cache is extended before the server's expiry, never lost and recreated."""
    mock = capped_mock(1.0, 100.0)
    _, info = await run_capped_group(tmp_path, mock, per_group=80, concurrency=4)
    assert info["extended"] >= 1, info


# -- 3. storage of caches this run did not see created ------------------------------------------


class Store:
    """A cache store whose create can happen on the server yet time out here."""

    def __init__(self, wall: Clock) -> None:
        self.wall = wall
        self.live: dict[str, CacheInfo] = {}
        self.create_times_out = False
        self.n = 0

    def _add(self, display: str, created: float) -> CacheInfo:
        self.n += 1
        info = CacheInfo(f"cachedContents/c{self.n}", display, 10_000, created_wall=created)
        self.live[info.name] = info
        return info

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        info = self._add(display_name, self.wall.t)
        if self.create_times_out:
            raise CacheAPIError("timeout", status=None, retriable=True)
        return info

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        return self.live[name]

    async def delete_cache(self, name: str) -> None:
        self.live.pop(name, None)

    async def list_caches(self) -> list[CacheInfo]:
        return list(self.live.values())


def job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


async def test_a_timed_out_create_that_happened_is_billed_from_its_create_time() -> None:
    wall, mono = Clock(1_700_000_000.0), Clock(50.0)
    store = Store(wall)
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=mono, wall=wall)
    store.create_times_out = True
    await ec.open("g1", job(), remaining=10)
    assert ec.key("g1") is None and ec.create_failures == 1 and len(store.live) == 1
    wall.t += 120.0
    mono.t += 120.0
    await ec.shutdown()  # the final sweep finds it by the tag and deletes it
    assert not store.live and ec.leftover_deleted == 1
    assert ec.lifetimes() == [(10_000, 120.0)]
    assert ec.cost(None)["cache_seconds"] == 120.0


async def test_a_crashed_runs_leftover_is_billed_from_its_create_time() -> None:
    wall, mono = Clock(1_700_000_000.0), Clock(50.0)
    store = Store(wall)
    prefix = "runner:t:"
    # two leftovers of a crashed run for a group this run has no jobs for (deleted at the end),
    # the second a duplicate deleted at once; one for g1, adopted and used.
    store._add(prefix + "gone", wall.t - 300.0)
    store._add(prefix + "gone", wall.t - 200.0)
    store._add(prefix + group_tag("g1"), wall.t - 100.0)
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=mono, wall=wall)
    await ec.recover()
    assert ec.lifetimes() == [(10_000, 200.0)]  # the duplicate: created 200 s ago, deleted now
    await ec.open("g1", job(), remaining=10)
    assert ec.key("g1") == "cachedContents/c3" and ec.adopted == 1
    wall.t += 30.0
    mono.t += 30.0
    ec.close("g1")
    await ec.shutdown()
    assert not store.live
    assert sorted(s for _, s in ec.lifetimes()) == [130.0, 200.0, 330.0]


# -- 4. negative numbers in a latency file ------------------------------------------------------


def test_report_skips_a_record_with_a_negative_number(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lat = tmp_path / "t.jsonl"
    good = {"custom_id": "b", "outcome": "ok", "latency_ms": 5, "prompt_tokens": 3}
    bad = {"custom_id": "a", "outcome": "ok", "latency_ms": -5, "prompt_tokens": -3}
    itl = {"custom_id": "c", "outcome": "ok", "latency_ms": 5, "itl_ms": [1, -2]}
    lat.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in (good, bad, itl)))
    assert main(["report", str(lat), "--json"]) == 0
    out, err = capsys.readouterr()
    summary = orjson.loads(out)
    assert summary["tokens"]["prompt"] == 3
    assert summary["jobs"]["ok"] == 1
    assert f"{lat}:2: skipped malformed line: latency_ms is negative (-5)" in err
    assert f"{lat}:3: skipped malformed line: itl_ms is negative" in err


# -- 5. a merge part with a cut-short last line -------------------------------------------------


def test_merge_names_the_part_whose_counts_differ_and_how_to_repair_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _shards(tmp_path)
    part = tmp_path / "out" / "e.shard-1-of-2.results.jsonl"
    data = part.read_bytes()
    part.write_bytes(data[:-10])  # the last line cut short
    out = tmp_path / "m.results.jsonl"
    parts = [str(tmp_path / "out" / f"e.shard-{k}-of-2.results.jsonl") for k in range(2)]
    capsys.readouterr()
    assert main(["merge", str(out), *parts]) == 2
    err = capsys.readouterr().err
    assert "11 results but 12 latency records" in err
    n = data.count(b"\n")  # the shard's jobs: one latency record each
    assert f"{part}: {n - 1} results but {n} latency records" in err
    assert "--shard 1/2" in err
    assert "shard-0-of-2" not in err
    # the repair it names works: resuming that shard, then merging again
    cfg, jobs = tmp_path / "cfg.toml", tmp_path / "jobs.jsonl"
    args = ["run", str(jobs), "-c", str(cfg), "--progress", "off", "-q", "--shard", "1/2"]
    assert main([*args, "-o", str(tmp_path / "out" / "e.results.jsonl")]) == 0
    assert main(["merge", str(out), *parts]) == 0, capsys.readouterr().err
    ids = sorted(orjson.loads(raw)["custom_id"] for raw in out.read_bytes().splitlines())
    assert ids == sorted(f"j{i}" for i in range(12))


# -- 6. a far Redis no longer caps a process at lease / round trip ------------------------------


async def test_a_far_redis_still_gives_the_whole_shared_rate() -> None:
    """20 req/s shared, leases of 0.1 s (2 requests), Redis behind a proxy that delays every
    byte 0.1 s each way: one lease per round trip gave a fraction of the rate. The lease now
    covers two measured round trips (at most 2 s of the rate)."""
    require_redis()
    redis = start_redis([], "127.0.0.1")
    try:
        async with delaying_proxy(redis.port, 0.1) as proxied:
            store = RedisStore(f"redis://127.0.0.1:{proxied}/0", "runner:{lo3}", "p1")
            local = RateController(concurrency=64, rpm=None, tpm=None)
            lim = SharedLimiter(
                local, store, rpm=1200.0, tpm=None, lease_s=0.1, policy="fail_closed",
                log=lambda _m: None,
            )  # fmt: skip
            await asyncio.wait_for(lim.acquire(1), 20)  # connects: several round trips
            lim.release(1, Attempt(status=200))
            start = time.monotonic()
            n = 0
            while time.monotonic() - start < 5.0:
                await asyncio.wait_for(lim.acquire(1), 5)
                lim.release(1, Attempt(status=200))
                n += 1
            took = time.monotonic() - start
            report = lim.report()
            await lim.aclose()
    finally:
        redis.stop()
    rate = n / took
    # the whole rate (plus the GCRA's 1 s burst and one lease at most), not lease / round trip
    assert 18.0 <= rate <= 20.0 * (took + 1.0 + 2.0) / took, (rate, report)
    assert report["lease_span_s"] >= 0.3 and report["store_rtt_ms"] >= 150, report
