"""Explicit caches: the server's expiry as its answers give it, the refresher under a TTL cap,
and the creation of a cache whose create timed out here (docs/GEMINI.md, "How explicit caches
are scheduled" and "Cost")."""

from __future__ import annotations

import asyncio
import heapq
from pathlib import Path
from typing import Any

import pytest
from test_explicit_cache import capped_mock, config, mock_stats, run_capped_group, write_jobs

from runner.api import run
from runner.explicit_cache import (
    MIN_REFRESH_GAP_S,
    CacheAPIError,
    CacheInfo,
    ExplicitCaches,
    _life,
)
from runner.mock import MockConfig, serve
from runner.models import Job
from runner.providers.gemini import _cache_info

# -- reading the server's expiry ----------------------------------------------------------------


def _doc(**times: str) -> dict[str, Any]:
    return {"name": "cachedContents/a", "usageMetadata": {"totalTokenCount": 5}, **times}


def test_a_patch_answer_is_read_against_its_update_time_never_its_create_time() -> None:
    created, patched = "2026-01-01T00:00:00Z", "2026-01-01T00:10:00Z"
    expires = "2026-01-01T00:10:01Z"  # the server's cap: 1 s from the PATCH
    both = _cache_info(
        _doc(createTime=created, updateTime=patched, expireTime=expires), 300.0, ("updateTime",)
    )
    assert _life(both, 300.0, sent_wall=0.0) == pytest.approx(1.0)
    # No updateTime: the createTime (the cache's, ten minutes earlier) is not the PATCH's time;
    # the expiry is read against this machine's clock when the PATCH was sent.
    no_update = _cache_info(_doc(createTime=created, expireTime=expires), 300.0, ("updateTime",))
    assert no_update.op_wall is None
    sent = no_update.expire_wall - 1.2  # type: ignore[operator]
    assert _life(no_update, 300.0, sent_wall=sent) == pytest.approx(1.2)
    # A create's answer: its createTime is the operation's time.
    create = _cache_info(
        _doc(createTime=created, expireTime="2026-01-01T00:00:02Z"),
        300.0,
        ("createTime", "updateTime"),
    )
    assert _life(create, 300.0, sent_wall=0.0) == pytest.approx(2.0)
    # Nothing about the expiry: unknown (never the TTL asked for).
    assert _life(_cache_info(_doc(createTime=created), 300.0, ("updateTime",)), 300.0, 0.0) is None
    # Never more than asked, never negative.
    assert _life(both, 0.5, sent_wall=0.0) == 0.5
    late = _cache_info(_doc(expireTime=created), 300.0, ("updateTime",))
    assert _life(late, 300.0, sent_wall=late.expire_wall + 5) == 0.0  # type: ignore[operator]


@pytest.mark.parametrize(
    "omit",
    ["updateTime", "createTime,updateTime,expireTime"],
    ids=["no-updateTime", "no-times-at-all"],
)
async def test_a_capped_cache_whose_patch_answers_omit_times_is_not_lost(
    tmp_path: Path, omit: str
) -> None:
    """The server caps every TTL at 1 s and its PATCH answers leave the times out, while the
    group runs ~3.5 s with dispatches every ~25 ms. Read against the cache's createTime (or taken
    to grant the 300 s asked for), the expiry was over-estimated: the cache expired unnoticed and
    was recreated. Now a PATCH answer without updateTime is read against the send time, and one
    without expireTime keeps the last known expiry, so the cache is PATCHed in time."""
    mock = capped_mock(1.0, 100.0, gemini_patch_omit=omit)
    _, info = await run_capped_group(tmp_path, mock, per_group=140, concurrency=4)
    assert info["extended"] >= 2, info


# -- the refresher: a group whose jobs are further apart than the cap ---------------------------


async def test_a_group_whose_jobs_are_further_apart_than_the_cap_keeps_one_cache(
    tmp_path: Path,
) -> None:
    """The server caps every TTL at 0.4 s; the group's 4 jobs go one at a time, ~1 s each, so no
    dispatch comes within the cap of the last one. The refresher PATCHes the cache in between:
    one create, several refreshes, no expiry, no recreate, every job read from the cache."""
    _, info = await run_capped_group(tmp_path, capped_mock(0.4, 1000.0), per_group=4, concurrency=1)
    # ~4 s under a 0.4 s cap: at least one PATCH per cap, at most one per MIN_REFRESH_GAP_S.
    assert 4.0 / 0.4 - 2 <= info["extended"] <= 4.0 / MIN_REFRESH_GAP_S, info


