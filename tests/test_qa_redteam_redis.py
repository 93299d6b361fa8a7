"""Found by the second red team: Redis refusing runner's credentials was taken for an outage.

A wrong password in redis_url (or an ACL user without EVAL) answered every lease with an
AuthenticationError / NOPERM, which the limiter handled as "unreachable": under fail_closed
(the default) every request waited for ever, the log saying to wait until Redis "is back";
under fail_open the run went on unshared. Neither can ever recover: it is exit 2 at the start."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from scaleout import redis_with_users

from runner import run
from runner.config import RunConfig
from runner.errors import ConfigError
from runner.redis_limits import FileStore

PASSWORD = "s3cret-redis-PW"


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_with_users(
        ("noeval", "on", f">{PASSWORD}", "~*", "+@all"),
        ("noeval", "-eval", "-evalsha"),
        ("runner", "on", f">{PASSWORD}", "~*", "+@all"),
    ) as port:
        yield port


def _jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "j{i}", "query": "q{i}"}}\n' for i in range(3)))
    return jobs


@pytest.mark.parametrize("policy", ["fail_closed", "fail_open"])
@pytest.mark.parametrize("user", ["runner:wrong-password", "noeval:" + PASSWORD])
async def test_redis_refusing_the_credentials_is_exit_2_naming_no_password(
    tmp_path: Path, redis_port: int, policy: str, user: str
) -> None:
    url = f"redis://{user}@127.0.0.1:{redis_port}/0"
    cfg = RunConfig(redis_url=url, redis_policy=policy, rpm=600, progress="off", quiet=True)
    with pytest.raises(ConfigError, match="Redis refused runner") as info:
        async with asyncio.timeout(10):  # the old code waited here for ever (fail_closed)
            await run(_jobs(tmp_path), cfg)
    assert info.value.exit_code == 2
    assert PASSWORD not in str(info.value) and "wrong-password" not in str(info.value)
    assert (
        not (tmp_path / "jobs.results.jsonl").exists()
        or not (tmp_path / "jobs.results.jsonl").read_bytes()
    )


async def test_the_right_credentials_still_share_the_limit(tmp_path: Path, redis_port: int) -> None:
    url = f"redis://runner:{PASSWORD}@127.0.0.1:{redis_port}/0"
    cfg = RunConfig(redis_url=url, rpm=600, progress="off", quiet=True)
    outcome = await run(_jobs(tmp_path), cfg)
    assert outcome.exit_code == 0
    assert outcome.summary["shared_limit"]["store"] == "redis"
    assert outcome.summary["shared_limit"]["leases"] >= 1


# -- the limit file of --workers without Redis ------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [
        b'{"tat_r": 1.0}0.5, "procs": {}}',  # a shorter state written over a longer one, cut
        b'{"tat_r": 17',  # truncated
        b"[1, 2]",  # JSON, not an object
        b'{"tat_r": "soon", "pause": null, "procs": {"a": "x"}}',  # wrong types
        b"\x00\x00\x00",  # a block of zeros after a crash
    ],
)
async def test_a_damaged_limit_file_starts_afresh_instead_of_a_traceback(
    tmp_path: Path, content: bytes
) -> None:
    """A --workers run's limit file (a stable path beside the results) that a killed process
    left torn stopped every later run with an orjson/Type error traceback (exit 1)."""
    limits = tmp_path / "limits.json"
    limits.write_bytes(content)
    cfg = RunConfig(limit_file=limits, rpm=600, progress="off", quiet=True)
    outcome = await run(_jobs(tmp_path), cfg)
    assert outcome.exit_code == 0 and outcome.summary["jobs"]["ok"] == 3
    assert outcome.summary["shared_limit"]["store_errors"] == 0
    assert isinstance(orjson.loads(limits.read_bytes()), dict)


async def test_a_process_killed_between_write_and_truncate_leaves_valid_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    limits = tmp_path / "limits.json"
    store = FileStore(limits, "p1")
    await store.publish(kind="r", limit=12345.678)  # a long state
    limits.write_bytes(orjson.dumps({"procs": {f"p{i}": 1.0 for i in range(20)}}))

    def killed(fd: int, size: int) -> None:
        raise KeyboardInterrupt  # the process dies here: no truncate

    monkeypatch.setattr(os, "ftruncate", killed)
    with pytest.raises(KeyboardInterrupt):
        await store.take("r", 1.0, 600.0)  # the 20 stale processes are dropped: shorter
    monkeypatch.undo()
    orjson.loads(limits.read_bytes())  # valid JSON as left on disk
    await store.close()


@pytest.mark.parametrize("url", [f"redis://:{PASSWORD}@127.0.0.1:63x9/0", "redis://h:99999999/0"])
async def test_a_redis_url_that_does_not_parse_is_exit_2_not_a_traceback(
    tmp_path: Path, url: str
) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigError, match="redis_url") as info:
        await run(_jobs(tmp_path), RunConfig(redis_url=url, rpm=600, progress="off", quiet=True))
    assert info.value.exit_code == 2 and PASSWORD not in str(info.value)


@pytest.mark.parametrize("url", ["redis://127.0.0.1:6379/abc", "redis://127.0.0.1:6379/0?db=x"])
def test_a_redis_url_whose_database_is_not_a_number_is_refused(url: str) -> None:
    # redis-py takes a database it cannot read as database 0, silently: another run's limits
    pytest.importorskip("redis")
    with pytest.raises(ConfigError, match="redis_url") as info:
        RunConfig(redis_url=url)
    assert info.value.exit_code == 2
