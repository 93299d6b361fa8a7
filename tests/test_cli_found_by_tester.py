"""Paths a tester found broken, driven through the real ``runner`` command.

Each test starts its own server on 127.0.0.1: the simulated provider on a thread of the test
process (helpers.mock_process), or a tiny aiohttp app in a child process answering like Go's
json.Encoder / Flask's jsonify, stopped by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from helpers import mock_process, runner

PY = sys.executable


def start_server(args: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def mock_url(request: pytest.FixtureRequest) -> Iterator[str]:
    flags: list[str] = getattr(request, "param", ["--latency", "zero"])
    with mock_process(*flags) as url:
        yield url


def run_args(url: str, jobs: Path, *extra: str) -> list[str]:
    return [
        "run", str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
        "--progress", "off", *extra,
    ]  # fmt: skip


def write_jobs(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


def results(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def server_requests(url: str) -> int:
    root = url.rsplit("/v1", 1)[0]
    stats: dict[str, Any] = orjson.loads(urllib.request.urlopen(root + "/stats").read())
    return int(stats["requests"])


# -- a legal answer must not corrupt the results file -----------------------------------------

GO_FLASK_SERVER = textwrap.dedent(
    """
    import json, sys
    from aiohttp import web

    shape = sys.argv[1]
    count = 0

    def encode(obj):
        if shape == "go":  # json.Encoder.Encode: compact, then a newline
            return json.dumps(obj, separators=(",", ":")) + "\\n"
        if shape == "flask":  # jsonify in debug: indented, newline-terminated
            return json.dumps(obj, indent=2) + "\\n"
        return json.dumps(obj, indent=2).replace("\\n", "\\r\\n")  # crlf

    async def models(request):
        return web.Response(text=encode({"data": []}), content_type="application/json")

    async def chat(request):
        global count
        count += 1
        body = await request.json()
        if count % 4 == 0:  # a pretty-printed error body, retried
            err = {"error": {"message": "busy", "type": "server_error"}}
            return web.Response(text=encode(err), status=503, content_type="application/json")
        reply = {"id": "c1", "object": "chat.completion", "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": "a\\nb"}}],
                 "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}
        return web.Response(text=encode(reply), content_type="application/json")

    async def stats(request):
        return web.json_response({"requests": count})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)

    async def main():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        import asyncio
        await asyncio.Event().wait()

    import asyncio
    asyncio.run(main())
    """
)


@pytest.mark.parametrize("shape", ["go", "flask", "crlf"])
def test_line_breaking_bodies_give_one_valid_line_per_job(tmp_path: Path, shape: str) -> None:
    script = tmp_path / "server.py"
    script.write_text(GO_FLASK_SERVER)
    proc, url = start_server([PY, str(script), shape])
    try:
        jobs = write_jobs(
            tmp_path / "jobs.jsonl", [{"id": f"q{i}", "query": "hi"} for i in range(20)]
        )
        r = runner(*run_args(url, jobs, "--concurrency", "4"))
        assert r.returncode == 0, r.stderr
        out = tmp_path / "jobs.results.jsonl"
        rows = results(out)  # every line parses
        assert sorted(x["custom_id"] for x in rows) == sorted(f"q{i}" for i in range(20))
        assert all(
            x["response"]["body"]["choices"][0]["message"]["content"] == "a\nb" for x in rows
        )
        sent = server_requests(url)
        again = runner(*run_args(url, jobs))
        assert again.returncode == 0, again.stderr
        assert server_requests(url) == sent  # a re-run resumes: nothing is sent again
    finally:
        stop(proc)


# -- duplicate ids and line-N ids --------------------------------------------------------------


@pytest.mark.parametrize(
    "mock_url", [["--base-ms", "0", "--decode-ms-per-token", "20"]], indirect=True
)
@pytest.mark.parametrize("how", ["resume", "retry-failed"])
def test_a_duplicate_or_bad_line_never_costs_the_real_job_its_answer(
    tmp_path: Path, mock_url: str, how: str
) -> None:
    jobs = write_jobs(
        tmp_path / "jobs.jsonl",
        [
            {"id": "slow", "query": "q", "params": {"max_tokens": 150}},  # 3 s: killed first
            {"id": "slow", "query": "again"},  # duplicate: fails at read time
            {"id": "line-4", "query": "q", "params": {"max_tokens": 150}},  # next to bad line 4
            {"id": 17},  # bad, no readable id: keyed by its line
        ],
    )
    out = tmp_path / "jobs.results.jsonl"
    proc = subprocess.Popen([PY, "-m", "runner", *run_args(mock_url, jobs)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not out.exists() or out.read_bytes().count(b"\n") < 2):
        time.sleep(0.05)
    proc.kill()  # the two invalid_input lines are written, both real jobs still in flight
    proc.wait()
    first = results(out)
    assert sorted(x["error"]["code"] for x in first) == ["invalid_input", "invalid_input"]
    dup = next(x for x in first if x["line"] == 2)
    assert dup["custom_id"] is None and "duplicate id 'slow'" in dup["error"]["message"]

    extra = ["--retry-failed"] if how == "retry-failed" else []
    # The re-run sends both real jobs again: to an instant mock, not the slow one (3 s each).
    with mock_process("--latency", "zero") as fast_url:
        r = runner(*run_args(fast_url, jobs, *extra))
    assert r.returncode in (0, 1), r.stderr  # (whether the exit code covers earlier runs: #9 A)
    rows = results(out)
    by_id = {x["custom_id"]: x for x in rows if x["custom_id"] is not None}
    assert by_id.keys() == {"slow", "line-4"}
    assert by_id["slow"]["error"] is None and by_id["line-4"]["error"] is None
    assert sorted(x["line"] for x in rows if x["custom_id"] is None) == [2, 4]
    assert len(rows) == 4
    lat = [orjson.loads(x) for x in (tmp_path / "jobs.latency.jsonl").read_bytes().splitlines()]
    assert sorted(str(x.get("custom_id") or x.get("line")) for x in lat) == [
        "2", "4", "line-4", "slow"
    ]  # fmt: skip


# -- --order input must not lose paid answers on kill -9 ---------------------------------------


@pytest.mark.parametrize(
    "mock_url", [["--base-ms", "0", "--decode-ms-per-token", "5"]], indirect=True
)
def test_order_input_kill_9_loses_no_held_answer(tmp_path: Path, mock_url: str) -> None:
    n = 300
    rows = [{"id": "q0", "query": "q", "params": {"max_tokens": 3000}}]  # 15 s: holds the rest
    rows += [{"id": f"q{i}", "query": "q", "params": {"max_tokens": 1}} for i in range(1, n)]
    jobs = write_jobs(tmp_path / "jobs.jsonl", rows)
    proc = subprocess.Popen(
        [PY, "-m", "runner", *run_args(mock_url, jobs, "--order", "input", "--concurrency", "8")]
    )
    latency = tmp_path / "jobs.latency.jsonl"
    deadline = time.monotonic() + 8  # well before q0 ends
    while time.monotonic() < deadline and (
        not latency.exists() or latency.read_bytes().count(b"\n") < n - 1
    ):
        time.sleep(0.05)  # until every answer but q0's has been flushed
    proc.kill()
    proc.wait()
    answered_before = server_requests(mock_url)
    assert answered_before >= n - 1

    # The re-run goes to a second, instant server (the jobs file is what a resume checks, not
    # the URL): re-sent to the first one, q0 alone would take its 15 s again. Every request the
    # re-run makes is counted there.
    with mock_process("--latency", "zero") as fast_url:
        r = runner(*run_args(fast_url, jobs, "--order", "input"))
        assert r.returncode == 0, r.stderr
        resent = server_requests(fast_url)
    assert resent <= 8, resent  # at most the requests in flight at the kill (here: q0)
    got = [x["custom_id"] for x in results(tmp_path / "jobs.results.jsonl")]
    assert got == [f"q{i}" for i in range(n)]  # every job once, in input order


def test_run_help_states_the_cache_adapt_default_the_config_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Found by QA: --help said "(default: on)" after --cache-adapt became opt-in (issue 11).
    from runner.cli import main
    from runner.config import RunConfig

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    part = text[text.index("--cache-adapt, --no-cache-adapt") :]
    want = "on" if RunConfig().cache_adapt else "off"
    assert part[: part.index(")") + 1].endswith(f"(default: {want})"), part[:300]
