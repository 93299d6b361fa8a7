"""One provider rate limit shared by every process and host that uses the same API key.

Provider limits belong to a key (or an organisation), not to a process: N copies of a run that
each believe they own the whole budget send N times the limit. :class:`SharedLimiter` puts one
budget in a shared *store* and wraps the local :class:`~runner.limits.RateController`, which
keeps doing what only a process can do (its concurrency slots, AIMD, reading headers).

**The key.** ``runner:{H}:state`` where ``H`` hashes the provider, the base URL, a SHA-256 of
the API key (never the key itself) and the optional ``limit_scope``: every process that talks to
the same endpoint with the same key shares one budget, whatever host it runs on.

**The algorithm: GCRA with reservations,** one *theoretical arrival time* (TAT) per kind
(requests, tokens), kept in the store and advanced atomically (a Lua script on Redis, a
``flock``-held file on one host). Taking ``n`` units at rate ``r`` per second moves
``TAT = max(TAT, now) + n / r`` and tells the caller to wait ``max(0, TAT - BURST_S - now)``:
over any interval ``T`` at most ``r * (T + BURST_S)`` units are granted in total. Time is the
store's (Redis ``TIME``), so hosts with skewed clocks still agree. Returning units (a refund)
moves the TAT back, never behind ``now``, so idle time is never banked.

**Leases.** A process takes ``lease_s`` seconds of the rate at a time (at least one request or
one request's tokens) and spends it locally, so the store sees about one call per lease, not
one per request. A process has one lease call in flight at a time, so a store farther away than
the lease would cap it at lease / round trip of the rate: the lease is therefore at least
:data:`RTT_LEASES` round trips of the rate (the store's measured round trip, a moving average),
at most :data:`MAX_LEASE_S` seconds, i.e. ``span = max(lease_s, min(2 x RTT, 2 s))``. Units are
only ever *granted* at the rate, so the bound above holds for grants; what leases cost is
timing: a process may send its lease at once rather than spread, so the sent rate over a short
window can exceed the limit by at most ``P * lease`` units (``P`` processes,
``lease = r * span``), and never over a window longer than ``span``. Unspent units go back at
exit.

**Usage correction.** Token leases are charged by the estimate; the difference to the real
usage (prompt + completion) is carried and charged (or refunded) with the next token lease.

**What headers teach is published.** A 429 (or an exhausted window) pauses every process:
the pause end is stored, and every lease returns the time left of it, so the others pause at
their next lease (within ``lease_s``). A server limit below the configured one (``x-ratelimit-
limit-*``) is stored too, and every process's leases are then cut at that rate; it expires
after :data:`LEARNED_TTL_S` unless seen again, so an upgraded key climbs back.

**When the store fails** (Redis unreachable), ``redis_policy`` decides, and no job is lost
either way (jobs only wait; nothing is dropped or marked failed):

- ``fail_closed`` (default, safe for the provider): every acquire waits, retrying the store
  with backoff up to :data:`MAX_RETRY_S`, and resumes when it is back.
- ``fail_open``: the process falls back to a local bucket at the last known shared rate
  divided by the last known number of processes, and retries the store every second.

Either way the outage is logged to stderr (once when it starts, once when it ends) and counted
in the summary's ``shared_limit`` section. A call gets :data:`STORE_TIMEOUT_S` at first; one
that timed out doubles the next call's deadline (up to :data:`MAX_STORE_TIMEOUT_S`), so a slow
store (hundreds of ms away) is waited for rather than taken for a dead one forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import hashlib
import math
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from .config import MAX_LEASE_S, REDIS_PASSWORD_ENV, RunConfig, redis_password
from .errors import ConfigError
from .limits import BURST_S, RateController, TokenBucket
from .models import Attempt, ErrorInfo

__all__ = [
    "FileStore",
    "Grant",
    "LeaseStore",
    "RedisStore",
    "SharedLimiter",
    "StoreUnavailable",
    "limit_key",
    "open_shared_limiter",
]

#: A learned (server) limit is forgotten this long after it was last published.
LEARNED_TTL_S = 300.0
#: A process not seen at the store for this long no longer counts as running (one that closes
#: its limiter leaves at once: :meth:`SharedLimiter.aclose`; this is for one that was killed).
PROC_TTL_S = 30.0
#: Longest wait between two store retries under ``fail_closed``.
MAX_RETRY_S = 2.0
#: Seconds a store call may take before it counts as failed (at first: see RedisStore._call).
STORE_TIMEOUT_S = 2.0
#: The longest a store call is given after repeated timeouts (a slow store, not a dead one).
MAX_STORE_TIMEOUT_S = 30.0
#: Under ``fail_open``, how often the store is tried again while it is down (in the background).
PROBE_S = 1.0
#: A lease covers at least this many store round trips of the rate, so a far store does not
#: cap a process at lease / round trip...
RTT_LEASES = 2.0
#: ... up to MAX_LEASE_S seconds of the rate (the bound of the overshoot, ``P * r * span``),
#: the most ``--lease-s`` may ask for too (runner/config.py).
_THROTTLES = frozenset({"rate_limited", "overloaded"})
_CANCELLED = ErrorInfo("cancelled", "request cancelled", retriable=True)


class StoreUnavailable(Exception):
    """The shared store could not be reached; the policy decides what happens."""


@dataclass(frozen=True, slots=True)
class Grant:
    """A store's answer to a lease: wait ``wait_s``, then spend it; the shared state seen."""

    wait_s: float
    pause_s: float  # time left of a published pause (<= 0: none)
    rate_per_min: float  # the rate the lease was charged at (configured or learned)
    procs: int  # processes seen at the store within PROC_TTL_S


