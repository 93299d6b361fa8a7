"""Red team 3: explicit caches whose delete fails (the provider answers 500 to DELETE).

A cache that could not be deleted is still stored, and billed, by the provider: its storage
must be in the summary's cost (from its create until it was deleted at last, or until its
expiry when it never was), never dropped to zero."""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import ManualClock as Clock
from helpers import serve_app

from runner.explicit_cache import CacheAPIError, CacheInfo, ExplicitCaches
from runner.models import Job, Price
from runner.report import render_summary
from runner.stats import SummaryBuilder

TOKENS = 2000
PRICE = Price(input=1.0, cached_input=0.1, output=1.0, cache_storage=1.0)


class FailingDeletes:
    """An in-memory store whose first ``fails`` deletes answer 500 INTERNAL."""

    def __init__(self, fails: int) -> None:
        self.fails = fails
        self.live: dict[str, str] = {}
        self.n = 0

    async def create_cache(self, job: Job, *, ttl_s: float, display_name: str) -> CacheInfo:
        self.n += 1
        name = f"cachedContents/c{self.n}"
        self.live[name] = display_name
        return CacheInfo(name, display_name, TOKENS, ttl_s=ttl_s)

    async def extend_cache(self, name: str, *, ttl_s: float) -> CacheInfo:
        return CacheInfo(name, self.live[name], TOKENS, ttl_s=ttl_s)

    async def delete_cache(self, name: str) -> None:
        if self.fails > 0:
            self.fails -= 1
            raise CacheAPIError("DELETE: 500 INTERNAL", status=500, retriable=True)
        self.live.pop(name, None)

    async def list_caches(self) -> list[CacheInfo]:
        return [CacheInfo(n, d, TOKENS) for n, d in self.live.items()]


def job() -> Job:
    msgs = ({"role": "system", "content": "x" * 8000}, {"role": "user", "content": "q"})
    return Job("q1", 1, msgs, 1, "g1", "doc", None, {}, 8001, 8000)


async def one_group(fails: int) -> tuple[ExplicitCaches, FailingDeletes]:
    """A group open 100 s, closed (its delete may fail), the run ending 50 s later."""
    clock = Clock()
    store = FailingDeletes(fails)
    caches = ExplicitCaches(store, tag="t", concurrency=4, min_ttl_s=300.0, clock=clock)
    await caches.recover()
    await caches.open("g1", job(), 10)
    clock.t += 100.0
    caches.close("g1")
    for _ in range(5):
        await asyncio.sleep(0)
    clock.t += 50.0
    await caches.shutdown()
    return caches, store


async def test_a_delete_that_failed_once_bills_the_cache_until_the_retry_deleted_it() -> None:
    caches, store = await one_group(fails=1)
    cost = caches.cost(PRICE)
    assert store.live == {}
    assert cost["deleted"] == 1 and cost["left_alive"] == 0
    # created at t=1000, delete failed at 1100, deleted at shutdown at 1150: 150 s stored
    assert cost["cache_seconds"] == 150.0
    assert cost["storage_usd"] > 0
    assert any("500 INTERNAL" in e for e in cost["errors"])


async def test_a_cache_that_cannot_be_deleted_is_billed_to_its_expiry_and_reported() -> None:
    caches, store = await one_group(fails=99)
    cost = caches.cost(PRICE)
    assert list(store.live) == ["cachedContents/c1"]  # still on the server
    assert cost["left_alive"] == 1
    assert cost["cache_seconds"] == 300.0  # it lives out its TTL (300 s from its create)
    assert cost["storage_usd"] == round(TOKENS * 300.0 / 3600.0 / 1e6 * 1.0, 10)
    summary = SummaryBuilder(None).summary()
    summary["explicit_caches"] = cost
    text = render_summary(summary)
    assert "1 could not be deleted" in text and "runner caches" in text


async def test_a_deleted_cache_is_billed_once() -> None:
    caches, _ = await one_group(fails=0)
    cost = caches.cost(PRICE)
    assert cost["cache_seconds"] == 100.0 and cost["deleted"] == 1 and cost["left_alive"] == 0


# -- listing: the page token goes back as the server wrote it -------------------------------


