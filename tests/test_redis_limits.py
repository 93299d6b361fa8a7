"""The shared limiter: GCRA leases in both stores, published pauses and limits, store failures,
and several runner processes on several (namespace) hosts holding one limit through Redis."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from scaleout import (
    PY,
    ROOT,
    Server,
    hosts,
    redis_missing_reason,
    require_redis,
    start_mock,
    start_redis,
    write_jobs,
)

from runner.errors import ConfigError
from runner.limits import BURST_S, RateController
from runner.models import Attempt, ErrorInfo, RateInfo, Usage
from runner.redis_limits import (
    FileStore,
    Grant,
    SharedLimiter,
    StoreUnavailable,
    limit_key,
)

NO_REDIS = redis_missing_reason()
# Under CI (which installs redis-server) a missing server fails the tests instead of skipping them.
needs_redis = pytest.mark.skipif(
    NO_REDIS is not None and not os.environ.get("CI"), reason=NO_REDIS or ""
)


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    require_redis()
    server = start_redis([], "127.0.0.1")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(params=["file", "redis"])
async def store(request: Any, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "file":
        s: Any = FileStore(tmp_path / "limits.json", "p1")
    else:
        from runner.redis_limits import RedisStore

        url = request.getfixturevalue("redis_url")
        s = RedisStore(url, limit_key("mock", "http://x", None, str(tmp_path)), "p1")
    try:
        yield s
    finally:
        await s.close()


# -- the stores ---------------------------------------------------------------------------


async def test_gcra_grants_the_rate_plus_one_burst_and_then_makes_callers_wait(store: Any) -> None:
    rate = 600.0  # 10 a second: a burst of BURST_S seconds is 10 units
    g = await store.take("r", 10 * BURST_S, rate)
    assert g.wait_s == pytest.approx(0.0, abs=0.05)
    g = await store.take("r", 5, rate)  # 5 more units are 0.5 s ahead of the allowance
    assert g.wait_s == pytest.approx(0.5, abs=0.1)
    assert g.rate_per_min == rate
    assert g.procs == 1


async def test_a_refund_at_the_charged_rate_moves_the_arrival_time_back(store: Any) -> None:
    await store.take("r", 10, 600.0)
    g = await store.take("r", 10, 600.0)
    assert g.wait_s == pytest.approx(1.0, abs=0.1)
    await store.take("r", -10, 600.0, exact=True)
    g = await store.take("r", 0.0001, 600.0)
    assert g.wait_s == pytest.approx(0.0, abs=0.1)


async def test_a_published_limit_lowers_every_later_lease(store: Any) -> None:
    await store.publish(kind="r", limit=60.0)
    g = await store.take("r", 2, 6000.0)
    assert g.rate_per_min == 60.0
    # 2 units at 1 a second with a 1 s burst: the second is due in about a second
    assert g.wait_s == pytest.approx(1.0, abs=0.1)
    assert (await store.take("t", 1, 1000.0)).rate_per_min == 1000.0  # tokens untouched


async def test_a_published_pause_reaches_the_next_lease(store: Any) -> None:
    await store.publish(pause_s=3.0)
    g = await store.take("r", 1, 600.0)
    assert 2.5 < g.pause_s <= 3.0


@pytest.mark.parametrize("kind", ["file", "redis"])
async def test_a_process_that_leaves_is_counted_out_at_once(
    kind: str, tmp_path: Path, request: Any
) -> None:
    # Counted for PROC_TTL_S (30 s) after it ended, a process made a run started meanwhile
    # split its fail_open rate over processes that were gone, and report them as running.
    def open_store(proc: str) -> Any:
        if kind == "file":
            return FileStore(tmp_path / "limits.json", proc)
        from runner.redis_limits import RedisStore

        url = request.getfixturevalue("redis_url")
        return RedisStore(url, limit_key("mock", "http://x", None, str(tmp_path)), proc)

    a, b = open_store("a"), open_store("b")
    try:
        await a.take("r", 1, 600.0)
        assert (await b.take("r", 1, 600.0)).procs == 2
        await b.leave()
        assert (await a.take("r", 1, 600.0)).procs == 1
    finally:
        await a.close()
        await b.close()


async def test_a_limiter_that_closes_leaves_the_store(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    a = _limiter(FileStore(path, "a"), "fail_closed")
    b = _limiter(FileStore(path, "b"), "fail_closed")
    await a.acquire(1)
    await b.acquire(1)
    await a.aclose()
    assert (await FileStore(path, "c").take("r", 0, 600.0)).procs == 2  # b and c, not a
    await b.aclose()


def test_the_limit_key_hashes_the_api_key_and_separates_scopes() -> None:
    a = limit_key("openai", "https://api.x/v1/", "sk-secret-123", None)
    assert "sk-secret" not in a
    assert a == limit_key("openai", "https://api.x/v1", "sk-secret-123", None)
    assert a != limit_key("openai", "https://api.x/v1", "sk-other", None)
    assert a != limit_key("openai", "https://api.x/v1", "sk-secret-123", "nightly")


# -- the limiter over a store that fails ----------------------------------------------------


class FlakyStore:
    """A store that answers from a FileStore, or fails while ``down`` is set."""

    name = "flaky"

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.down = False
        self.takes = 0

    async def take(self, kind: str, amount: float, rate: float, *, exact: bool = False) -> Grant:
        if self.down:
            raise StoreUnavailable("ConnectionError: refused")
        self.takes += 1
        return await self.inner.take(kind, amount, rate, exact=exact)

    async def publish(self, *, pause_s: float = 0.0, kind: str = "", limit: float = 0.0) -> None:
        if self.down:
            raise StoreUnavailable("ConnectionError: refused")
        await self.inner.publish(pause_s=pause_s, kind=kind, limit=limit)

    async def leave(self) -> None:
        if self.down:
            raise StoreUnavailable("ConnectionError: refused")
        await self.inner.leave()

    async def close(self) -> None:
        await self.inner.close()


def _limiter(store: Any, policy: str, rpm: float | None = 60000.0, **kw: Any) -> SharedLimiter:
    local = RateController(concurrency=64, rpm=None, tpm=kw.pop("local_tpm", None))
    logs: list[str] = kw.pop("logs", [])
    return SharedLimiter(
        local, store, rpm=rpm, tpm=kw.get("tpm"), lease_s=0.25, policy=policy, log=logs.append
    )


OK = Attempt(status=200)


async def test_fail_closed_holds_requests_until_the_store_is_back(tmp_path: Path) -> None:
    store = FlakyStore(FileStore(tmp_path / "l.json", "p"))
    logs: list[str] = []
    lim = _limiter(store, "fail_closed", logs=logs)
    store.down = True
    task = asyncio.create_task(lim.acquire(10))
    await asyncio.sleep(0.3)
    assert not task.done(), "fail_closed must not send while the store is unreachable"
    store.down = False
    await asyncio.wait_for(task, 5)
    lim.release(10, OK)
    rep = lim.report()
    assert rep["outages"] == 1 and rep["store_errors"] >= 1 and rep["degraded_s"] > 0.2
    assert any("unreachable" in m for m in logs) and any("is back" in m for m in logs)
    await lim.aclose()


async def test_fail_open_falls_back_to_the_last_rate_split_over_the_processes(
    tmp_path: Path,
) -> None:
    store = FlakyStore(FileStore(tmp_path / "l.json", "p"))
    lim = _limiter(store, "fail_open", rpm=60000.0)
    await lim.acquire(1)  # one lease while the store is up: rate known
    lim._procs = 4  # as if the store had seen four processes
    lim._left["r"] = 0
    store.down = True
    await asyncio.wait_for(lim.acquire(1), 2)  # sends without the store
    assert lim._fallback["r"].per_minute == pytest.approx(60000.0 / 4)
    assert lim.report()["outages"] == 1
    await lim.aclose()


async def test_a_throttle_is_published_and_pauses_another_process(tmp_path: Path) -> None:
    path = tmp_path / "l.json"
    a = _limiter(FileStore(path, "a"), "fail_closed")
    b = _limiter(FileStore(path, "b"), "fail_closed")
    await a.acquire(1)
    throttled = Attempt(
        status=429, error=ErrorInfo("rate_limited", "slow down", retriable=True, retry_after_s=2.0)
    )
    a.release(1, throttled)
    await asyncio.sleep(0.05)  # the publish task runs
    assert a.report()["pauses_published"] == 1
    await b.acquire(1)  # b's first lease sees the pause and waits it out...
    assert b.report()["pauses_received"] == 1
    assert b.local.paused_until is not None or b.report()["pauses_received"]
    await a.aclose()
    await b.aclose()


async def test_a_learned_lower_limit_cuts_the_lease_in_hand_and_reaches_the_store(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.json"
    a = _limiter(FileStore(path, "a"), "fail_closed", rpm=60000.0)
    await a.acquire(1)
    assert a._left["r"] > 200  # a quarter second at 1000 a second
    a.release(1, Attempt(status=200, rate=RateInfo(limit_requests=600)))
    assert a._left["r"] <= 600 / 60 * 0.25 + 1
    await asyncio.sleep(0.05)
    state = orjson.loads(path.read_bytes())
    assert state["lim_r"] == 600
    await a.aclose()


async def test_a_lease_granted_at_a_lower_learned_rate_is_cut_to_that_rates_size(
    tmp_path: Path,
) -> None:
    path = tmp_path / "l.json"
    await FileStore(path, "other").publish(kind="t", limit=60000.0)  # learned by another
    lim = SharedLimiter(
        RateController(concurrency=64, rpm=None, tpm=None),
        FileStore(path, "a"),
        rpm=None,
        tpm=600000.0,  # told ten times the limit: sized 2,500 tokens before the grant
        lease_s=0.25,
        policy="fail_closed",
    )
    t_before = time.time()
    await lim.acquire(55)
    assert lim._left["t"] == pytest.approx(250 - 55)  # a quarter second at 60,000 a minute
    await asyncio.sleep(0.05)  # the rest went back
    state = orjson.loads(path.read_bytes())
    # 0.25 s ahead of the read, within 0.1 s: the lower bound counts from before the grant, so
    # a loaded machine's late wake-up (the grant is then further in the past) does not fail it.
    assert state["tat_t"] - time.time() <= 0.25 + 0.1
    assert state["tat_t"] - (t_before + 0.05) >= 0.25 - 0.1
    await lim.aclose()


async def test_a_limiter_with_no_rate_leases_nothing_until_it_learns_one(
    tmp_path: Path,
) -> None:
    # --workers without configured limits: no lease (and no wrapper) per request until the
    # provider's headers say a limit; from then on every process's requests are leased.
    path = tmp_path / "l.json"
    lim = _limiter(FileStore(path, "a"), "fail_closed", rpm=None)
    for _ in range(3):
        await lim.acquire(1)
        lim.release(1, OK)
    assert lim.report()["leases"] == 0 and lim.local.in_flight == 0
    await lim.acquire(1)
    lim.release(1, Attempt(status=200, rate=RateInfo(limit_requests=600)))
    await lim.acquire(1)
    assert lim.report()["leases"] == 1 and lim.report()["rpm"] == 600
    assert lim._left["r"] == pytest.approx(600 / 60 * 0.25 - 1)
    lim.release(1, OK)
    await lim.aclose()


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_a_store_outage_is_said_in_the_runs_log_format_naming_the_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], log_format: str
) -> None:
    # Found in the final review: under --log-format json the outage lines were plain text (every
    # stderr line must be one JSON object), and --workers' N workers said them alike.
    from runner.config import RunConfig
    from runner.redis_limits import open_shared_limiter

    config = RunConfig(limit_file=tmp_path / "l.json", shard="1/2", log_format=log_format)
    local = RateController(concurrency=4, rpm=None, tpm=None)
    async with open_shared_limiter(config, base_url="http://x", api_key=None, local=local) as lim:
        capsys.readouterr()
        lim._store_down(StoreUnavailable("gone"))
        lim._store_up()
        err = capsys.readouterr().err.splitlines()
    assert len(err) == 2, err
    if log_format == "json":
        events = [orjson.loads(line) for line in err]
        assert [e["event"] for e in events] == ["warning", "warning"]
        said = [e["message"] for e in events]
    else:
        assert all(line.startswith("runner: ") for line in err)
        said = [line.removeprefix("runner: ") for line in err]
    assert said[0].startswith("shard 1/2: shared limit store (file) unreachable (gone)")
    assert said[1].startswith("shard 1/2: shared limit store (file) is back after")


async def test_token_usage_beyond_the_estimate_is_charged_with_the_next_lease(
    tmp_path: Path,
) -> None:
    store = FlakyStore(FileStore(tmp_path / "l.json", "p"))
    lim = _limiter(store, "fail_closed", rpm=600000.0, tpm=6000.0)
    await lim.acquire(10)
    lim.release(10, Attempt(status=200, usage=Usage(prompt_tokens=50, completion_tokens=60)))
    assert lim._debt == 100
    lim._left["t"] = 0
    await lim.acquire(10)
    assert lim._debt == 0
    await lim.aclose()


def test_a_bad_policy_is_a_config_error() -> None:
    from runner.config import RunConfig

    with pytest.raises(ConfigError, match="redis_policy"):
        RunConfig(redis_policy="maybe")


# -- several processes, several hosts, one Redis ------------------------------------------


def _sent_at(rec: dict[str, Any]) -> float:
    # started_at is when the job's task began, before the limiter let it through
    return float(rec["started_at"]) + float(rec["limiter_ms"]) / 1000.0


def _started(paths: list[Path]) -> list[list[float]]:
    return [
        sorted(_sent_at(orjson.loads(line)) for line in p.read_bytes().splitlines()) for p in paths
    ]


def _run_fleet(tmp_path: Path, *, shared: bool, n: int = 4, jobs: int = 300) -> dict[str, Any]:
    with hosts(n) as h:
        redis = start_redis(h.server, h.server_ip)
        mock: Server | None = None
        try:
            mock = start_mock(
                h.server,
                h.server_ip,
                "--rpm",
                "6000",
                "--base-ms",
                "5",
                "--decode-ms-per-token",
                "0.2",
            )
            procs = []
            for k, prefix in enumerate(h.clients):
                write_jobs(tmp_path / f"p{k}.jsonl", f"p{k}", jobs)
                cmd = [*prefix, PY, "-m", "runner", "run", str(tmp_path / f"p{k}.jsonl")]
                cmd += ["--provider", "openai", "--base-url", mock.url, "--rpm", "24000"]
                cmd += ["--progress", "off", "--no-resume"]
                if shared:
                    cmd += ["--redis-url", redis.url]
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE))
            for p in procs:
                _, err = p.communicate(timeout=60)
                assert p.returncode == 0, err.decode()[-2000:]
        finally:
            if mock is not None:
                mock.stop()
            redis.stop()
        starts = _started([tmp_path / f"p{k}.latency.jsonl" for k in range(n)])
        ids = [
            orjson.loads(line)["custom_id"]
            for k in range(n)
            for line in (tmp_path / f"p{k}.results.jsonl").read_bytes().splitlines()
        ]
        summaries = [orjson.loads((tmp_path / f"p{k}.summary.json").read_bytes()) for k in range(n)]
        # the steady state: from half a second after the last process began sending (its
        # first lease may still be at the configured rate) until the first one ends
        t0 = max(s[0] for s in starts) + 0.5
        t1 = min(s[-1] for s in starts)
        inside = sum(1 for s in starts for t in s if t0 <= t <= t1)
        return {
            "window_s": t1 - t0,
            "rate_per_s": inside / (t1 - t0) if t1 > t0 else float("inf"),
            "ids": ids,
            "namespaces": h.namespaces,
            "summaries": summaries,
        }


@needs_redis
def test_four_processes_on_four_hosts_hold_one_shared_limit(tmp_path: Path) -> None:
    """4 runners told 24,000 RPM each against a mock allowing 6,000 (100/s): the aggregate
    stays near 100/s. (Without Redis each would learn 100/s for itself: about 400/s.)"""
    got = _run_fleet(tmp_path, shared=True)
    if got["window_s"] <= 2.0:
        # Start-up on a loaded machine (the suite runs in parallel workers) staggered the four
        # processes past any overlap, so nothing was measured: once more, the same assertions.
        (tmp_path / "again").mkdir()
        got = _run_fleet(tmp_path / "again", shared=True)
    assert len(got["ids"]) == 1200 and len(set(got["ids"])) == 1200  # 0 lost, 0 duplicated
    assert all(s["jobs"]["failed"] == 0 for s in got["summaries"])
    assert all(s["shared_limit"]["store"] == "redis" for s in got["summaries"])
    assert max(s["shared_limit"]["max_processes"] for s in got["summaries"]) == 4
    # loose bounds: the CI machine is shared; the benchmark measures the 3% target
    assert got["window_s"] > 2.0, "the processes barely overlapped: a very slow machine?"
    assert 70 < got["rate_per_s"] < 120, got["rate_per_s"]


@needs_redis
def test_redis_killed_and_restarted_mid_run_loses_no_job(tmp_path: Path) -> None:
    """fail_closed: requests wait while Redis is down; the run completes, every job once, and
    the outage shows in the log and in the summary."""
    import os
    import signal
    import time

    redis = start_redis([], "127.0.0.1")
    mock = start_mock([], "127.0.0.1", "--rpm", "3000", "--base-ms", "5")
    try:
        jobs = tmp_path / "j.jsonl"
        write_jobs(jobs, "j", 300)  # about 6 s at 50 a second
        cmd = [PY, "-m", "runner", "run", str(jobs), "--provider", "openai"]
        cmd += ["--base-url", mock.url, "--rpm", "3000", "--redis-url", redis.url]
        cmd += ["--progress", "off", "--lease-s", "0.1"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
        res = tmp_path / "j.results.jsonl"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not res.exists() or res.stat().st_size < 5000):
            time.sleep(0.05)
        os.kill(redis.proc.pid, signal.SIGKILL)
        redis.proc.wait()
        time.sleep(1.5)
        redis = start_redis([], "127.0.0.1", port=redis.port)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        mock.stop()
        redis.stop()
    ids = [orjson.loads(x)["custom_id"] for x in res.read_bytes().splitlines()]
    assert sorted(ids) == sorted(f"j-{i}" for i in range(300))
    shared = orjson.loads((tmp_path / "j.summary.json").read_bytes())["shared_limit"]
    assert shared["outages"] >= 1 and shared["degraded_s"] > 0.5
    text = err.decode()
    assert "unreachable" in text and "fail_closed" in text and "is back" in text
