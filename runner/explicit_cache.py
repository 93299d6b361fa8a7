"""Explicit context caches per cache group: create just in time, extend, delete, never leak.

Providers with explicit caches (Gemini's ``cachedContents``) store a prefix as a resource that
requests reference by name, billed at a reduced input price plus storage per hour while it lives.
:class:`ExplicitCaches` runs one such cache per open cache group:

- **open**: when the scheduler opens a group (its primer is dispatched), create a cache holding
  the group's static prefix with a TTL covering the group's expected remaining time times a
  margin; the group's followers are released once the create has answered. A failed create means
  the group is sent with full prompts (never a lost job); a group below the minimum never gets
  a cache (the scheduler does not prime it), nor does a group that opens with one job left.
- **extend**: when a job of the group is dispatched within ``refresh_s`` of the expiry the cache
  gets a ``PATCH`` with a fresh TTL (at most one in flight per cache). A server that grants less
  than asked (a TTL cap) also gets one refresher task per cache, which PATCHes it in time between
  dispatches, up to the expiry the run asked for and while the group has jobs left (see
  :meth:`ExplicitCaches._refresher`).
- **lost**: a request that finds its cache gone (expired early, deleted) makes the group recreate
  it, at most ``MAX_RECREATES`` times; after that the group falls back to full prompts.
- **close**: when the group's last job has been answered, the cache is deleted.

Nothing may leak: every created name is written to the journal (the output's meta file) as soon
as it is known, and every cache's ``displayName`` carries the run's tag, so a cache whose create
was in flight at a crash is still found by listing. :meth:`recover` (at the start of a run)
adopts the tagged caches still alive for reuse; :meth:`shutdown` (at the end of any run: normal,
signal or guard) deletes every cache it holds.

Storage is billed for each cache's actual lifetime (create sent -> delete answered); the
lifetimes are kept for the summary's cost (:meth:`cost`). A cache this run did not see created
(an earlier run's leftover, or a create that timed out here but happened on the server) is
counted from the ``createTime`` its listing gives to its delete: an estimate, on the server's
clock against this one.

The server's figure for a cache's expiry wins over the TTL asked for: a server that caps the
TTL gets its refreshes planned from what it granted (:meth:`ExplicitCaches._expiry`). An answer
that does not say (no ``ttl``, no ``expireTime``) never extends the expiry on faith: the cache is
planned to die at its last known expiry, and billed to the latest it may live.

A create that failed here without a refusal (a timeout, a 5xx, a reply without a name, a stop)
may have happened on the server, which bills its tokens: when the final listing finds such a
cache, its tokens are added to ``create_tokens``, once per cache name.

The module is pure scheduling logic plus awaits on the :class:`CacheStore` protocol; the
provider implements the store (IO stays at the edge).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .models import Job, Price

__all__ = [
    "DISPLAY_PREFIX",
    "CacheAPIError",
    "CacheInfo",
    "CacheJournal",
    "CacheStore",
    "ExplicitCaches",
    "group_tag",
    "run_tag",
    "storage_cost",
]

DISPLAY_PREFIX = "runner:"
MAX_RECREATES = 2
DEFAULT_LATENCY_S = 5.0  # per-request guess until the first answers arrive
TTL_MARGIN = 2.0
MAX_TTL_S = 24 * 3600.0
# Two PATCHes of one cache (a dispatch's or the refresher's) are at least this far apart: bounds
# the PATCHes sent to a server whose answers do not move the known expiry (or grant nothing).
MIN_REFRESH_GAP_S = 0.05


@dataclass(frozen=True, slots=True)
class CacheInfo:
    """A cache as the provider describes it."""

    name: str  # e.g. "cachedContents/abc123"
    display_name: str
    tokens: int  # usageMetadata.totalTokenCount
    expire_time: str | None = None  # RFC 3339, as sent
    ttl_s: float | None = None  # the TTL the request asked for, when this answers a request
    # The answer's own ``ttl`` (seconds from the operation on): a server may cap the TTL asked
    # for. None: the answer does not carry one (Gemini's usually does not; see expire_wall).
    granted_s: float | None = None
    created_wall: float | None = None  # ``createTime`` as epoch seconds, when listed/answered
    expire_wall: float | None = None  # ``expireTime`` as epoch seconds (the server's clock)
    # The server's time of the operation this answers (a create's ``createTime``, a PATCH's
    # ``updateTime``), epoch seconds; None: the answer does not say (some proxies omit it).
    op_wall: float | None = None


class CacheAPIError(Exception):
    """A cache operation failed; ``missing``: the cache does not exist (expired or deleted)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None,
        missing: bool = False,
        retriable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.missing = missing
        self.retriable = retriable
        self.retry_after_s = retry_after_s