class LeaseStore(Protocol):
    """Where the shared budget lives (Redis across hosts, a file on one host)."""

    name: str

    async def take(
        self, kind: str, amount: float, rate_per_min: float, *, exact: bool = False
    ) -> Grant: ...
    async def publish(
        self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0
    ) -> None: ...
    async def leave(self) -> None: ...
    async def close(self) -> None: ...


def limit_key(provider: str, base_url: str, api_key: str | None, scope: str | None) -> str:
    """The store key of a budget: provider + base URL + a hash of the key + scope, hashed."""
    key_hash = hashlib.sha256(api_key.encode()).hexdigest() if api_key else "-"
    text = "\0".join((provider, base_url.rstrip("/"), key_hash, scope or ""))
    return "runner:{" + hashlib.sha256(text.encode()).hexdigest()[:32] + "}"


# -- Redis -------------------------------------------------------------------------------------

# KEYS[1] state hash, KEYS[2] process zset. ARGV: kind, amount, configured rate per minute
# (0: none), burst seconds, process id, process ttl, learned ttl, '1' to charge at exactly the
# given rate (a refund goes back at the rate it was charged at). Floats go back as strings:
# Redis would truncate a Lua number to an integer.
_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local kind = ARGV[1]
local amount = tonumber(ARGV[2])
local rate = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local learned = tonumber(redis.call('HGET', KEYS[1], 'lim_' .. kind) or '0')
local learned_at = tonumber(redis.call('HGET', KEYS[1], 'lim_at_' .. kind) or '0')
if ARGV[8] ~= '1' and learned > 0 and now - learned_at < tonumber(ARGV[7])
   and (rate <= 0 or learned < rate) then
  rate = learned
end
local wait = 0
if rate > 0 and amount ~= 0 then
  local tat = tonumber(redis.call('HGET', KEYS[1], 'tat_' .. kind) or '0')
  if tat < now then tat = now end
  tat = tat + amount * 60.0 / rate
  if tat < now then tat = now end
  redis.call('HSET', KEYS[1], 'tat_' .. kind, string.format('%.6f', tat))
  wait = tat - burst - now
  if wait < 0 then wait = 0 end
