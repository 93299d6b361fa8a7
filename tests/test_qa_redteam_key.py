"""An API key as environments really hold it (found by the red team).

A key read from a file keeps its line break (a Kubernetes secret mounted as an env var, a CRLF
``.env``), and a pasted one may carry a space. Sent as is, a newline crashed aiohttp's header
writer (a traceback, exit 1), and a space let the key leak: the server echoed the header
trimmed, a spelling the key guard did not hunt for.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from helpers import mock_config, serve_app

from runner.api import run
from runner.errors import ConfigError

SECRET = "sk-live-0123456789-SECRET"


@pytest.fixture
async def echo_url() -> AsyncIterator[str]:
    """A server that answers every chat request with the Authorization header it received."""

    async def echo(request: web.Request) -> web.Response:
        if request.method == "GET":  # the pre-flight check
            return web.json_response({"data": []})
        said = f"you sent [{request.headers.get('Authorization', '')}]"
        message = {"role": "assistant", "content": said}
        usage = {"prompt_tokens": 3, "completion_tokens": 2}
        return web.json_response({"id": "c", "choices": [{"message": message}], "usage": usage})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    async with serve_app(app) as url:
        yield url


@pytest.mark.parametrize("env", [SECRET + "\n", SECRET + "\r\n", " " + SECRET + " ", "\t" + SECRET])
async def test_surrounding_whitespace_is_not_sent_and_the_key_never_leaks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, echo_url: str, env: str
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "query": "hi"}) + b"\n" for i in range(3))
    )
    monkeypatch.setenv("RT_KEY", env)
    out = await run(jobs, mock_config(tmp_path, echo_url, api_key_env="RT_KEY", max_attempts=1))
    assert out.exit_code == 0 and out.summary["jobs"]["ok"] == 3
    rows = [orjson.loads(r) for r in (tmp_path / "r.jsonl").read_bytes().splitlines()]
    content = rows[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert content == "you sent [Bearer [redacted]]"  # the key went out trimmed, and was found
    for name in ("r.jsonl", "l.jsonl", "s.json"):
        assert b"SECRET" not in (tmp_path / name).read_bytes()


def test_a_line_break_inside_the_key_is_a_config_error_that_does_not_show_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RT_KEY", "sk-live-0123\n456789-SECRET")
    cfg = mock_config(tmp_path, "http://127.0.0.1:9/v1", api_key_env="RT_KEY")
    with pytest.raises(ConfigError, match="RT_KEY holds a control character") as err:
        cfg.api_key()
    assert "SECRET" not in str(err.value)


def test_a_blank_key_counts_as_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RT_KEY", " \n")
    cfg = mock_config(tmp_path, "http://127.0.0.1:9/v1", api_key_env="RT_KEY")
    with pytest.raises(ConfigError, match=r"RT_KEY .* is not set"):
        cfg.api_key()
    monkeypatch.setenv("OPENAI_API_KEY", "\n")
    assert mock_config(tmp_path, "http://127.0.0.1:9/v1").api_key() is None