@runtime_checkable
class CacheStore(Protocol):
    """What a provider with explicit caches offers (``runner.providers.gemini``)."""

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo: ...
    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo: ...
    async def delete_cache(self, name: str) -> None: ...
    async def list_caches(self) -> list[CacheInfo]: ...


class CacheJournal(Protocol):
    """Where created cache names are recorded durably (the output's meta file)."""

    def record(self, created: list[str], deleted: list[str]) -> None: ...


def run_tag(results_path: str | os.PathLike[str]) -> str:
    """A tag stable across resumes of one output: the hash of its normalised absolute path
    (string work only, so every caller, sync or async, derives the same tag)."""
    path = os.path.normpath(os.path.abspath(results_path))
    return hashlib.sha256(path.encode()).hexdigest()[:12]


def group_tag(group: str) -> str:
    return hashlib.sha256(group.encode()).hexdigest()[:16]


def storage_cost(lifetimes: list[tuple[int, float]], price: Price | None) -> float:
    """USD for caches of (tokens, seconds alive) at ``price.cache_storage`` per 1M tokens/hour."""
    if price is None or not price.cache_storage:
        return 0.0
    token_s = sum(t * s for t, s in lifetimes)
    return token_s / 3600.0 / 1e6 * price.cache_storage


def _life(info: CacheInfo, asked: float, sent_wall: float) -> float | None:
    """Seconds the cache lives from the request's sending, by the answer's own figures (never
    more than asked); None when the answer does not say.

    Its ``ttl`` when it carries one; else its ``expireTime`` minus the operation's server time
    (``op_wall``: both on the server's clock, and counted from the sending, before the server
    acted: never late); else ``expireTime`` minus this machine's clock when the request was sent
    (the server acted after that, so the expiry is not placed later than it is, up to clock skew,
    which the cap at ``asked`` bounds)."""
    if info.granted_s is not None:
        life = info.granted_s
    elif info.expire_wall is None:
        return None
    elif info.op_wall is not None:
        life = info.expire_wall - info.op_wall
    else:
        life = info.expire_wall - sent_wall
    return max(0.0, min(asked, life))


class _Cache:
    __slots__ = (
        "cap",
        "created",
        "expire_at",
        "expire_max",
        "extending",
        "gone",
        "group",
        "lost",
        "name",
        "next_try",
        "refresher",
        "tokens",
        "want_until",
    )

    def __init__(
        self,
        name: str,
        tokens: int,
        group: str,
        created: float,
        expire_at: float,
        cap: float = MAX_TTL_S,
    ):
        self.name = name
        self.cap = cap  # the server's TTL cap last seen (seconds); MAX_TTL_S: none
        self.tokens = tokens
        self.group = group
        self.created = created
        self.expire_at = expire_at  # planning: the latest expiry the server has confirmed
        self.expire_max = expire_at  # billing: the latest it may live (an unconfirmed ask too)
        self.want_until = expire_at  # the expiry the run last asked for (the refresher's bound)
        self.next_try = 0.0  # no PATCH before this (MIN_REFRESH_GAP_S)
        self.extending: asyncio.Task[None] | None = None  # the PATCH in flight
        self.refresher: asyncio.Task[None] | None = None
        self.gone = False  # a PATCH found it missing: the next request that uses it recreates
        self.lost = 0  # how many caches of this group were lost before this one