class FakeTime:
    """A clock (and wall clock) with sleepers that wake only when the test moves time on."""

    def __init__(self) -> None:
        self.t = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self.t + max(0.0, s), self._n, fut))
        await fut

    async def advance(self, dt: float) -> None:
        end = self.t + dt
        while True:
            for _ in range(10):
                await asyncio.sleep(0)
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)
            if not self._sleepers or self._sleepers[0][0] > end:
                break
            at, _, fut = heapq.heappop(self._sleepers)
            self.t = max(self.t, at)
            fut.set_result(None)
        self.t = end
        for _ in range(10):
            await asyncio.sleep(0)


class CappedStore:
    """An in-memory Gemini: every TTL capped at ``cap``; a cache past its expiry is gone."""

    def __init__(self, time: FakeTime, cap: float) -> None:
        self.time, self.cap = time, cap
        self.expire: dict[str, float] = {}
        self.display: dict[str, str] = {}
        self.patches: list[float] = []
        self.attempts = 0  # PATCHes sent, a missing cache's too
        self.expired = 0

    def _alive(self, name: str) -> bool:
        if name in self.expire and self.expire[name] <= self.time.t:
            del self.expire[name]
            self.expired += 1
        return name in self.expire

    def _info(self, name: str, ttl: float) -> CacheInfo:
        return CacheInfo(
            name,
            self.display[name],
            2000,
            ttl_s=ttl,
            expire_wall=self.expire[name],
            op_wall=self.time.t,
        )

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        name = f"cachedContents/c{len(self.display) + 1}"
        self.display[name] = display_name
        self.expire[name] = self.time.t + min(ttl_s, self.cap)
        return self._info(name, ttl_s)

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        self.attempts += 1
        if not self._alive(name):
            raise CacheAPIError("404 NOT_FOUND", status=404, missing=True)
        self.patches.append(self.time.t)
        self.expire[name] = self.time.t + min(ttl_s, self.cap)
        return self._info(name, ttl_s)

    async def delete_cache(self, name: str) -> None:
        self.expire.pop(name, None)

    async def list_caches(self) -> list[CacheInfo]:
        return [CacheInfo(n, self.display[n], 2000) for n in list(self.expire) if self._alive(n)]


def _job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


def _caches(store: Any, time: FakeTime) -> ExplicitCaches:
    return ExplicitCaches(
        store, tag="t", concurrency=4, min_ttl_s=60.0, clock=time, wall=time, sleep=time.sleep
    )


async def test_the_refresher_keeps_an_idle_group_cache_and_stops_when_the_group_closes() -> None:
    time = FakeTime()
    store = CappedStore(time, cap=1.0)
    ec = _caches(store, time)
    await ec.open("g1", _job(), remaining=10)  # asks 60 s (min_ttl), granted 1 s
    name = ec.key("g1")
    await time.advance(10.0)  # no dispatch at all for 10 s
    assert store._alive(name or "") and store.expired == 0
    # one PATCH per half cap (lead = cap / 2): ~20, never one per moment
    assert 15 <= len(store.patches) <= 21, store.patches
    assert all(
        b - a >= MIN_REFRESH_GAP_S for a, b in zip(store.patches, store.patches[1:], strict=False)
    )
    ec.close("g1")
    await time.advance(0.0)
    n = store.attempts
    await time.advance(20.0)
    assert store.attempts == n  # the group is done: no more PATCHes
    assert not store.expire and ec.lifetimes() == [(2000, 10.0)]
    await ec.shutdown()


async def test_the_refresher_is_bounded_by_the_expiry_the_run_asked_for() -> None:
    time = FakeTime()
    store = CappedStore(time, cap=1.0)
    ec = _caches(store, time)
    await ec.open("g1", _job(), remaining=10)  # the run asks for 60 s
    name = ec.key("g1") or ""
    await time.advance(300.0)  # the group's jobs are stuck (e.g. behind a rate limit)
    assert store.patches and max(store.patches) <= 1000.0 + 60.0
    assert len(store.patches) <= 60.0 / 0.5 + 2
    assert not store._alive(name)  # past the run's horizon it was let go, as uncapped it would
    await ec.shutdown()


async def test_no_refresher_without_a_cap_and_none_after_shutdown() -> None:
    time = FakeTime()
    store = CappedStore(time, cap=1e9)
    ec = _caches(store, time)
    await ec.open("g1", _job(), remaining=10)
    await time.advance(30.0)
    assert store.patches == []  # granted what was asked: dispatches extend it, as before
    capped = CappedStore(time, cap=1.0)
    ec2 = _caches(capped, time)
    await ec2.open("g1", _job(), remaining=10)
    await time.advance(2.0)
    await ec2.shutdown()
    n = capped.attempts
    await time.advance(10.0)
    assert capped.attempts == n and not capped.expire


