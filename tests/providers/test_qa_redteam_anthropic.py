"""The second red team's Anthropic answers: what the Messages API sends with extended
thinking, server tools, refusals and the 1-hour cache, streamed and not."""

from __future__ import annotations

from typing import Any

import pytest
from providers.fake_provider import Fake
from providers.test_qa_redteam_wire import reply, send, sse

USAGE_START = {
    "input_tokens": 12,
    "cache_creation_input_tokens": 2048,
    "cache_read_input_tokens": 0,
    "cache_creation": {"ephemeral_5m_input_tokens": 0, "ephemeral_1h_input_tokens": 2048},
    "output_tokens": 1,
    "service_tier": "standard",
}


def message_start(usage: Any = USAGE_START) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
    }
    msg.update(content=[], stop_reason=None, stop_sequence=None)
    if usage is not None:
        msg["usage"] = usage
    return {"type": "message_start", "message": msg}


def block(i: int, b: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_start", "index": i, "content_block": b}


def delta(i: int, d: dict[str, Any]) -> dict[str, Any]:
    return {"type": "content_block_delta", "index": i, "delta": d}


def stop(i: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": i}


def end(reason: str, usage: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": usage,
        },
        {"type": "message_stop"},
    ]


THINKING_AND_TOOLS = [
    message_start(),
    {"type": "ping"},
    block(0, {"type": "thinking", "thinking": "", "signature": ""}),
    delta(0, {"type": "thinking_delta", "thinking": "Let me "}),
    delta(0, {"type": "thinking_delta", "thinking": "search."}),
    delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM"}),
    stop(0),
    block(1, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix"}),
    stop(1),
    block(2, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}),
    delta(2, {"type": "input_json_delta", "partial_json": ""}),
    delta(2, {"type": "input_json_delta", "partial_json": '{"query": "wea'}),
    delta(2, {"type": "input_json_delta", "partial_json": 'ther"}'}),
    stop(2),
    block(
        3,
        {
            "type": "web_search_tool_result",
            "tool_use_id": "srvtoolu_1",
            "content": [{"type": "web_search_result", "url": "https://e.x", "title": "t"}],
        },
    ),
    stop(3),
    block(4, {"type": "text", "text": ""}),
    delta(4, {"type": "text_delta", "text": "Sunny."}),
    stop(4),
    *end("end_turn", {"output_tokens": 57, "server_tool_use": {"web_search_requests": 1}}),
]


async def test_thinking_redacted_and_server_tool_blocks_are_kept_in_order(fake: Fake) -> None:
    att = await send(fake, sse(THINKING_AND_TOOLS), provider="anthropic", stream=True)
    assert att.error is None, att.error
    body = att.body
    assert isinstance(body, dict)
    kinds = [b["type"] for b in body["content"]]
    assert kinds == [
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "text",
    ]
    assert body["content"][0]["thinking"] == "Let me search."
    assert body["content"][0]["signature"] == "EqQBCgIYAhIM"
    assert body["content"][1]["data"] == "EmwKAhgBEgy3va3pzix"
    assert body["content"][2]["input"] == {"query": "weather"}
    assert body["content"][4]["text"] == "Sunny."
    assert body["stop_reason"] == "end_turn"
    assert body["usage"]["cache_creation"]["ephemeral_1h_input_tokens"] == 2048
    assert att.usage is not None
    assert att.usage.prompt_tokens == 12 + 2048 and att.usage.cache_write_tokens == 2048
    assert att.usage.completion_tokens == 57


async def test_usage_only_in_message_delta_is_counted(fake: Fake) -> None:
    """Some gateways (and newer API versions) send the whole usage with message_delta."""
    events = [
        message_start(usage=None),
        block(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "Hi"}),
        stop(0),
        *end(
            "end_turn",
            {
                "input_tokens": 30,
                "cache_read_input_tokens": 2000,
                "cache_creation_input_tokens": 0,
                "output_tokens": 3,
            },
        ),
    ]
    att = await send(fake, sse(events), provider="anthropic", stream=True)
    assert att.error is None and att.usage is not None
    assert (att.usage.prompt_tokens, att.usage.cached_tokens) == (2030, 2000)
    assert att.usage.completion_tokens == 3


@pytest.mark.parametrize(
    "reason", ["refusal", "pause_turn", "max_tokens", "model_context_window_exceeded"]
)
@pytest.mark.parametrize("stream", [False, True])
async def test_unusual_stop_reasons_keep_the_answer(fake: Fake, reason: str, stream: bool) -> None:
    """A refusal (empty or partial content) or a paused server-tool turn is the model's
    answer, billed: written as the result with its stop_reason, never retried."""
    usage = {"input_tokens": 9, "output_tokens": 4}
    if stream:
        events = [
            message_start({"input_tokens": 9, "output_tokens": 1}),
            block(0, {"type": "text", "text": ""}),
            delta(0, {"type": "text_delta", "text": "I can't"}),
            stop(0),
            *end(reason, {"output_tokens": 4}),
        ]
        handler = sse(events)
    else:
        msg = message_start(usage)["message"]
        msg.update(content=[{"type": "text", "text": "I can't"}], stop_reason=reason)
        handler = reply(msg)
    att = await send(fake, handler, provider="anthropic", stream=stream)
    assert att.error is None, att.error
    assert isinstance(att.body, dict) and att.body["stop_reason"] == reason
    assert att.usage is not None and att.usage.completion_tokens == 4
    assert len(fake.seen) == 1


async def test_overloaded_mid_stream_is_a_retriable_error_not_an_answer(fake: Fake) -> None:
    events = [
        message_start(),
        block(0, {"type": "text", "text": ""}),
        delta(0, {"type": "text_delta", "text": "Half an ans"}),
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
    ]
    att = await send(fake, sse(events), provider="anthropic", stream=True)
    assert att.error is not None and att.error.retriable
    assert "overloaded" in att.error.message