class ExplicitCaches:
    """One explicit cache per open cache group (see the module docstring)."""

    def __init__(
        self,
        store: CacheStore,
        *,
        tag: str,
        concurrency: int,
        min_ttl_s: float,
        journal: CacheJournal | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._store = store
        self._tag = tag
        self._prefix = f"{DISPLAY_PREFIX}{tag}:"
        self._concurrency = max(1, concurrency)
        self._min_ttl = min_ttl_s
        self._refresh = max(min_ttl_s / 3.0, 0.05)
        self._journal = journal
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._by_group: dict[str, _Cache | None] = {}  # None: this group goes without a cache
        self._opening: dict[str, asyncio.Future[None]] = {}
        self._adopted: dict[str, CacheInfo] = {}  # group tag -> a live cache of an earlier run
        self._adopt_t: dict[str, float] = {}  # when each adopted cache was found
        self._undeleted: dict[str, _Cache] = {}  # a delete failed: tried again at shutdown
        self._lost: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._lifetimes: list[tuple[int, float]] = []
        # Creates that failed here without a refusal, by displayName: each may exist on the
        # server, billed. The final listing bills what it finds of them, once per cache name.
        self._unanswered: dict[str, int] = {}
        self._create_billed: set[str] = set()  # names whose create tokens are counted
        self._latency = DEFAULT_LATENCY_S
        self.created = 0
        self.deleted = 0
        self.create_failures = 0
        self.create_tokens = 0  # tokens billed at the input price by creates
        self.unanswered_creates = 0  # creates that failed here but happened on the server
        self.recreated = 0
        self.extended = 0
        self.adopted = 0
        self.leftover_deleted = 0
        self.left_alive = 0  # could not be deleted: lives (billed) until its expiry
        self.single_job_groups = 0  # opened with one job: sent without a cache
        self.errors: list[str] = []

    # -- the run's edges -----------------------------------------------------------------------

    async def recover(self) -> None:
        """Adopt this run's caches that are still alive; delete duplicates of one group."""
        try:
            found = await self._store.list_caches()
        except CacheAPIError as exc:
            self.errors.append(f"listing caches: {exc}")
            return
        now = self._clock()
        for info in found:
            if not info.display_name.startswith(self._prefix):
                continue
            gtag = info.display_name[len(self._prefix) :]
            if gtag in self._adopted:
                await self._delete_leftover(info.name, info.tokens, info)
                continue
            self._adopted[gtag] = info
            # Storage counts from its createTime (the crashed run never billed it), else from now.
            self._adopt_t[info.name] = now - self._age(info)

    async def shutdown(self) -> None:
        """Delete every cache this run holds or adopted; wait for pending extends/deletes."""
        self._closing = True  # no refresher starts from here on
        for held in self._by_group.values():
            if held is not None:
                self._stop_refresher(held)
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for group, cache in list(self._by_group.items()):
            if cache is not None:
                await self._delete(cache)
            self._by_group.pop(group, None)
        for cache in list(self._undeleted.values()):
            await self._delete(cache)
        for info in list(self._adopted.values()):
            await self._delete_leftover(info.name, info.tokens)
        self._adopted.clear()
        # A create cancelled by the stop may still have happened on the server, its name never
        # seen here: one last listing finds it by the run's tag.
        try:
            found = await self._store.list_caches()
        except CacheAPIError as exc:
            self.errors.append(f"listing caches at the end: {exc}")
            found = None
        listed = set()
        for info in found or ():
            if not info.display_name.startswith(self._prefix):
                continue
            listed.add(info.name)
            held = self._undeleted.get(info.name)
            if held is not None:
                await self._delete(held)
            else:  # e.g. a create that timed out here but happened on the server
                self._bill_unanswered(info)
                await self._delete_leftover(info.name, info.tokens, info)
        for cache in list(self._undeleted.values()):
            self._undeleted.pop(cache.name)
            if found is not None and cache.name not in listed:
                self._retire(cache)  # gone meanwhile (expired): billed to its end
                continue
            # Still there (or unknown): it lives, and is billed, until its expiry.
            self.left_alive += 1
            self._lifetimes.append((cache.tokens, max(0.0, cache.expire_max - cache.created)))

    # -- hooks the engine calls ----------------------------------------------------------------

    def key(self, group: str | None) -> str | None:
        """The cache name to send a job of ``group`` with, or None (full prompt)."""
        if group is None:
            return None
        cache = self._by_group.get(group)
        return None if cache is None else cache.name

    async def open(self, group: str, job: Job, remaining: int) -> None:
        """Make sure ``group`` has a cache (or is marked to go without one)."""
        if group in self._by_group:
            self.touch(group, remaining)
            return
        pending = self._opening.get(group)
        if pending is not None:
            await asyncio.shield(pending)
            return
        if remaining <= 1 and group_tag(group) not in self._adopted:
            # One job: its create bills the prefix at the input price, as its full prompt would,
            # then the cached read and the storage come on top: never cheaper. Not recorded, so
            # the group's next primer (more of its jobs read meanwhile) may still create one.
            self.single_job_groups += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._opening[group] = fut
        try:
            cache = self._by_group[group] = await self._create(group, job, remaining)
            if cache is not None:
                self._arm(cache)
        finally:
            del self._opening[group]
            fut.set_result(None)

    def touch(self, group: str | None, remaining: int) -> None:
        """A job of ``group`` is about to be sent: extend its cache if it expires soon."""
        cache = None if group is None else self._by_group.get(group)
        if cache is None or cache.extending is not None:
            return
        now = self._clock()
        if cache.expire_at - now > self._lead(cache) or now < cache.next_try:
            return
        self._start_extend(cache, self._ttl(remaining))

    def answered(self, latency_s: float) -> None:
        """A job's response arrived (mean latency feeds the TTL estimate)."""
        self._latency += 0.1 * (latency_s - self._latency)

    async def lost(self, group: str, name: str, job: Job, remaining: int) -> None:
        """A request found ``name`` gone: recreate it once per loss, or fall back."""
        cache = self._by_group.get(group)
        if cache is not None and cache.name != name:
            return  # another job already replaced it
        if group in self._opening:
            await asyncio.shield(self._opening[group])
            return
        if cache is not None:
            self._retire(cache)
        n = self._lost[group] = self._lost.get(group, 0) + 1
        if n > MAX_RECREATES:
            self._by_group[group] = None  # keeps expiring: full prompts for the rest
            return
        self._by_group.pop(group, None)
        self.recreated += 1
        await self.open(group, job, remaining)

    def close(self, group: str) -> None:
        """The group's last job has been answered: delete its cache now."""
        cache = self._by_group.pop(group, None)
        self._lost.pop(group, None)
        if cache is not None:
            self._stop_refresher(cache)
            self._spawn(self._delete(cache))

    # -- cost ----------------------------------------------------------------------------------

    def lifetimes(self) -> list[tuple[int, float]]:
        """(tokens, seconds alive) of every cache this run deleted or saw expire."""
        return list(self._lifetimes)

    def cost(self, price: Price | None) -> dict[str, Any]:
        life = self._lifetimes
        return {
            "created": self.created,
            "deleted": self.deleted,
            "adopted": self.adopted,
            "leftovers_deleted": self.leftover_deleted,
            "left_alive": self.left_alive,
            "single_job_groups": self.single_job_groups,
            "create_failures": self.create_failures,
            "recreated": self.recreated,
            "extended": self.extended,
            "create_tokens": self.create_tokens,
            "unanswered_creates": self.unanswered_creates,
            "storage_token_hours": round(sum(t * s for t, s in life) / 3600.0, 3),
            "cache_seconds": round(sum(s for _, s in life), 3),
            "storage_usd": round(storage_cost(life, price), 10),
            "errors": self.errors[:10],
        }

    # -- internals -----------------------------------------------------------------------------

    def _ttl(self, remaining: int) -> float:
        """Expected time for ``remaining`` jobs at this group's share of the concurrency."""
        active = max(1, len(self._by_group))
        per_group = max(1.0, self._concurrency / active)
        expected = remaining / per_group * self._latency
        return min(MAX_TTL_S, max(self._min_ttl, TTL_MARGIN * expected))

    def _lead(self, cache: _Cache) -> float:
        """How long before its expiry a cache is extended: a server that grants less than asked
        (a TTL cap) is refreshed at half its grant."""
        return min(self._refresh + self._latency, cache.cap / 2.0)

    def _expiry(
        self, info: CacheInfo, asked: float, sent: float, sent_wall: float
    ) -> tuple[float, float] | None:
        """(expiry on this clock, the server's TTL cap or ``MAX_TTL_S``) by the answer to a request
        sent at ``sent`` asking ``asked`` seconds; None when the answer does not say."""
        life = _life(info, asked, sent_wall)
        if life is None:
            return None
        return sent + life, (life if life < asked else MAX_TTL_S)

    async def _create(self, group: str, job: Job, remaining: int) -> _Cache | None:
        gtag = group_tag(group)
        adopted = self._adopted.pop(gtag, None)
        if adopted is not None:
            t0 = self._adopt_t.pop(adopted.name, self._clock())
            ttl = self._ttl(remaining)
            sent, sent_wall = self._clock(), self._wall()
            try:
                info = await self._store.extend_cache(adopted.name, ttl_s=ttl)
            except CacheAPIError:
                info = None  # gone meanwhile: create a new one below
            if info is not None:
                self.adopted += 1
                tokens = info.tokens or adopted.tokens
                cache = _Cache(info.name, tokens, group, t0, sent + ttl)
                cache.want_until = sent + ttl
                got = self._expiry(info, ttl, sent, sent_wall)
                if got is not None:
                    cache.expire_at, cache.cap = got
                    cache.expire_max = cache.expire_at
                elif adopted.expire_wall is not None:
                    # Only its listing's expiry is known: never extended on faith.
                    cache.expire_at = sent + max(0.0, adopted.expire_wall - sent_wall)
                cache.next_try = sent + MIN_REFRESH_GAP_S
                self._create_billed.add(info.name)  # an earlier run's create: not billed here
                return cache
        ttl = self._ttl(remaining)
        display = f"{self._prefix}{gtag}"
        t0, t0_wall = self._clock(), self._wall()
        try:
            info = await self._store.create_cache(job, ttl_s=ttl, display_name=display)
        except CacheAPIError as exc:
            self.create_failures += 1
            if exc.status is None or not 400 <= exc.status < 500:
                # Not a refusal (a timeout, a 5xx, an answer without a name): the server may
                # have created it, and billed it; the final listing finds it by its displayName.
                self._unanswered[display] = self._unanswered.get(display, 0) + 1
            if len(self.errors) < 10:
                self.errors.append(f"creating a cache for {job.cache_id or gtag}: {exc}")
            return None  # full prompts for this group: never a lost job
        except asyncio.CancelledError:
            self._unanswered[display] = self._unanswered.get(display, 0) + 1
            raise
        self.created += 1
        if info.name not in self._create_billed:
            self._create_billed.add(info.name)
            self.create_tokens += info.tokens
        if self._journal is not None:
            self._journal.record([info.name], [])
        cache = _Cache(info.name, info.tokens, group, t0, t0 + ttl)
        got = self._expiry(info, ttl, t0, t0_wall)
        if got is not None:  # else nothing is known but the TTL asked for
            cache.expire_at, cache.cap = got
            cache.expire_max = cache.expire_at
        return cache

    def _start_extend(self, cache: _Cache, ttl: float) -> None:
        """PATCH ``cache`` with ``ttl`` in the background (the one PATCH in flight)."""
        t = asyncio.get_running_loop().create_task(self._extend(cache, ttl))
        cache.extending = t
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _extend(self, cache: _Cache, ttl: float) -> None:
        t0, t0_wall = self._clock(), self._wall()
        cache.next_try = t0 + max(MIN_REFRESH_GAP_S, self._lead(cache) / 2.0)
        cache.want_until = t0 + ttl
        # Whatever the answer, the server may now keep it (and bill it) that long.
        cache.expire_max = max(cache.expire_max, t0 + ttl)
        try:
            info = await self._store.extend_cache(cache.name, ttl_s=ttl)
        except CacheAPIError as exc:
            if exc.missing:
                cache.gone = True  # shows up as a lost cache on the next request that uses it
            elif len(self.errors) < 10:
                self.errors.append(f"extending {cache.name}: {exc}")
        else:
            self.extended += 1
            got = self._expiry(info, ttl, t0, t0_wall)
            if got is not None:
                cache.expire_at, cache.cap = got
                cache.expire_max = cache.expire_at
            # else the answer does not say: its last known expiry stands (never extended on
            # faith), so it is refreshed again, no sooner than next_try
        finally:
            cache.extending = None
        self._arm(cache)

    # -- the refresher: one task per cache under a TTL cap ---------------------------------------

    def _arm(self, cache: _Cache) -> None:
        """Start ``cache``'s refresher if the server granted less than the run asked for."""
        if self._closing or cache.refresher is not None or cache.gone:
            return
        if self._by_group.get(cache.group) is not cache:
            return
        if cache.want_until - cache.expire_at <= self._lead(cache):
            return  # granted (nearly) what was asked: a dispatch's touch extends it as before
        cache.refresher = asyncio.get_running_loop().create_task(self._refresher(cache))

    def _stop_refresher(self, cache: _Cache) -> None:
        task, cache.refresher = cache.refresher, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _refresher(self, cache: _Cache) -> None:
        """Keep ``cache`` alive between its group's dispatches under a server TTL cap: PATCH it
        ``lead`` before its known expiry, asking for what remains of the expiry the run wanted.

        Bounded: it ends when the group closes (its last job answered), the cache is lost or
        replaced, or the run shuts down, and it never keeps the cache past the expiry the run
        last asked for (the group's expected remaining time with its margin, as an uncapped
        server would have granted): about 2 x that time / the cap PATCHes at most, never one
        per request. Two PATCHes are at least ``MIN_REFRESH_GAP_S`` apart."""
        try:
            while not cache.gone and self._by_group.get(cache.group) is cache:
                lead = self._lead(cache)
                if cache.want_until - cache.expire_at <= lead:
                    return  # the run's horizon is covered; a later dispatch may re-arm it
                if cache.extending is not None:  # a dispatch's PATCH is in flight
                    await asyncio.wait((cache.extending,))
                    continue
                now = self._clock()
                due = max(cache.expire_at - lead, cache.next_try)
                if now < due:
                    await self._sleep(due - now)
                    continue
                self._start_extend(cache, cache.want_until - now)
        finally:
            if cache.refresher is asyncio.current_task():
                cache.refresher = None

    def _bill_unanswered(self, info: CacheInfo) -> None:
        """A listing found ``info``, a tagged cache this run never saw created: if a create of
        its group failed here without a refusal, that create happened, and was billed."""
        left = self._unanswered.get(info.display_name, 0)
        if left <= 0 or info.name in self._create_billed:
            return
        self._unanswered[info.display_name] = left - 1
        self._create_billed.add(info.name)
        self.create_tokens += info.tokens
        self.unanswered_creates += 1

    async def _delete(self, cache: _Cache) -> None:
        try:
            await self._store.delete_cache(cache.name)
        except CacheAPIError as exc:
            self.errors.append(f"deleting {cache.name}: {exc}")
            # Tried again at shutdown; its storage is billed from its create either way.
            self._undeleted[cache.name] = cache
            return
        self._undeleted.pop(cache.name, None)
        self._retire(cache)

    def _retire(self, cache: _Cache) -> None:
        """The cache no longer exists: bill its lifetime (to the latest it may have lived)."""
        self._stop_refresher(cache)
        end = min(self._clock(), max(cache.expire_max, cache.created))
        self._lifetimes.append((cache.tokens, end - cache.created))
        self.deleted += 1
        if self._journal is not None:
            self._journal.record([], [cache.name])

    def _age(self, info: CacheInfo) -> float:
        """Seconds since ``info`` was created by its listing's ``createTime`` (0: unknown)."""
        if info.created_wall is None:
            return 0.0
        return max(0.0, self._wall() - info.created_wall)

    async def _delete_leftover(
        self, name: str, tokens: int = 0, listed: CacheInfo | None = None
    ) -> None:
        try:
            await self._store.delete_cache(name)
        except CacheAPIError as exc:
            self.errors.append(f"deleting leftover {name}: {exc}")
            return
        self.leftover_deleted += 1
        t0 = self._adopt_t.pop(name, None)
        if t0 is not None:
            self._lifetimes.append((tokens, self._clock() - t0))
        elif listed is not None and listed.created_wall is not None:
            # Found by a listing: alive since its createTime, billed to now (an estimate).
            self._lifetimes.append((tokens, self._age(listed)))
        if self._journal is not None:
            self._journal.record([], [name])

    def _spawn(self, coro: Any) -> None:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)
