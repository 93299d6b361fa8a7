"""What a new user meets first against a local OpenAI-compatible server (vLLM, llama-server).

A wrong ``--model`` is the commonest slip: vLLM (and OpenAI) answer it with a 404 whose body
says the model does not exist. The run stops at once as for a wrong URL, but the message must
point at the model the server's own ``/models`` list does not hold, not at the base URL.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from helpers import serve_app
from promise_helpers import write_jobs

from runner.api import run
from runner.config import RunConfig


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
