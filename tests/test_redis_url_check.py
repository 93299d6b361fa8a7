"""``redis_url`` is checked in one place, when the config is built (``config._check_redis_url``);
the Redis store trusts it. The store had its own ValueError branch, the only guard of what the
config let through (``max_connections=-1``), and a URL that ``urlsplit`` itself refuses was a
ValueError traceback from the config check. The URL is never echoed: it may hold a password."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner.config import RunConfig
from runner.errors import ConfigError

pytest.importorskip("redis")

PASSWORD = "s3cret-redis-PW"
BAD = [
    f"redis://:{PASSWORD}@127.0.0.1:6379/0?max_connections=-1",  # only the store refused it
    f"redis://:{PASSWORD}@[::1/0",  # a ValueError traceback from the config check
    f"redis://:{PASSWORD}@127.0.0.1:63x9/0",
    f"redis://:{PASSWORD}@127.0.0.1:6379/0?socket_timeout=soon",
    f"redis://:{PASSWORD}@127.0.0.1:6379/abc",
]
GOOD = [
    f"redis://:{PASSWORD}@127.0.0.1:6379/0",
    "rediss://user:pw@h:6380/2?socket_timeout=1&max_connections=0",
    "unix:///tmp/redis.sock?db=1",
]


@pytest.mark.parametrize("url", BAD)
def test_a_bad_redis_url_is_a_config_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError, match="redis_url") as info:
        RunConfig(redis_url=url)
    assert info.value.exit_code == 2
    assert PASSWORD not in str(info.value)


@pytest.mark.parametrize("url", BAD + GOOD)
async def test_the_store_builds_its_client_for_every_url_the_config_accepts(url: str) -> None:
    """One rule: what the config accepts, the store builds without a check of its own."""
    from runner.redis_limits import RedisStore

    try:
        RunConfig(redis_url=url)
    except ConfigError:
        assert url in BAD
        return
    assert url in GOOD
    store = RedisStore(url, "runner:{t}", "p")  # builds the client; connects to nothing
    await store.close()


def test_the_cli_refuses_it_before_anything_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "--redis-url", BAD[0])
    assert code == 2, err
    assert "redis_url is not a Redis URL redis-py can use" in err
    assert PASSWORD not in err
    assert sorted(os.listdir(tmp_path)) == before