end
local pause = tonumber(redis.call('HGET', KEYS[1], 'pause') or '0') - now
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))
local procs = redis.call('ZCARD', KEYS[2])
redis.call('EXPIRE', KEYS[1], 3600)
redis.call('EXPIRE', KEYS[2], 3600)
return {string.format('%.6f', wait), string.format('%.6f', pause), tostring(rate), procs}
"""

# KEYS[1] state hash. ARGV: pause seconds, kind, learned limit per minute.
_PUBLISH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local pause = tonumber(ARGV[1])
if pause > 0 then
  local untl = now + pause
  if untl > tonumber(redis.call('HGET', KEYS[1], 'pause') or '0') then
    redis.call('HSET', KEYS[1], 'pause', string.format('%.6f', untl))
  end
end
local limit = tonumber(ARGV[3])
if limit > 0 then
  redis.call('HSET', KEYS[1], 'lim_' .. ARGV[2], ARGV[3], 'lim_at_' .. ARGV[2],
             string.format('%.6f', now))
end
redis.call('EXPIRE', KEYS[1], 3600)
return 1
"""


class RedisStore:
    """The budget in Redis (redis-py's asyncio client; scripts are loaded once, run by SHA)."""

    name = "redis"

    def __init__(self, url: str, key: str, proc_id: str) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise ConfigError(
                "redis_url needs the redis package: pip install 'runner[redis]'"
            ) from None
        import redis.exceptions as rexc

        self._errors: tuple[type[Exception], ...] = (rexc.RedisError, OSError, TimeoutError)
        # A wrong password, a user without the rights: retrying never helps (not unreachable).
        self._refused: tuple[type[Exception], ...] = (
            rexc.AuthenticationError,
            rexc.AuthorizationError,
            rexc.NoPermissionError,
        )
        # ``url`` is a RunConfig's redis_url, checked when the config was built (a port or
        # query value redis-py cannot parse is exit 2 there, the URL never echoed). The call's
        # own deadline (_call) bounds every read and connect. The password may come from the
        # environment instead (never from argv or a file; the config refused both).
        self._password = redis_password()
        extra: dict[str, Any] = {} if self._password is None else {"password": self._password}
        self._client = aioredis.Redis.from_url(
            url,
            socket_timeout=MAX_STORE_TIMEOUT_S,
            socket_connect_timeout=MAX_STORE_TIMEOUT_S,
            **extra,
        )
        self._take = self._client.register_script(_TAKE_LUA)
        self._publish = self._client.register_script(_PUBLISH_LUA)
        self._keys = [key + ":state", key + ":procs"]
        self._proc = proc_id
        self.timeout_s = STORE_TIMEOUT_S

    async def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """One script call within ``timeout_s``. A call that timed out doubles it (up to
        MAX_STORE_TIMEOUT_S) and one that answered sets it to 4x its own time (at least
        STORE_TIMEOUT_S): a store a few hundred ms away needs several round trips to connect
        (each timeout drops the connection), so a fixed 2 s deadline never let it answer
        again and ``fail_closed`` waited forever on a store that works."""
        start = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                out = await script(keys=keys, args=args)
        except self._errors as exc:
            if isinstance(exc, TimeoutError) or "timeout" in type(exc).__name__.lower():
                self.timeout_s = min(self.timeout_s * 2.0, MAX_STORE_TIMEOUT_S)
            raise StoreUnavailable(self._said(exc)) from exc
        took = time.monotonic() - start
        self.timeout_s = min(max(STORE_TIMEOUT_S, 4.0 * took), MAX_STORE_TIMEOUT_S)
        return out

    def _said(self, exc: BaseException) -> str:
        """An error of the client as a message, never with the password of the environment
        (redis-py's own say none; one that quoted it would be written to the log)."""
        text = f"{type(exc).__name__}: {exc}"
        return text if self._password is None else text.replace(self._password, "***")

    async def take(
        self, kind: str, amount: float, rate_per_min: float, *, exact: bool = False
    ) -> Grant:
        args: list[str | float] = [
            kind,
            amount,
            rate_per_min,
            BURST_S,
            self._proc,
            PROC_TTL_S,
            LEARNED_TTL_S,
            "1" if exact else "0",
        ]
        wait, pause, rate, procs = await self._call(self._take, self._keys, args)
        return Grant(float(wait), float(pause), float(rate), int(procs))

    async def publish(self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0) -> None:
        await self._call(self._publish, self._keys[:1], [pause_s, kind or "r", limit])

    async def check(self) -> None:
        """One harmless script call before the run: Redis refusing the credentials or the
        ACL is a configuration error (exit 2), not an outage that ``fail_closed`` would wait
        out forever (or ``fail_open`` would run unshared through). An unreachable Redis is
        left to the policy. The message never carries the URL (its password)."""
        try:
            await self.publish()
        except StoreUnavailable as exc:
            if isinstance(exc.__cause__, self._refused):
                raise ConfigError(
                    f"redis_url: Redis refused runner ({exc}); check the user and password "
                    f"(in redis_url, or {REDIS_PASSWORD_ENV}) and that its ACL allows "
                    "EVAL/EVALSHA on runner:* keys"
                ) from None

    async def leave(self) -> None:
        """This process no longer runs: the others' next leases count it out at once, not
        ``PROC_TTL_S`` later (a run started meanwhile would split its rate by a stale count)."""
        try:
            async with asyncio.timeout(self.timeout_s):
                await self._client.zrem(self._keys[1], self._proc)
        except self._errors as exc:
            raise StoreUnavailable(self._said(exc)) from exc

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._client.aclose()


