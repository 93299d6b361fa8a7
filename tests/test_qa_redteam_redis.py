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

import pytest
from scaleout import redis_missing_reason, start_redis

from runner import run
from runner.config import RunConfig
from runner.errors import ConfigError

NO_REDIS = redis_missing_reason()
PASSWORD = "s3cret-redis-PW"


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    if NO_REDIS is not None:
        if os.environ.get("CI"):
            pytest.fail(NO_REDIS)
        pytest.skip(NO_REDIS)
    import redis

    server = start_redis([], "127.0.0.1")
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        admin.execute_command("ACL", "SETUSER", "noeval", "on", f">{PASSWORD}", "~*", "+@all")
        admin.execute_command("ACL", "SETUSER", "noeval", "-eval", "-evalsha")
        admin.execute_command("ACL", "SETUSER", "runner", "on", f">{PASSWORD}", "~*", "+@all")
        admin.close()
        yield server.port
    finally:
        server.stop()


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