async def test_a_page_token_with_plus_slash_and_equals_reaches_the_server_intact() -> None:
    # Found: the token was pasted into the query unquoted, so a base64 token's "+" reached the
    # server as a space: the next page was refused and the listing (leftover caches of a crash,
    # the last sweep at the end of a run) failed.
    from aiohttp import web

    from runner.config import RunConfig
    from runner.providers import GeminiBackend, open_backend

    token = "Ab+/c9=="
    seen: list[str | None] = []

    async def listing(request: web.Request) -> web.Response:
        got = request.query.get("pageToken")
        seen.append(got)
        if got is None:
            return web.json_response(
                {"cachedContents": [{"name": "cachedContents/a"}], "nextPageToken": token}
            )
        if got != token:
            return web.json_response({"error": {"code": 400, "message": "bad token"}}, status=400)
        return web.json_response({"cachedContents": [{"name": "cachedContents/b"}]})

    app = web.Application()
    app.router.add_get("/v1beta/cachedContents", listing)
    async with serve_app(app, "/v1beta") as base:
        cfg = RunConfig(provider="gemini", base_url=base, model="gemini-2.5-flash")
        async with open_backend(cfg, base_url=base, api_key="k") as be:
            assert isinstance(be, GeminiBackend)
            names = [c.name for c in await be.list_caches()]
    assert seen == [None, token]
    assert names == ["cachedContents/a", "cachedContents/b"]


# -- a group of one job gets no explicit cache ------------------------------------------------


async def test_a_group_of_one_job_is_sent_without_a_cache_and_bigger_ones_keep_theirs(
    tmp_path: Path,
) -> None:
    # Found: every one-question document got a cachedContents: its create billed the prefix at
    # the input price (what the full prompt costs), then the cached read and the storage on top:
    # 50 such groups cost 9.7% more than no caching at all (saving_net -0.097), and each job
    # waited for a create and a delete.
    from test_explicit_cache import FAST, config, mock_stats, write_jobs

    from runner.api import run
    from runner.mock import MockConfig, serve

    singles, big = tmp_path / "singles", tmp_path / "big"
    singles.mkdir()
    big.mkdir()
    jobs1, _ = write_jobs(singles, groups=8, per_group=1)
    jobs3, _ = write_jobs(big, groups=4, per_group=3)
    mock = MockConfig(gemini_implicit_cache=False, **FAST)
    async with serve(mock) as url:
        one = await run(jobs1, config(singles, url))
        st1 = await mock_stats(url)
        three = await run(jobs3, config(big, url))
        st3 = await mock_stats(url)
    assert one.exit_code == 0 and three.exit_code == 0
    assert st1["gemini"]["caches_created"] == 0
    assert one.summary["explicit_caches"]["single_job_groups"] == 8
    assert one.summary["cost"]["saving_net"] >= 0.0  # never worse than no caching
    assert st3["gemini"]["caches_created"] == 4 and st3["gemini"]["caches_alive"] == 0
    assert three.summary["cost"]["saving_net"] > 0.3


# -- `runner caches OUTPUT` after a crashed --workers run --------------------------------------


def test_caches_command_finds_the_leftovers_of_a_crashed_workers_run(tmp_path: Path) -> None:
    # Found: each shard is a run of its own output, so its caches carry the shard's tag
    # (R.shard-K-of-N.results.jsonl); `runner caches R.results.jsonl` looked only for R's tag
    # and said "0 cache(s) alive" while the crashed workers' caches were stored (and billed)
    # until their TTL.
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    import orjson
    from helpers import mock_process
    from test_explicit_cache import write_jobs

    def alive(root: str) -> int:
        stats = orjson.loads(urllib.request.urlopen(root + "/stats").read())
        return int(stats["gemini"]["caches_alive"])

    jobs, ctx = write_jobs(tmp_path, groups=4, per_group=40)
    out = tmp_path / "r.results.jsonl"
    flags = ["--base-ms", "40", "--decode-ms-per-token", "0", "--no-gemini-implicit-cache"]
    with mock_process(*flags) as url:
        root = url.rsplit("/v1", 1)[0]
        base = root + "/v1beta"
        cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx)]
        cmd += ["--provider", "gemini", "--base-url", base, "--model", "gemini-2.5-flash"]
        cmd += ["-o", str(out), "--workers", "2", "--concurrency", "4", "--progress", "off"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while alive(root) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        kids = [
            int(c) for c in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        ]
        for pid in kids:  # the workers first: a worker whose parent dies drains and cleans up
            os.kill(pid, signal.SIGKILL)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        left = alive(root)
        assert left >= 2
        caches = [sys.executable, "-m", "runner", "caches", str(out), "--provider", "gemini"]
        caches += ["--base-url", base]
        listed = subprocess.run(caches, capture_output=True, text=True, timeout=60)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.count("cachedContents/") == left
        deleted = subprocess.run([*caches, "--delete"], capture_output=True, text=True, timeout=60)
        assert deleted.returncode == 0, deleted.stderr
        assert alive(root) == 0
