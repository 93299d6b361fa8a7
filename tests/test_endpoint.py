"""A wrong endpoint stops fast with a clear message (issue 9).

A plain web server (``python3 -m http.server``, started here on loopback) and a base URL without
``/v1`` are the two everyday mistakes: the probe names an HTML or non-JSON ``/models``, and a
404/405/501 from the completion endpoint stops the run at once as a configuration error, leaving
every job unsent for a resume.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import serve_app
from promise_helpers import cli_run, fast_config, load, run_fast, write_jobs

from runner.api import run
from runner.config import RunConfig


def _http_server(directory: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-m",
            "http.server",
            "0",
            "--bind",
            "127.0.0.1",
            "-d",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.search(r"port (\d+)", line)
        assert m, line
        yield f"http://127.0.0.1:{m.group(1)}"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def web_root(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    return root


@pytest.fixture
def plain_server(web_root: Path) -> Iterator[str]:
    yield from _http_server(web_root)


def test_a_plain_web_server_is_named_by_the_probe(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plain_server: str
) -> None:
    jobs = write_jobs(tmp_path, 50)
    code, err = run_fast(capsys, jobs, "--provider", "openai", "--base-url", plain_server)
    assert code == 2, err
    assert f"{plain_server}/models" in err and "does it end in /v1?" in err
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_501_on_post_stops_at_once_and_leaves_every_job_unsent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], web_root: Path, plain_server: str
) -> None:
    # /models is a JSON file here, so the probe passes; POST then answers 501.
    (web_root / "models").write_text('{"object": "list", "data": []}')
    jobs = write_jobs(tmp_path, 400)
    code, err = run_fast(
        capsys, jobs, "--provider", "openai", "--base-url", plain_server, "--concurrency", "4"
    )
    assert code == 2, err
    assert f"POST {plain_server}/chat/completions" in err and "501" in err
    assert "does it end in /v1?" in err
    assert (tmp_path / "jobs.results.jsonl").read_bytes() == b""  # all 400 left for a resume
    summary = load(tmp_path / "jobs.summary.json")
    assert summary["stopped"] == "endpoint" and summary["exit_code"] == 2


def test_a_base_url_without_v1_on_the_mock_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runner.mock",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--latency",
            "zero",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        base = url.removesuffix("/v1")
        jobs = write_jobs(tmp_path, 30)
        code, err = run_fast(capsys, jobs, "--provider", "openai", "--base-url", base)
        assert code == 2, err
        assert f"POST {base}/chat/completions answered HTTP 404" in err
        assert "does it end in /v1?" in err
        assert (tmp_path / "jobs.results.jsonl").read_bytes() == b""  # every job left unsent
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _completion() -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


@pytest.mark.parametrize("status", [404, 405, 501])
async def test_a_wrong_endpoint_after_successes_is_the_guard_exit_3(
    tmp_path: Path, status: int
) -> None:
    posts = 0

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": []})

    async def chat(_: web.Request) -> web.Response:
        nonlocal posts
        posts += 1
        if posts <= 5:
            return web.json_response(_completion())
        return web.json_response({"error": {"message": "gone"}}, status=status)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        jobs = write_jobs(tmp_path, 200)
        config = RunConfig(provider="openai", base_url=url, concurrency=1, progress="off")
        outcome = await run(jobs, config)
    assert outcome.exit_code == 3 and outcome.stopped == "endpoint"
    assert posts == 6  # stopped at the first wrong answer: no retries, no other job sent
    assert outcome.summary["jobs"]["ok"] == 5 and outcome.summary["jobs"]["failed"] == 0
    assert "does it end in /v1?" in outcome.summary["guard"]["message"]


def test_no_provider_configured_is_said_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 0
    assert (
        "no provider configured: using the built-in simulated provider; replies are synthetic"
        in err
    )
    assert load(tmp_path / "jobs.summary.json")["provider"] == "mock"
    config = tmp_path / "named.toml"
    config.write_text('provider = "mock"\nprogress = "off"\n[mock]\nlatency = "zero"\n')
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "--no-resume")
    assert code == 0 and "no provider configured" not in err
