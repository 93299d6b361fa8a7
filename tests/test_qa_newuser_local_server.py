"""What a new user meets first against a local OpenAI-compatible server (vLLM, llama-server).

A wrong ``--model`` is the commonest slip: vLLM (and OpenAI) answer it with a 404 whose body
says the model does not exist. The run stops at once as for a wrong URL, but the message must
point at the model the server's own ``/models`` list does not hold, not at the base URL.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest
from aiohttp import web
from helpers import mock_process, serve_app
from promise_helpers import cli_run, run_fast, write_jobs

from runner import loading
from runner.api import run
from runner.config import RunConfig
from runner.errors import Unavailable
from runner.jobs import load_contexts, read_jobs
from runner.models import BadLine, Job


def _vllm_like(posts: list[str]) -> web.Application:
    """Lists one model, ``served``; every chat request gets vLLM's 404 for an unknown model
    (for ``served`` too: a listed model that 404s is a wrong URL, whatever the body says)."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "served", "object": "model"}]})

    async def chat(request: web.Request) -> web.Response:
        model = (await request.json())["model"]
        posts.append(model)
        message = f"The model `{model}` does not exist."
        error = {"object": "error", "message": message, "type": "NotFoundError", "code": 404}
        return web.json_response(error, status=404)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def _guard_message(tmp_path: Path, model: str) -> tuple[str, str, list[str]]:
    posts: list[str] = []
    async with serve_app(_vllm_like(posts)) as url:
        jobs = write_jobs(tmp_path, 20)
        config = RunConfig(
            provider="openai", base_url=url, model=model, concurrency=1, progress="off"
        )
        outcome = await run(jobs, config)
    assert outcome.exit_code == 2 and outcome.stopped == "endpoint"
    return str(outcome.summary["guard"]["message"]), url, posts


async def test_a_404_for_a_model_the_server_does_not_list_names_the_listed_models(
    tmp_path: Path,
) -> None:
    message, url, posts = await _guard_message(tmp_path, "gpt-4o")
    assert posts == ["gpt-4o"]  # stopped at the first answer, nothing else sent
    assert "'gpt-4o' is not one this server lists" in message, message
    assert f"{url}/models (served)" in message and "check --model" in message
    assert "does it end in /v1?" not in message


async def test_a_404_for_a_listed_model_still_points_at_the_base_url(tmp_path: Path) -> None:
    message, _, posts = await _guard_message(tmp_path, "served")
    assert posts == ["served"]
    assert "does it end in /v1?" in message and "not one this server lists" not in message


def _write(path: Path, *objs: dict[str, object]) -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs))
    return path


def test_a_misspelt_field_is_a_bad_line_naming_the_field_it_resembles(tmp_path: Path) -> None:
    """``parms`` ran the job with no max_tokens, ``cache-id`` without its context, a ``system``
    on the job without that prompt: each a billed request other than the one meant."""
    contexts = _write(tmp_path / "contexts.jsonl", {"cache_id": "faq", "system": "Be brief."})
    jobs = _write(
        tmp_path / "jobs.jsonl",
        {"id": "a", "cache_id": "faq", "querry": "hi"},
        {"id": "b", "cache_id": "faq", "query": "hi", "parms": {"max_tokens": 4}},
        {"id": "c", "cache-id": "faq", "query": "hi"},
        {"id": "d", "system": "Be brief.", "query": "hi"},
        {"id": "e", "query": "hi", "params": {"max_token": 4}},
        {
            "custom_id": "f",
            "body": {"messages": [{"role": "user", "content": "hi"}], "max_token": 4},
        },
        # extra fields that resemble nothing still pass, as before (an eval set's answer key)
        {"id": "g", "cache_id": "faq", "query": "hi", "expected": "yes", "label": 1},
        {"id": "h", "query": "hi", "params": {"temperature": 0, "max_new_tokens": 4}},
        # fields of a user's own that only look near one: a pairwise set's numbered siblings,
        # an eval's mode, a cached flag (were refused as model/query/cache_id typos)
        {"id": "i", "query": "hi", "model1": "a", "model2": "b", "query2": "x", "mode": "cot"},
        {"id": "j", "query": "hi", "Mode": "few-shot", "cached": True, "messages2": []},
    )
    items = list(read_jobs(jobs, contexts=load_contexts(contexts)))
    problems = {i: str(item.message) for i, item in enumerate(items) if isinstance(item, BadLine)}
    assert "jobs.jsonl:1: querry: unknown field, did you mean query?" in problems[0]
    assert "jobs.jsonl:2: parms: unknown field, did you mean params?" in problems[1]
    assert "jobs.jsonl:3: cache-id: unknown field, did you mean cache_id?" in problems[2]
    assert "jobs.jsonl:4: system: not a field of the compact shape" in problems[3]
    assert "contexts file" in problems[3]
    assert (
        "jobs.jsonl:5: params.max_token: unknown parameter, did you mean max_tokens?"
        in (problems[4])
    )
    assert (
        "jobs.jsonl:6: body.max_token: unknown parameter, did you mean max_tokens?" in (problems[5])
    )
    assert sorted(problems) == [0, 1, 2, 3, 4, 5]
    good = [item for item in items if isinstance(item, Job)]
    assert [job.custom_id for job in good] == ["g", "h", "i", "j"]


