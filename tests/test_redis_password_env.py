"""The Redis password out of argv and config files: ``redis_url`` without it, plus the
``RUNNER_REDIS_PASSWORD`` environment variable (README, "Scaling out"). A ``--redis-url``
holding it showed in ``ps`` and /proc/PID/cmdline to every user of the host."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from scaleout import redis_with_users

from runner import run
from runner.config import RunConfig
from runner.errors import ConfigError

PASSWORD = "env-only-Redis-PW-7f3a"
REDIS_PASSWORD_ENV = "RUNNER_REDIS_PASSWORD"  # the documented name (runner.config)


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_with_users(("runner", "on", f">{PASSWORD}", "~*", "+@all")) as port:
        yield port


def _jobs(tmp_path: Path) -> Path:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "j{i}", "query": "q{i}"}}\n' for i in range(3)))
    return jobs


async def test_the_password_from_the_environment_shares_the_limit(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    url = f"redis://runner@127.0.0.1:{redis_port}/0"  # the user, and no password
    outcome = await run(_jobs(tmp_path), RunConfig(redis_url=url, rpm=600, progress="off"))
    assert outcome.exit_code == 0
    assert outcome.summary["shared_limit"]["store"] == "redis"
    assert outcome.summary["shared_limit"]["leases"] >= 1


async def test_a_wrong_password_from_the_environment_is_exit_2_naming_neither(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "not-the-Redis-PW-91b2"
    monkeypatch.setenv(REDIS_PASSWORD_ENV, wrong)
    url = f"redis://runner@127.0.0.1:{redis_port}/0"
    cfg = RunConfig(redis_url=url, rpm=600, progress="off")
    with pytest.raises(ConfigError, match="Redis refused runner") as info:
        await run(_jobs(tmp_path), cfg)
    assert info.value.exit_code == 2
    assert REDIS_PASSWORD_ENV in str(info.value)  # says where the password came from
    assert wrong not in str(info.value) and PASSWORD not in str(info.value)


def test_a_password_in_both_the_url_and_the_environment_is_refused_unechoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    for url in ("redis://runner:url-PW-1@h:6379/0", "redis://:url-PW-1@h:6379/0"):
        with pytest.raises(ConfigError, match="give it once") as info:
            RunConfig(redis_url=url)
        assert "url-PW-1" not in str(info.value) and PASSWORD not in str(info.value)
    RunConfig(redis_url="redis://runner@h:6379/0")  # the URL without one: fine
    monkeypatch.delenv(REDIS_PASSWORD_ENV)
    RunConfig(redis_url="redis://runner:url-PW-1@h:6379/0")  # as before, in the URL alone


def test_the_cli_run_keeps_the_password_out_of_argv_and_every_output(
    tmp_path: Path, redis_port: int
) -> None:
    # The command line a scheduler runs, as `ps` shows it, holds no password; nothing the run
    # writes or says does either.
    jobs = _jobs(tmp_path)
    url = f"redis://runner@127.0.0.1:{redis_port}/0"
    argv = [sys.executable, "-m", "runner", "run", str(jobs), "--redis-url", url, "--rpm", "600"]
    argv += ["--log-format", "json", "--provider", "mock"]
    env = {**os.environ, REDIS_PASSWORD_ENV: PASSWORD}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in " ".join(argv)
    summary = orjson.loads(tmp_path.joinpath("jobs.summary.json").read_bytes())
    assert summary["shared_limit"]["store"] == "redis"
    said = done.stdout + done.stderr
    for f in tmp_path.iterdir():
        if f.is_file():
            said += f.read_text(errors="replace")
    assert PASSWORD not in said


async def test_an_error_that_would_quote_the_password_is_scrubbed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # redis-py's messages quote no password today; a log line must not depend on it.
    pytest.importorskip("redis")
    from runner.redis_limits import RedisStore

    monkeypatch.setenv(REDIS_PASSWORD_ENV, PASSWORD)
    store = RedisStore("redis://runner@127.0.0.1:1/0", "runner:{k}", "proc")
    try:
        said = store._said(ConnectionError(f"AUTH runner {PASSWORD} refused"))
    finally:
        await store.close()
    assert PASSWORD not in said and said == "ConnectionError: AUTH runner *** refused"
