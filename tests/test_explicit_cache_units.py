"""ExplicitCaches against an in-memory cache store with a controlled clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from helpers import ManualClock as Clock

from runner.config import RunConfig
from runner.explicit_cache import (
    MAX_RECREATES,
    CacheAPIError,
    CacheInfo,
    ExplicitCaches,
    group_tag,
    storage_cost,
)
from runner.jobs import load_contexts
from runner.models import Job, Price
from runner.validate import validate_file


class Store:
    def __init__(self) -> None:
        self.ops: list[tuple[str, str, float]] = []
        self.live: dict[str, str] = {}
        self.fail_create = False
        self.n = 0

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        if self.fail_create:
            raise CacheAPIError("429 RESOURCE_EXHAUSTED", status=429, retriable=True)
        self.n += 1
        name = f"cachedContents/c{self.n}"
        self.live[name] = display_name
        self.ops.append(("create", name, ttl_s))
        return CacheInfo(name, display_name, 2000, ttl_s=ttl_s)

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        if name not in self.live:
            raise CacheAPIError("404 NOT_FOUND", status=404, missing=True)
        self.ops.append(("patch", name, ttl_s))
        return CacheInfo(name, self.live[name], 2000, ttl_s=ttl_s)

    async def delete_cache(self, name: str) -> None:
        self.live.pop(name, None)
        self.ops.append(("delete", name, 0.0))

    async def list_caches(self) -> list[CacheInfo]:
        return [CacheInfo(n, d, 2000) for n, d in self.live.items()]


class Journal:
    def __init__(self) -> None:
        self.created: list[str] = []
        self.deleted: list[str] = []

    def record(self, created: list[str], deleted: list[str]) -> None:
        self.created += created
        self.deleted += deleted


def job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


async def settle(caches: ExplicitCaches) -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_create_extend_delete_with_ttl_covering_the_group() -> None:
    store, clock, journal = Store(), Clock(), Journal()
    ec = ExplicitCaches(
        store, tag="t1", concurrency=4, min_ttl_s=60.0, journal=journal, clock=clock
    )
    await ec.open("g1", job(), remaining=400)
    name = ec.key("g1")
    assert name == "cachedContents/c1" and journal.created == [name]
    assert store.live[name] == f"runner:t1:{group_tag('g1')}"
    # 400 jobs at 4 in parallel at the assumed 5 s each: 500 s, times the margin of 2.
    assert store.ops[0] == ("create", name, 1000.0)
    ec.touch("g1", remaining=300)  # far from expiry: nothing to do
    await settle(ec)
    assert [op for op, *_ in store.ops] == ["create"]
    clock.t += 990.0  # close to the expiry: extend
    ec.touch("g1", remaining=10)
    ec.touch("g1", remaining=10)  # at most one extend in flight
    await settle(ec)
    assert [op for op, *_ in store.ops] == ["create", "patch"]
    clock.t += 5.0
    ec.close("g1")
    await settle(ec)
    assert store.ops[-1] == ("delete", name, 0.0) and not store.live
    assert journal.deleted == [name]
    assert ec.lifetimes() == [(2000, 995.0)]


async def test_lost_cache_is_recreated_then_the_group_falls_back() -> None:
    store, clock = Store(), Clock()
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=clock)
    await ec.open("g1", job(), remaining=10)
    for i in range(MAX_RECREATES):
        name = ec.key("g1")
        assert name is not None
        store.live.pop(name)  # expired on the server
        await ec.lost("g1", name, job(), remaining=5)
        assert ec.key("g1") == f"cachedContents/c{i + 2}"
    name = ec.key("g1")
    assert name is not None
    await ec.lost("g1", name, job(), remaining=5)
    assert ec.key("g1") is None  # full prompts from now on
    assert ec.recreated == MAX_RECREATES


async def test_failed_create_means_full_prompts_and_shutdown_deletes_all() -> None:
    store, clock = Store(), Clock()
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=clock)
    store.fail_create = True
    await ec.open("g1", job(), remaining=10)
    assert ec.key("g1") is None and ec.create_failures == 1
    store.fail_create = False
    await ec.open("g2", job(), remaining=10)
    assert ec.key("g2") is not None and store.live
    await ec.shutdown()
    assert not store.live


async def test_recover_adopts_one_per_group_and_deletes_the_rest() -> None:
    store, clock = Store(), Clock()
    ours = f"runner:t:{group_tag('g1')}"
    store.live = {"cachedContents/a": ours, "cachedContents/b": ours, "cachedContents/z": "other"}
    store.live["cachedContents/c"] = "runner:t:feedfeedfeedfeed"
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=clock)
    await ec.recover()
    assert set(store.live) == {"cachedContents/a", "cachedContents/c", "cachedContents/z"}
    await ec.open("g1", job(), remaining=10)
    assert ec.key("g1") == "cachedContents/a" and ec.adopted == 1
    assert store.n == 0  # reused, not created
    await ec.shutdown()
    assert set(store.live) == {"cachedContents/z"}  # someone else's cache is left alone


def test_storage_cost_per_token_hour() -> None:
    price = Price(input=0.3, output=2.5, cache_storage=1.0)
    assert storage_cost([(1_000_000, 3600.0)], price) == pytest.approx(1.0)
    assert storage_cost([(2_000, 1800.0)], price) == pytest.approx(0.001)
    assert storage_cost([(2_000, 1800.0)], Price(input=1, output=1)) == 0.0


def test_validate_estimates_storage(tmp_path: Path) -> None:
    ctx = tmp_path / "c.jsonl"
    ctx.write_text('{"cache_id": "d", "system": "%s"}\n' % ("word " * 2000))
    jobs = tmp_path / "j.jsonl"
    jobs.write_text(
        "".join(f'{{"id": "q{i}", "cache_id": "d", "query": "q"}}\n' for i in range(80))
    )
    price = Price(input=0.3, output=2.5, cached_input=0.03, cache_storage=1.0)
    cfg = RunConfig(
        provider="gemini",
        base_url="http://x",
        model="m",
        prices={"m": price},
        concurrency=8,
        max_active_groups=1,
    )
    report = validate_file(jobs, contexts=load_contexts(ctx, max_line_bytes=1 << 20), config=cfg)
    # 2,500 prefix tokens stored for 80 jobs / 8 in parallel x 5 s = 50 s
    assert report.storage_cost == pytest.approx(2501 * 50 / 3600 / 1e6, rel=0.01)
    no_storage = RunConfig(
        provider="gemini",
        base_url="http://x",
        model="m",
        prices={"m": Price(input=0.3, output=2.5)},
    )
    report = validate_file(
        jobs, contexts=load_contexts(ctx, max_line_bytes=1 << 20), config=no_storage
    )
    assert report.storage_cost is None


async def test_a_create_cancelled_mid_flight_is_still_deleted_at_shutdown() -> None:
    """The stop cancels a create the server has already carried out: no name ever came back."""
    store, clock = Store(), Clock()
    arrived = asyncio.Event()

    async def slow_create(job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        store.live["cachedContents/ghost"] = display_name  # the server made it...
        arrived.set()
        await asyncio.Event().wait()  # ...but the reply never reaches us
        raise AssertionError("unreachable")

    store.create_cache = slow_create  # type: ignore[method-assign]
    ec = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=60.0, clock=clock)
    store.live["cachedContents/foreign"] = "someone else"
    task = asyncio.create_task(ec.open("g1", job(), remaining=10))
    await arrived.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await ec.shutdown()
    assert set(store.live) == {"cachedContents/foreign"}