def _loading_server(ready_after: int, gets: list[int], posts: list[int]) -> web.Application:
    """llama-server while it loads its model: 503 "Loading model" on every path for the first
    ``ready_after`` GETs of /models, then a working chat endpoint."""

    def loading() -> web.Response:
        error = {"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}
        return web.json_response(error, status=503)

    async def models(_: web.Request) -> web.Response:
        gets.append(1)
        if len(gets) <= ready_after:
            return loading()
        return web.json_response({"object": "list", "data": [{"id": "tiny"}]})

    async def chat(_: web.Request) -> web.Response:
        posts.append(1)
        if len(gets) <= ready_after:
            return loading()
        answer = {"role": "assistant", "content": "ok"}
        return web.json_response(
            {
                "id": "c",
                "object": "chat.completion",
                "model": "tiny",
                "choices": [{"index": 0, "message": answer, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            }
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


async def test_a_server_still_loading_its_model_is_waited_for_before_any_job(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job used to go into the 503s, be retried to the end and fail: exit 1, 40 failed."""
    monkeypatch.setattr(loading, "LOADING_POLL_S", (0.05,))
    gets: list[int] = []
    posts: list[int] = []
    async with serve_app(_loading_server(4, gets, posts)) as url:
        jobs = write_jobs(tmp_path, 20)
        config = RunConfig(provider="openai", base_url=url, model="tiny", progress="off")
        outcome = await run(jobs, config)
    assert outcome.exit_code == 0 and outcome.summary["jobs"]["ok"] == 20
    assert len(gets) == 5 and len(posts) == 20  # no job sent while it loaded
    err = capsys.readouterr().err
    assert err.count("is not ready (HTTP 503: Loading model") == 1, err
    assert "waiting for it up to 300 s" in err


async def test_a_server_that_never_finishes_loading_is_the_transient_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "LOADING_POLL_S", (0.05,))
    monkeypatch.setattr(loading, "LOADING_WAIT_S", 0.3)
    gets: list[int] = []
    posts: list[int] = []
    async with serve_app(_loading_server(10**6, gets, posts)) as url:
        jobs = write_jobs(tmp_path, 20)
        config = RunConfig(provider="openai", base_url=url, model="tiny", progress="off")
        with pytest.raises(Unavailable, match=r"still not ready after 0 s \(HTTP 503: Loading"):
            await run(jobs, config)
    assert posts == [] and len(gets) >= 3
    assert not (tmp_path / "jobs.results.jsonl").exists()


async def test_a_503_that_is_not_a_loading_model_is_not_waited_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A provider's or a proxy's 503 on GET /models (OpenAI's 'overloaded or not ready yet', a
    load balancer with no healthy backend for that path) said nothing about the setup before
    the loading wait: the run went on and retried its jobs. It made the run wait 300 s and
    stop (exit 75) with nothing sent, though the chat endpoint answered."""
    gets: list[int] = []
    posts: list[int] = []
    ready = _loading_server(-1, [], posts)  # its chat endpoint answers at once

    async def overloaded(_: web.Request) -> web.Response:
        gets.append(1)
        error = {"error": {"message": "The server is overloaded or not ready yet.", "type": ""}}
        return web.json_response(error, status=503)

    app = web.Application()
    app.router.add_get("/v1/models", overloaded)
    for route in ready.router.routes():
        if route.method == "POST":
            app.router.add_post(route.resource.canonical, route.handler)  # type: ignore[union-attr]
    async with serve_app(app) as url:
        jobs = write_jobs(tmp_path, 3)
        config = RunConfig(provider="openai", base_url=url, model="tiny", progress="off")
        outcome = await asyncio.wait_for(run(jobs, config), 20)
    assert outcome.exit_code == 0 and len(posts) == 3 and len(gets) == 1
    assert "is not ready" not in capsys.readouterr().err


async def test_nothing_listening_on_a_local_port_asks_whether_the_server_is_started(
    tmp_path: Path,
) -> None:
    """A wrong port read "the provider is unreachable ...; run again later", as for an outage."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    jobs = write_jobs(tmp_path, 3)
    config = RunConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1", model="tiny")
    with pytest.raises(Unavailable) as caught:
        await run(jobs, config)
    said = str(caught.value)
    assert f"nothing answers at 127.0.0.1:{port} on this machine" in said, said
    assert "is the server started, and is that its port?" in said
    assert loading.local_hint("https://api.openai.com/v1") == ""


def test_a_base_url_without_a_provider_says_it_is_taken_for_the_mock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--base-url`` pointed at llama-server, without ``--provider``, sent model "mock-1" and
    recorded provider "mock" in the summary, and said nothing."""
    jobs = write_jobs(tmp_path, 3)
    with mock_process("--latency", "zero") as url:
        code, err = cli_run(capsys, "run", str(jobs), "--base-url", url, "--progress", "off")
        assert code == 0, err
        assert "--base-url without --provider: the server is taken for a `runner mock`" in err
        assert "sent model 'mock-1'" in err and "say --provider openai" in err
        named = ("--provider", "mock", "--no-resume")
        code, err = cli_run(capsys, "run", str(jobs), "--base-url", url, *named)
        assert code == 0 and "without --provider" not in err, err


def test_status_given_the_latency_file_summary_or_jobs_names_the_results_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``runner report`` takes the latency file, ``runner status`` the results: given the
    wrong one of the three files side by side, it said only "not a runner output"."""
    jobs = write_jobs(tmp_path, 3)
    code, err = run_fast(capsys, jobs)
    assert code == 0, err
    results = tmp_path / "jobs.results.jsonl"
    for given in ("jobs.latency.jsonl", "jobs.summary.json", "jobs.jsonl"):
        code, err = cli_run(capsys, "status", str(tmp_path / given))
        assert code == 2, err
        assert "not a runner output" in err
        assert f"(runner status reads the results file: {results})" in err, err
    stray = tmp_path / "other.latency.jsonl"
    stray.write_text("")
    code, err = cli_run(capsys, "status", str(stray))
    assert code == 2 and "reads the results file" not in err, err


async def test_a_model_the_server_does_not_list_is_said_before_the_first_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """llama-server answers with its one model whatever the name: a run with --model gpt-4o
    went through and its summary recorded gpt-4o, a model that never answered."""
    gets: list[int] = []
    posts: list[int] = []
    async with serve_app(_loading_server(0, gets, posts)) as url:  # lists "tiny", answers all
        jobs = write_jobs(tmp_path, 3)
        for model, said in (("gpt-4o", True), ("tiny", False)):
            config = RunConfig(
                provider="openai", base_url=url, model=model, progress="off", resume=False
            )
            outcome = await run(jobs, config)
            assert outcome.exit_code == 0
            err = capsys.readouterr().err
            warned = "the server lists the models tiny; 'gpt-4o' (--model" in err
            assert warned is said, err
        # a library call that asked for no display prints nothing
        quiet = RunConfig(provider="openai", base_url=url, model="gpt-4o", resume=False)
        assert (await run(jobs, quiet)).exit_code == 0
        assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("listed", "model"),
    [
        # OpenRouter: a variant of a listed model; Azure: a deployment name; Anthropic: an alias
        (["openai/gpt-4o", "openai/gpt-4o-mini"], "openai/gpt-4o:nitro"),
        (["gpt-4o", "gpt-4o-mini", "text-embedding-3-small"], "my-gpt4o-deployment"),
        (["claude-sonnet-4-20250514", "claude-3-5-haiku-20241022"], "claude-3-5-haiku-latest"),
        (["llama3:latest"], "llama3"),  # Ollama: the tag-less name is the :latest one
    ],
)
async def test_a_provider_that_answers_models_it_does_not_list_gets_no_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listed: list[str], model: str
) -> None:
    """The 'not among them' warning was printed on every run against these providers, for
    a model each answers: noise that teaches a reader to skip warnings."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": i} for i in listed]})

    ready = _loading_server(-1, [], [])  # its chat endpoint answers at once
    app = web.Application()
    app.router.add_get("/v1/models", models)
    for route in ready.router.routes():
        if route.method == "POST":
            app.router.add_post(route.resource.canonical, route.handler)  # type: ignore[union-attr]
    async with serve_app(app) as url:
        jobs = write_jobs(tmp_path, 2)
        config = RunConfig(provider="openai", base_url=url, model=model, progress="off")
        assert (await run(jobs, config)).exit_code == 0
    assert "is not among them" not in capsys.readouterr().err


async def test_model_ids_the_server_lists_are_key_guarded_in_the_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose /models echoes the caller's key as a model id: the warning that names
    the listed models (and a 404's error that does) must never print it."""
    key = "sk-listed-0123456789abcdef0123"
    monkeypatch.setenv("OPENAI_API_KEY", key)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": f"echo-{key}-tiny"}]})

    async def chat(_: web.Request) -> web.Response:
        return web.json_response(
            {"choices": [{"message": {"role": "assistant", "content": "ok"}}], "usage": {}}
        )

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    async with serve_app(app) as url:
        jobs = write_jobs(tmp_path, 2)
        config = RunConfig(provider="openai", base_url=url, model="gpt-4o", progress="off")
        outcome = await run(jobs, config)
    err = capsys.readouterr().err
    assert outcome.exit_code == 0
    assert "the server lists the models echo-" in err and "tiny" in err, err
    assert key not in err and key not in str(outcome.summary)