# -- one host ------------------------------------------------------------------------------


class FileStore:
    """The same budget in a small JSON file on one host, updated under ``flock``.

    For ``--workers`` without Redis: the critical section is a read, a few additions and a
    write of a few hundred bytes, once per lease, so it runs inline on the event loop.
    Time is ``time.time()``, the one clock every process on the host shares.
    """

    name = "file"

    def __init__(self, path: Path, proc_id: str) -> None:
        self._path = path
        self._proc = proc_id
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot open the shared limit file: {exc.strerror}") from exc

    def _update(self, fn: Callable[[dict[str, Any], float], Any]) -> Any:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            raw = os.pread(self._fd, 1 << 16, 0)
            state = _file_state(raw)
            out = fn(state, time.time())
            # Padded to the old length first: a process killed between the write and the
            # truncate leaves valid JSON (trailing blanks), not the old state's tail after it.
            data = orjson.dumps(state)
            os.pwrite(self._fd, data.ljust(len(raw)), 0)
            os.ftruncate(self._fd, len(data))
            return out
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    async def take(
        self, kind: str, amount: float, rate_per_min: float, *, exact: bool = False
    ) -> Grant:
        def op(s: dict[str, Any], now: float) -> Grant:
            rate = rate_per_min
            learned = s.get("lim_" + kind, 0.0)
            fresh = now - s.get("lim_at_" + kind, 0.0) < LEARNED_TTL_S
            if not exact and learned > 0 and fresh and (rate <= 0 or learned < rate):
                rate = learned
            wait = 0.0
            if rate > 0 and amount:
                tat = max(s.get("tat_" + kind, 0.0), now) + amount * 60.0 / rate
                s["tat_" + kind] = max(tat, now)
                wait = max(tat - BURST_S - now, 0.0)
            procs: dict[str, float] = s.setdefault("procs", {})
            procs[self._proc] = now
            for p in [p for p, seen in procs.items() if now - seen > PROC_TTL_S]:
                del procs[p]
            return Grant(wait, s.get("pause", 0.0) - now, rate, len(procs))

        result: Grant = self._update(op)
        return result

    async def publish(self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0) -> None:
        def op(s: dict[str, Any], now: float) -> None:
            if pause_s > 0:
                s["pause"] = max(s.get("pause", 0.0), now + pause_s)
            if limit > 0:
                s["lim_" + (kind or "r")] = limit
                s["lim_at_" + (kind or "r")] = now

        self._update(op)

    async def leave(self) -> None:
        def op(s: dict[str, Any], now: float) -> None:
            s.get("procs", {}).pop(self._proc, None)

        self._update(op)

    async def close(self) -> None:
        os.close(self._fd)