# -- a create that timed out here but happened on the server ------------------------------------


async def test_a_timed_out_create_that_happened_is_billed_in_cache_create(tmp_path: Path) -> None:
    """The server creates each cache at once but answers 1.5 s late; the run gives up after
    0.6 s and sends the group with full prompts. The caches exist, and were billed for their
    creation: the final listing finds and deletes them, and their tokens are in cache_create,
    the same as when the creates answered in time."""
    jobs, _ = write_jobs(tmp_path, groups=2, per_group=4)
    late = MockConfig(gemini_implicit_cache=False, gemini_create_delay_ms=1500.0, base_ms=5.0)
    async with serve(late) as url:
        outcome = await run(jobs, config(tmp_path, url, timeout=0.6))
        st = await mock_stats(url)
    assert outcome.exit_code == 0
    info, cost = outcome.summary["explicit_caches"], outcome.summary["cost"]
    assert st["gemini"]["caches_created"] == 2 and st["gemini"]["caches_alive"] == 0
    assert info["create_failures"] == 2 and info["created"] == 0
    on_time_dir = tmp_path / "on_time"
    on_time_dir.mkdir()
    (on_time_dir / "contexts.jsonl").write_bytes((tmp_path / "contexts.jsonl").read_bytes())
    async with serve(MockConfig(gemini_implicit_cache=False, base_ms=5.0)) as url:
        on_time = await run(jobs, config(on_time_dir, url))
    want = on_time.summary["explicit_caches"]["create_tokens"]
    assert want > 2 * 1024
    assert info["create_tokens"] == want
    assert cost["cache_create"] == on_time.summary["cost"]["cache_create"] > 0
    assert info.get("unanswered_creates") == 2


class TimingOutStore:
    """Creates happen on the server, but every answer is lost (a timeout here)."""

    def __init__(self, exists: int) -> None:
        self.exists = exists  # how many of the creates really happen
        self.live: dict[str, str] = {}
        self.delete_fails = 0

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        if self.exists > 0:
            self.exists -= 1
            self.live[f"cachedContents/x{len(self.live)}"] = display_name
        raise CacheAPIError("timed out", status=None, retriable=True)

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        raise AssertionError("no cache was seen created")

    async def delete_cache(self, name: str) -> None:
        if self.delete_fails > 0:
            self.delete_fails -= 1
            raise CacheAPIError("500 INTERNAL", status=500, retriable=True)
        self.live.pop(name, None)

    async def list_caches(self) -> list[CacheInfo]:
        return [CacheInfo(n, d, 3000) for n, d in self.live.items()]


async def test_an_unanswered_create_is_billed_once_however_often_it_is_found() -> None:
    time = FakeTime()
    store = TimingOutStore(exists=1)
    store.delete_fails = 1  # the first listing finds it but cannot delete it
    ec = _caches(store, time)
    await ec.open("g1", _job(), remaining=10)
    await ec.lost("g1", "cachedContents/none", _job(), remaining=10)  # no-op: no cache held
    assert ec.key("g1") is None
    await ec.shutdown()
    assert store.live and ec.create_tokens == 3000 and ec.unanswered_creates == 1
    await ec.shutdown()  # listed again (and deleted now): not billed again
    assert not store.live and ec.create_tokens == 3000 and ec.unanswered_creates == 1


async def test_unanswered_creates_bill_what_the_listing_finds_no_more() -> None:
    time = FakeTime()
    store = TimingOutStore(exists=1)
    ec = _caches(store, time)
    await ec.open("g1", _job(), remaining=10)
    await ec.open("g2", _job(), remaining=10)  # timed out too, but never happened
    # a refused create (4xx) happened nowhere: never billed
    await ec.shutdown()
    assert ec.create_failures == 2 and ec.unanswered_creates == 1 and ec.create_tokens == 3000
    # someone else's cache, or a tagged one whose create this run never sent: not billed here
    other = TimingOutStore(exists=0)
    ec2 = _caches(other, time)
    other.live["cachedContents/y"] = "runner:t:0123456789abcdef"
    await ec2.shutdown()
    assert ec2.create_tokens == 0 and not other.live


def test_the_mock_refuses_unknown_fields_to_omit_and_a_negative_create_delay() -> None:
    with pytest.raises(ValueError, match=r"gemini_patch_omit.*'updatetime'"):
        MockConfig(gemini_patch_omit="updatetime")
    with pytest.raises(ValueError, match="gemini_create_delay_ms must be >= 0"):
        MockConfig(gemini_create_delay_ms=-1.0)
    assert MockConfig(gemini_patch_omit="createTime,updateTime,expireTime").gemini_patch_omit
