"""Red team of ``RUNNER_REDIS_PASSWORD``: read as the API key is, without the surrounding
whitespace a Secret made from a file carries (``kubectl create secret --from-file`` keeps the
file's last line break); Redis refused the password with its newline, and the message blamed
the user and password, which looked right."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from scaleout import redis_with_users

from runner import run
from runner.config import RunConfig
from runner.errors import ConfigError

PASSWORD = "red23-Redis-PW-c41e"
ENV = "RUNNER_REDIS_PASSWORD"


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_with_users(("runner", "on", f">{PASSWORD}", "~*", "+@all")) as port:
        yield port


async def test_a_line_break_around_the_password_is_not_part_of_it(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, f" {PASSWORD}\n")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("".join(f'{{"id": "j{i}", "query": "q{i}"}}\n' for i in range(3)))
    url = f"redis://runner@127.0.0.1:{redis_port}/0"
    outcome = await run(jobs, RunConfig(redis_url=url, rpm=600, progress="off"))
    assert outcome.exit_code == 0
    assert outcome.summary["shared_limit"]["store"] == "redis"


def test_a_control_character_inside_the_password_is_exit_2_unechoed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("redis")
    monkeypatch.setenv(ENV, "red23-half\nother-half")
    with pytest.raises(ConfigError, match=ENV) as info:
        RunConfig(redis_url="redis://runner@h:6379/0")
    assert info.value.exit_code == 2
    assert "red23-half" not in str(info.value) and "other-half" not in str(info.value)
    monkeypatch.setenv(ENV, " \n")  # blank: no password, as unset
    RunConfig(redis_url="redis://runner:url-PW@h:6379/0")