def _file_state(raw: bytes) -> dict[str, Any]:
    """A limit file's state; what is unreadable (a torn write by a killed process, an older
    crash, a hand edit) counts as empty. The state is only a budget's position: starting it
    afresh allows one burst at most, where failing would stop every later run on the file."""
    try:
        doc = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        return {}
    if not isinstance(doc, dict):
        return {}
    state: dict[str, Any] = {k: v for k, v in doc.items() if _is_num(v)}
    procs = doc.get("procs")
    if isinstance(procs, dict):
        state["procs"] = {p: t for p, t in procs.items() if _is_num(t)}
    return state


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# -- the limiter -------------------------------------------------------------------------


class SharedLimiter:
    """The pipeline's limiter when a budget is shared: local gate first, then a shared lease.

    Satisfies the engine's ``Limiter`` protocol (``acquire``/``release``), so the engine does
    not know whether it runs alone.
    """

    def __init__(
        self,
        local: RateController,
        store: LeaseStore,
        *,
        rpm: float | None,
        tpm: float | None,
        lease_s: float,
        policy: str,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.local = local
        self.store = store
        self._rate = {"r": rpm or 0.0, "t": tpm or 0.0}  # configured; 0 = none
        self._known = dict(self._rate)  # the rate in force (learned or configured)
        self._charged = dict(self._rate)  # the rate the units in hand were charged at
        self._left = {"r": 0.0, "t": 0.0}
        self._debt = 0.0  # token usage beyond (or, negative, below) the estimates so far
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._lease_s = lease_s
        self._rtt = 0.0  # the store's round trip (s), a moving average of the lease calls
        self._policy = policy
        self._log = log or (lambda msg: print(f"runner: {msg}", file=sys.stderr, flush=True))
        self._procs = 1
        self._down_since: float | None = None
        self._fallback: dict[str, TokenBucket] = {}
        self._published: dict[str, tuple[float, float]] = {}
        self._bg: set[asyncio.Task[None]] = set()
        self._prober: asyncio.Task[None] | None = None
        # counters for the summary
        self.leases = 0
        self.store_errors = 0
        self.outages = 0
        self.degraded_s = 0.0
        self.pauses_published = 0
        self.pauses_received = 0
        self.max_procs = 1
        self._pass_through()

    def _pass_through(self) -> None:
        """While no rate is known (none configured, none learned yet), :meth:`acquire` is the
        local gate's own: nothing is leased, and a ``--workers`` run (shared through a limit
        file) or a Redis one without limits pays no wrapper per request. The first limit learned
        (:meth:`_learn`) puts the shared acquire back."""
        if not (self._known["r"] > 0 or self._known["t"] > 0):
            self.acquire = self.local.acquire  # type: ignore[method-assign]
        else:
            self.__dict__.pop("acquire", None)

    def expect_processes(self, n: int) -> None:
        """The number of processes to split the rate over under ``fail_open`` until the store
        has counted them (one of ``--shard K/N``: N)."""
        self._procs = max(n, 1)

    # -- protocol ---------------------------------------------------------------------------

    async def acquire(self, est_tokens: int) -> float:
        waited = await self.local.acquire(est_tokens)
        try:
            if self._known["r"] > 0:
                if self._left["r"] < 1:
                    waited += await self._refill("r", 1)
                self._left["r"] -= 1
            if self._known["t"] > 0:
                if self._left["t"] < est_tokens:
                    waited += await self._refill("t", est_tokens)
                self._left["t"] -= est_tokens
        except BaseException:
            self.local.release(est_tokens, Attempt(status=None, error=_CANCELLED))
            raise
        return waited

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        self.local.release(est_tokens, attempt)
        usage = attempt.usage
        if usage is not None and self._known["t"] > 0:
            self._debt += usage.prompt_tokens + usage.completion_tokens - est_tokens
        rate = attempt.rate
        if rate is not None:
            for kind, limit in (("r", rate.limit_requests), ("t", rate.limit_tokens)):
                if limit is not None and limit > 0:
                    self._learn(kind, float(limit))
        error = attempt.error
        if error is not None and error.code in _THROTTLES:
            paused = self.local.paused_until
            if paused is not None:
                left = paused - self.local_clock()
                if left > 0:
                    self._spawn(self._publish(pause_s=left))

    def local_clock(self) -> float:
        return asyncio.get_running_loop().time()

    # -- leases -----------------------------------------------------------------------------

    async def _refill(self, kind: str, need: float) -> float:
        start = time.perf_counter()
        while self._left[kind] < need:
            task = self._pending.get(kind)
            if task is None or task.done():  # a done task's callback may not have run yet
                task = asyncio.get_running_loop().create_task(self._lease(kind, need))
                self._pending[kind] = task
                task.add_done_callback(functools.partial(self._lease_done, kind))
            await asyncio.shield(task)
        return time.perf_counter() - start

    def _lease_done(self, kind: str, _task: asyncio.Task[None]) -> None:
        self._pending.pop(kind, None)

    def _span(self) -> float:
        """Seconds of the rate a lease holds: ``lease_s``, or more for a far store."""
        return max(self._lease_s, min(RTT_LEASES * self._rtt, MAX_LEASE_S))

    def _lease_size(self, kind: str, need: float, span: float | None = None) -> float:
        span = self._span() if span is None else span
        return max(need, self._known[kind] / 60.0 * span, 1.0)

    async def _lease(self, kind: str, need: float) -> None:
        span = self._span()
        amount = self._lease_size(kind, need, span)
        charge = amount
        settled = self._debt if kind == "t" else 0.0
        charge += settled  # settle usage corrections with this lease
        delay = 0.5
        while True:
            if self._policy == "fail_open" and self._down_since is not None:
                # Down: the local bucket at once; the store is tried in the background, so no
                # lease waits out a store timeout again (each one did, the fallback's rate cut
                # to a lease per timeout).
                self._probe()
                wait = self._fallback_take(kind, amount)
                if wait > 0:
                    await asyncio.sleep(wait)
                self._left[kind] += amount
                return
            sent = time.perf_counter()
            try:
                grant = await self.store.take(kind, charge, self._rate[kind])
            except StoreUnavailable as exc:
                self._store_down(exc)
                if self._policy == "fail_open":
                    wait = self._fallback_take(kind, amount)
                    if wait > 0:
                        await asyncio.sleep(wait)
                    self._left[kind] += amount
                    return
                await asyncio.sleep(delay)  # fail_closed: wait for the store, lose nothing
                delay = min(delay * 2, MAX_RETRY_S)
                continue
            break
        if self.leases:  # the first call also connects (several round trips): not counted
            took = time.perf_counter() - sent
            self._rtt = took if not self._rtt else self._rtt + 0.3 * (took - self._rtt)
        self._store_up()
        self._debt -= settled  # corrections that arrived during the call wait for the next one
        self.leases += 1
        self._procs = max(grant.procs, 1)
        self.max_procs = max(self.max_procs, grant.procs)
        rate = grant.rate_per_min
        if rate <= 0:
            # The store knows no limit (Redis restarted, the limit file started afresh, the
            # learned one aged out) and none is configured, so this lease went uncharged: keep
            # the rate this process learned, and teach it to the store again for the next one.
            rate = self._known[kind]
            self._spawn(self._publish(kind=kind, limit=rate))
        self._known[kind] = rate
        self._charged[kind] = grant.rate_per_min  # 0: nothing to give back
        # A lease sized at a higher rate than it was granted at (a limit learned meanwhile by
        # another process) is cut to this rate's size: no process holds more than one lease.
        wait = grant.wait_s
        size = self._lease_size(kind, need, span)
        if amount > size:
            excess = amount - size
            self._spawn(self._give_back(kind, excess, grant.rate_per_min))
            wait = max(wait - excess * 60.0 / rate, 0.0)
            amount = size
        if grant.pause_s > 0:
            self.pauses_received += 1
            self.local.pause(grant.pause_s)
            wait = max(wait, grant.pause_s)
        if wait > 0:
            await asyncio.sleep(wait)
        self._left[kind] += amount

    def _probe(self) -> None:
        """Under ``fail_open`` while the store is down: try it every PROBE_S in the background
        (one probe at a time) until it answers."""
        if self._prober is None or self._prober.done():
            self._prober = asyncio.get_running_loop().create_task(self._probe_until_up())
            self._bg.add(self._prober)
            self._prober.add_done_callback(self._bg.discard)

    async def _probe_until_up(self) -> None:
        while self._down_since is not None:
            await asyncio.sleep(PROBE_S)
            try:
                await self.store.publish()  # harmless: no pause, no limit
            except StoreUnavailable:
                self.store_errors += 1
                continue
            self._store_up()

    def _fallback_take(self, kind: str, amount: float) -> float:
        bucket = self._fallback.get(kind)
        if bucket is None:
            # the last known shared rate, split over the last known number of processes
            rate = self._known[kind] / max(self._procs, 1)
            bucket = self._fallback[kind] = TokenBucket(rate, self.local_clock)
        return bucket.reserve(amount)

    def _store_down(self, exc: StoreUnavailable) -> None:
        self.store_errors += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.outages += 1
            what = (
                f"fail_open: local limits at the last shared rate / {self._procs} process(es)"
                if self._policy == "fail_open"
                else "fail_closed: requests wait until it is back"
            )
            self._log(f"shared limit store ({self.store.name}) unreachable ({exc}); {what}")

    def _store_up(self) -> None:
        if self._down_since is not None:
            down = time.monotonic() - self._down_since
            self.degraded_s += down
            self._down_since = None
            self._fallback.clear()
            self._log(f"shared limit store ({self.store.name}) is back after {down:.1f}s")

    # -- publishing -------------------------------------------------------------------------

    def _learn(self, kind: str, limit: float) -> None:
        now = time.monotonic()
        last = self._published.get(kind)
        # publish a change at once, a repeat once a minute (it keeps the learned limit alive)
        if last is None or last[0] != limit or now - last[1] > LEARNED_TTL_S / 5:
            self._published[kind] = (limit, now)
            configured = self._rate[kind]
            self._known[kind] = min(limit, configured) if configured > 0 else limit
            self._pass_through()  # a rate is known now: acquire leases it
            # A lease taken at a higher (configured) rate is cut to the new lease size and the
            # rest handed back: the overshoot of a start at the wrong rate ends here.
            excess = self._left[kind] - self._lease_size(kind, 0.0)
            if excess > 0:
                self._left[kind] -= excess
                self._spawn(self._give_back(kind, excess, self._charged[kind]))
            self._spawn(self._publish(kind=kind, limit=limit))

    async def _publish(self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0) -> None:
        try:
            await self.store.publish(pause_s=pause_s, kind=kind, limit=limit)
        except StoreUnavailable as exc:
            self._store_down(exc)
            return
        if pause_s > 0:
            self.pauses_published += 1

    async def _give_back(self, kind: str, amount: float, rate_per_min: float) -> None:
        try:
            await self.store.take(kind, -amount, rate_per_min, exact=True)
        except StoreUnavailable as exc:
            self._store_down(exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)

    # -- end --------------------------------------------------------------------------------

    async def aclose(self) -> None:
        for task in [*self._pending.values(), *self._bg]:
            task.cancel()
        await asyncio.gather(*self._pending.values(), *self._bg, return_exceptions=True)
        # give unspent lease units back, so the next run or the other processes may use them
        for kind in ("r", "t"):
            left = self._left[kind] - (self._debt if kind == "t" else 0.0)
            if left and self._charged[kind] > 0 and self._down_since is None:
                # at exit a store call gets the first deadline, not one grown by a slow store
                with contextlib.suppress(StoreUnavailable, TimeoutError):
                    async with asyncio.timeout(STORE_TIMEOUT_S):
                        await self.store.take(kind, -left, self._charged[kind], exact=True)
        if self._down_since is None:  # the others count this process out at once
            with contextlib.suppress(StoreUnavailable, TimeoutError):
                async with asyncio.timeout(STORE_TIMEOUT_S):
                    await self.store.leave()
        self.degraded_s += self._down_for()
        self._down_since = None  # counted: a report after the close does not count it again
        await self.store.close()

    def report(self) -> dict[str, Any]:
        """The summary's ``shared_limit`` section."""
        return {
            "store": self.store.name,
            "policy": self._policy,
            "lease_s": self._lease_s,
            "lease_span_s": round(self._span(), 3),  # lease_s, or more for a far store
            "store_rtt_ms": round(self._rtt * 1000.0, 1),
            "leases": self.leases,
            "rpm": self._known["r"] or None,
            "tpm": self._known["t"] or None,
            "max_processes": self.max_procs,
            "pauses_published": self.pauses_published,
            "pauses_received": self.pauses_received,
            "store_errors": self.store_errors,
            "outages": self.outages,
            # an outage still going on when the summary is made counts too
            "degraded_s": round(self.degraded_s + self._down_for(), 3),
        }

    def _down_for(self) -> float:
        return time.monotonic() - self._down_since if self._down_since is not None else 0.0


def _proc_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


async def check_redis(config: RunConfig, *, base_url: str, api_key: str | None) -> None:
    """Pre-flight of ``redis_url`` before any output is opened: Redis refusing runner (a wrong
    user or password, an ACL without EVAL) is exit 2 with every output untouched. The check in
    :func:`open_shared_limiter` came after the outputs were opened, so ``--no-resume`` with a
    wrong ``RUNNER_REDIS_PASSWORD`` truncated the last run's results, then stopped. An
    unreachable Redis is left to the policy, as there."""
    assert config.redis_url is not None
    key = limit_key(config.provider, base_url, api_key, config.limit_scope)
    store = RedisStore(config.redis_url, key, _proc_id())
    try:
        await store.check()
    finally:
        await store.close()


def _store_log(config: RunConfig, shard: str | None) -> Callable[[str], None]:
    """How the limiter says the store went away and came back: a warning event under
    ``--log-format json`` (every stderr line one JSON object), else a ``runner:`` line; a
    shard's (each ``--workers`` worker's) names its shard, so N workers' lines can be told
    apart."""
    who = "" if shard is None else f"shard {shard}: "
    if config.log_format == "json":
        from .logs import note_line

        return lambda msg: note_line(who + msg, quiet=config.quiet)
    return lambda msg: print(f"runner: {who}{msg}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def open_shared_limiter(
    config: RunConfig, *, base_url: str, api_key: str | None, local: RateController
) -> AsyncIterator[SharedLimiter]:
    """The shared limiter the config asks for: Redis when ``redis_url``, else ``limit_file``."""
    proc = _proc_id()
    store: LeaseStore
    if config.redis_url:
        key = limit_key(config.provider, base_url, api_key, config.limit_scope)
        store = RedisStore(config.redis_url, key, proc)
        try:
            await store.check()
        except ConfigError:
            await store.close()
            raise
    elif config.limit_file is not None:
        store = FileStore(config.limit_file, proc)
    else:  # pragma: no cover - the caller checks
        raise ConfigError("a shared limit needs redis_url or limit_file")
    from .shards import resolve_shard

    spec = resolve_shard(config, os.environ)
    limiter = SharedLimiter(
        local,
        store,
        rpm=config.rpm,
        tpm=config.tpm,
        lease_s=config.lease_s,
        policy=config.redis_policy,
        log=_store_log(config, None if spec is None else str(spec)),
    )
    # A shard knows the run has N processes before the store has counted any: under fail_open
    # with the store down from the start, each of --workers N took the whole rate (N times it).
    if spec is not None:
        limiter.expect_processes(spec.count)
    try:
        yield limiter
    finally:
        await limiter.aclose()
