"""Red team 3: the shared limiter behind a slow Redis (a delaying TCP proxy) or a store that
times out instead of refusing.

Found: with Redis 0.6 s away (a proxy delaying every byte by 0.3 s each way) a fail_closed run
sent nothing, ever: each call had 2 s, a fresh connection needs several round trips, and a
timeout drops the connection, so every retry timed out again. Under fail_open every lease
waited out the 2 s timeout before taking from the local bucket, so the fallback ran at one
lease per timeout (2.5 req/s of a 20 req/s limit) instead of the documented rate."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from scaleout import require_redis, start_redis

import runner.redis_limits as rl
from runner.limits import RateController
from runner.models import Attempt
from runner.redis_limits import Grant, RedisStore, SharedLimiter, StoreUnavailable

ROOT = Path(__file__).resolve().parent.parent


def _limiter(store: Any, policy: str, *, rpm: float, lease_s: float = 0.25) -> SharedLimiter:
    local = RateController(concurrency=64, rpm=None, tpm=None)
    return SharedLimiter(
        local, store, rpm=rpm, tpm=None, lease_s=lease_s, policy=policy, log=lambda _m: None
    )


async def test_fail_closed_gets_through_a_store_slower_than_the_first_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Scaled down: calls answer in 0.15 s, the first deadline is 0.05 s.
    monkeypatch.setattr(rl, "STORE_TIMEOUT_S", 0.05)
    monkeypatch.setattr(rl, "MAX_STORE_TIMEOUT_S", 2.0, raising=False)
    store = RedisStore("redis://127.0.0.1:1/0", "runner:{test}", "p")  # never connected
    calls = []

    async def slow(*, keys: list[str], args: list[Any]) -> Any:
        calls.append(time.monotonic())
        await asyncio.sleep(0.15)
        return ["0", "0", str(args[2]), 1] if len(args) > 3 else 1

    store._take = store._publish = slow  # type: ignore[assignment]
    lim = _limiter(store, "fail_closed", rpm=60000.0)
    await asyncio.wait_for(lim.acquire(1), 5)  # old code: every call timed out, forever
    lim.release(1, Attempt(status=200))
    assert lim.report()["leases"] == 1
    assert store.timeout_s >= 4 * 0.15  # the next call is given 4x what this one took
    await lim.aclose()


class TimingOutStore:
    """A store whose every call hangs ``delay`` seconds and then fails (a blackholed host)."""

    name = "timing-out"

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.calls = 0

    async def take(self, kind: str, amount: float, rate: float, *, exact: bool = False) -> Grant:
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise StoreUnavailable("TimeoutError: ")

    async def publish(self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise StoreUnavailable("TimeoutError: ")

    async def leave(self) -> None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        raise StoreUnavailable("TimeoutError: ")

    async def close(self) -> None:
        pass


async def test_fail_open_does_not_wait_out_a_store_timeout_per_lease() -> None:
    store = TimingOutStore(0.3)
    # 6000 req/min, leases of one request (lease_s 0.01): 40 requests are 0.4 s of the rate
    lim = _limiter(store, "fail_open", rpm=6000.0, lease_s=0.01)
    start = time.monotonic()
    for _ in range(40):
        await asyncio.wait_for(lim.acquire(1), 5)
        lim.release(1, Attempt(status=200))
    took = time.monotonic() - start
    # one timeout (0.3 s) to find the store down, then the local bucket at the rate (old code:
    # 40 leases x 0.3 s = 12 s)
    assert took < 2.0, took
    assert store.calls <= 4  # the first lease and a probe a second, not one call per lease
    assert lim.report()["outages"] == 1
    await lim.aclose()


# -- end to end: a real redis-server behind a proxy that delays every byte --------------------


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        while True:
            data = await src.read(65536)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            at, data = await queue.get()
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            if not data:
                dst.close()
                return
            dst.write(data)
            await dst.drain()

    await asyncio.gather(read(), write(), return_exceptions=True)


@contextlib.asynccontextmanager
async def delaying_proxy(port: int, delay: float) -> AsyncIterator[int]:
    writers: list[asyncio.StreamWriter] = []
    pipes: list[asyncio.Task[Any]] = []

    async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        writers.append(cw)
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            cw.close()
            return
        writers.append(sw)
        pipes.append(
            asyncio.ensure_future(asyncio.gather(_pipe(cr, sw, delay), _pipe(sr, cw, delay)))
        )

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for t in pipes:
            t.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        for w in writers:
            w.close()
            with contextlib.suppress(OSError):
                await w.wait_closed()
        await server.wait_closed()


async def test_a_run_through_redis_600_ms_away_finishes_under_fail_closed(tmp_path: Path) -> None:
    require_redis()
    redis = start_redis([], "127.0.0.1")
    try:
        async with delaying_proxy(redis.port, 0.3) as proxied:  # 0.6 s round trip
            jobs = tmp_path / "jobs.jsonl"
            jobs.write_bytes(
                b"".join(orjson.dumps({"id": f"j{i}", "query": "q"}) + b"\n" for i in range(10))
            )
            cfg = tmp_path / "cfg.toml"
            cfg.write_text(
                'model = "m-1"\nconcurrency = 4\n[limits]\nrpm = 6000\n'
                f'redis_url = "redis://127.0.0.1:{proxied}/0"\nredis_policy = "fail_closed"\n'
                '[mock]\nlatency = "zero"\n'
            )
            out = tmp_path / "r.results.jsonl"
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runner", "run", str(jobs), "-c", str(cfg), "-o",
                str(out), "--progress", "off", "-q", cwd=ROOT, stderr=subprocess.PIPE,
            )  # fmt: skip
            try:
                _, err = await asyncio.wait_for(proc.communicate(), 40)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                pytest.fail("the run hung on a slow Redis (fail_closed never got a lease)")
            assert proc.returncode == 0, err.decode()
            assert len(out.read_bytes().splitlines()) == 10
    finally:
        redis.stop()
