"""The chat wires of the mock: one object per protocol over the server's protocol-neutral core.

:class:`~runner.mock.server.MockServer` owns what every protocol shares (counters, the prefix
caches, rate buckets, fault draws, timing, the HTTP plumbing); a :class:`ChatWire` owns what
one protocol says on the wire: how a request is parsed into a :class:`Reply`, and how bodies,
stream frames, errors and headers are rendered. :class:`OpenAIWire` speaks Chat Completions,
:class:`AnthropicWire` speaks Messages (the Gemini routes live in runner/mock/gemini.py).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from .cache import Boundary, anthropic_boundaries, block_boundaries
from .limits import Bucket, go_duration, rfc3339_after
from .tokenizer import anthropic_text, count_tokens, openai_text
from .wire import (
    ANTHROPIC_STATUS_ERRORS,
    OPENAI_STATUS_ERRORS,
    anthropic_error,
    anthropic_usage,
    openai_error,
    openai_usage,
)

if TYPE_CHECKING:
    from aiohttp.web_request import BaseRequest

    from .server import MockServer

__all__ = ["AnthropicWire", "BadRequest", "ChatWire", "OpenAIWire", "Reply"]


class Reply:
    """What one chat request will get, settled before any waiting starts."""

    __slots__ = (
        "cached",
        "decode_s",
        "fault",
        "finish_early",
        "include_usage",
        "input_tokens",
        "max_tokens",
        "n_out",
        "pending",
        "prompt_tokens",
        "replica",
        "ttft_s",
        "write_1h",
        "write_5m",
    )

    def __init__(self, prompt_tokens: int, max_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.input_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.n_out = max_tokens
        self.include_usage = False
        self.finish_early = False  # stopped before max_tokens: "stop" / "end_turn"
        self.cached = 0
        self.write_5m = 0
        self.write_1h = 0
        self.pending: list[Boundary] = []
        self.replica = 0
        self.fault: str | None = None
        self.ttft_s = 0.0
        self.decode_s = 0.0


class BadRequest(Exception):
    """A request body the provider would reject with 400."""


class ChatWire(Protocol):
    """One chat protocol as the server's core sees it: parse a request, render the answers."""

    #: the response header carrying the request id
    id_header: str
    #: whether output tokens have a bucket of their own (else the token bucket is charged
    #: prompt + max_tokens up front and settled on the actual reply length)
    separate_output: bool

    def api_key(self, request: BaseRequest) -> str | None: ...
    def auth_error(self, key: str | None) -> bytes: ...
    def bad_request(self, message: str) -> bytes: ...
    def plan(self, data: dict[str, Any], model: str, stream: bool) -> tuple[Reply, bytes]: ...
    def quota_error(self) -> tuple[int, bytes]: ...
    def input_cost(self, reply: Reply) -> int: ...
    def rate_headers(
        self, headers: dict[str, str], rpm: Bucket | None, tpm: Bucket | None, otpm: Bucket | None
    ) -> None: ...
    def retry_headers(self, wait_s: float, headers: dict[str, str]) -> None: ...
    def rate_limit_error(
        self, model: str, unit: str, bucket: Bucket, wait: float, cost: int
    ) -> bytes: ...
    def fault_429(self, wait_s: float) -> bytes: ...
    def status_error(self, status: int) -> tuple[int, bytes]: ...
    def stream_error(self) -> bytes: ...
    def body(self, reply: Reply, model: str, ident: str) -> bytes: ...
    def frames(self, reply: Reply, model: str, ident: str, words: str) -> list[bytes]: ...
    def models_doc(self, models: tuple[str, ...]) -> dict[str, Any]: ...


def _retry_after(wait_s: float, headers: dict[str, str]) -> None:
    headers["retry-after"] = str(max(1, math.ceil(wait_s)))


class OpenAIWire:
    """OpenAI Chat Completions (``POST /v1/chat/completions``), JSON or SSE."""

    __slots__ = ("_core",)
    id_header = "x-request-id"
    separate_output = False

    def __init__(self, core: MockServer) -> None:
        self._core = core

    def api_key(self, request: BaseRequest) -> str | None:
        auth = request.headers.get("Authorization", "")
        return auth[7:] if auth[:7].lower() == "bearer " else None

    def auth_error(self, key: str | None) -> bytes:
        if not key:
            return openai_error(
                "You didn't provide an API key. You need to provide your API key in an"
                " Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
                None,
            )
        # Never echo the key, not even masked: the client's logs may keep this message.
        return openai_error(
            "Incorrect API key provided. You can find your API key at"
            " https://platform.openai.com/account/api-keys.",
            "invalid_request_error",
            "invalid_api_key",
        )

    def bad_request(self, message: str) -> bytes:
        return openai_error(message, "invalid_request_error", None)

    def plan(self, data: dict[str, Any], model: str, stream: bool) -> tuple[Reply, bytes]:
        messages = data.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages: expected a non-empty array")
        max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
        defaulted = max_tokens is None
        core = self._core
        cfg = core.config
        if max_tokens is None:
            max_tokens = cfg.default_max_tokens
        elif not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("max_tokens: expected an integer >= 1")
        text = openai_text(messages, data.get("tools"))
        reply = Reply(count_tokens(len(text)), max_tokens)
        reply.n_out, reply.finish_early = core._outputs(max_tokens)
        # A request without a limit ends on its own: finish_reason "stop", never "length".
        reply.finish_early |= defaulted
        options = data.get("stream_options")
        reply.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        if cfg.cache and reply.prompt_tokens >= cfg.cache_min_prefix_tokens:
            ttl = 86400.0 if data.get("prompt_cache_retention") == "24h" else cfg.cache_ttl_s
            bounds = block_boundaries(model, text, cfg.cache_block_tokens, ttl)
            key = data.get("prompt_cache_key")
            core._cache_blocks(reply, text, bounds, key if isinstance(key, str) else None)
        return reply, text

    def quota_error(self) -> tuple[int, bytes]:
        return 429, openai_error(
            "You exceeded your current quota, please check your plan and billing details."
            " For more information on this error, read the docs:"
            " https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            "insufficient_quota",
        )

    def input_cost(self, reply: Reply) -> int:
        # OpenAI charges prompt + max_tokens up front (settled after on the actual length).
        return reply.prompt_tokens + reply.max_tokens

    def rate_headers(
        self, headers: dict[str, str], rpm: Bucket | None, tpm: Bucket | None, otpm: Bucket | None
    ) -> None:
        for name, b in (("requests", rpm), ("tokens", tpm)):
            if b is not None:
                headers["x-ratelimit-limit-" + name] = str(int(b.limit))
                headers["x-ratelimit-remaining-" + name] = str(b.remaining())
                headers["x-ratelimit-reset-" + name] = go_duration(b.reset_s())

    def retry_headers(self, wait_s: float, headers: dict[str, str]) -> None:
        _retry_after(wait_s, headers)
        headers["retry-after-ms"] = str(math.ceil(wait_s * 1000))

    def rate_limit_error(
        self, model: str, unit: str, bucket: Bucket, wait: float, cost: int
    ) -> bytes:
        per = "requests per min (RPM)" if unit == "requests" else "tokens per min (TPM)"
        if wait == float("inf"):
            message = (
                f"Request too large for {model} in organization org-mock on {per}:"
                f" Limit {int(bucket.limit)}, Requested {cost}. The input or output tokens"
                " must be reduced in order to run successfully."
            )
        else:
            message = (
                f"Rate limit reached for {model} in organization org-mock on {per}:"
                f" Limit {int(bucket.limit)}, Used {bucket.used()}, Requested {cost}."
                f" Please try again in {go_duration(wait)}."
            )
        return openai_error(
            message + " Visit https://platform.openai.com/account/rate-limits to learn more.",
            unit,
            "rate_limit_exceeded",
        )

    def fault_429(self, wait_s: float) -> bytes:
        return openai_error(
            f"Rate limit reached for requests. Please try again in {go_duration(wait_s)}.",
            "requests",
            "rate_limit_exceeded",
        )

    def status_error(self, status: int) -> tuple[int, bytes]:
        if status == 529:
            status = 503  # 529 is Anthropic's; an OpenAI-shaped client sees an overload 503
        message, type_ = OPENAI_STATUS_ERRORS[status]
        return status, openai_error(message, type_, None)

    def stream_error(self) -> bytes:
        message, type_ = OPENAI_STATUS_ERRORS[500]
        return b"data: " + openai_error(message, type_, None)

    def _usage(self, reply: Reply) -> dict[str, Any]:
        write = reply.write_5m if self._core.config.report_cache_write else None
        return openai_usage(reply.prompt_tokens, reply.cached, reply.n_out, write)

    def body(self, reply: Reply, model: str, ident: str) -> bytes:
        doc = {
            "id": "chatcmpl-" + ident,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": self._core._text(reply.n_out),
                        "refusal": None,
                        "annotations": [],
                    },
                    "logprobs": None,
                    "finish_reason": "stop" if reply.finish_early else "length",
                }
            ],
            "usage": self._usage(reply),
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
        }
        return orjson.dumps(doc)

    def frames(self, reply: Reply, model: str, ident: str, words: str) -> list[bytes]:
        options = reply.include_usage
        created = int(time.time())
        envelope: dict[str, Any] = {
            "id": "chatcmpl-" + ident,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": None}],
        }
        if options:
            envelope["usage"] = None
        choice = envelope["choices"][0]
        choice["delta"] = {"role": "assistant", "content": "", "refusal": None}
        head = b"data: " + orjson.dumps(envelope) + b"\n\n"
        # Every content chunk is the same envelope around a 4-byte word that needs no
        # escaping: render it once and splice, instead of serialising each chunk.
        choice["delta"] = {"content": "\x01"}
        parts = orjson.dumps(envelope).split(b"\\u0001")
        if len(parts) == 2:
            pre, post = b"data: " + parts[0], parts[1] + b"\n\n"
            frames = [pre + words[i : i + 4].encode() + post for i in range(0, len(words), 4)]
        else:  # the model name itself holds the marker
            frames = []
            for i in range(0, len(words), 4):
                choice["delta"] = {"content": words[i : i + 4]}
                frames.append(b"data: " + orjson.dumps(envelope) + b"\n\n")
        frames[0] = head + frames[0]
        choice["delta"] = {}
        choice["finish_reason"] = "stop" if reply.finish_early else "length"
        tail = [b"data: ", orjson.dumps(envelope), b"\n\n"]
        if options:
            del envelope["choices"]
            envelope["choices"] = []
            envelope["usage"] = self._usage(reply)
            tail += [b"data: ", orjson.dumps(envelope), b"\n\n"]
        tail.append(b"data: [DONE]\n\n")
        frames.append(b"".join(tail))
        return frames

    def models_doc(self, models: tuple[str, ...]) -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {"id": m, "object": "model", "created": 1735689600, "owned_by": "runner-mock"}
                for m in models
            ],
        }


def _event(name: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(doc) + b"\n\n"


class AnthropicWire:
    """Anthropic Messages (``POST /v1/messages``), JSON or SSE."""

    __slots__ = ("_core",)
    id_header = "request-id"
    separate_output = True

    def __init__(self, core: MockServer) -> None:
        self._core = core

    def api_key(self, request: BaseRequest) -> str | None:
        return request.headers.get("x-api-key")

    def auth_error(self, key: str | None) -> bytes:
        return anthropic_error("authentication_error", "invalid x-api-key")

    def bad_request(self, message: str) -> bytes:
        return anthropic_error("invalid_request_error", message)

    def plan(self, data: dict[str, Any], model: str, stream: bool) -> tuple[Reply, bytes]:
        max_tokens = data.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 0:
            raise BadRequest("max_tokens: Field required")
        if max_tokens == 0 and stream:
            raise BadRequest("max_tokens: 0 is not supported with streaming")
        text, marks = anthropic_text(data)
        reply = Reply(count_tokens(len(text)), max_tokens)
        core = self._core
        if max_tokens:
            reply.n_out, reply.finish_early = core._outputs(max_tokens)
        cfg = core.config
        if cfg.cache and marks:
            bounds = anthropic_boundaries(model, text, marks, cfg.cache_min_prefix_tokens)
            if bounds:
                hits = core._caches[0].lookup(bounds, core._clock())
                reply.cached = bounds[hits - 1][1] if hits else 0
                reply.pending = bounds[hits:]
                for _, _, cost, ttl_s in reply.pending:
                    if ttl_s > 300.0:
                        reply.write_1h += cost
                    else:
                        reply.write_5m += cost
                reply.input_tokens = reply.prompt_tokens - bounds[-1][1]
        return reply, text

    def quota_error(self) -> tuple[int, bytes]:
        return 400, anthropic_error(
            "invalid_request_error",
            "Your credit balance is too low to access the Anthropic API."
            " Please go to Plans & Billing to upgrade or purchase credits.",
        )

    def input_cost(self, reply: Reply) -> int:
        # The input bucket ignores cache reads; output has its own bucket.
        return reply.prompt_tokens - reply.cached

    def rate_headers(
        self, headers: dict[str, str], rpm: Bucket | None, tpm: Bucket | None, otpm: Bucket | None
    ) -> None:
        wall = time.time()
        named = (("requests", rpm), ("tokens", tpm), ("input-tokens", tpm), ("output-tokens", otpm))
        for name, b in named:
            if b is not None:
                p = "anthropic-ratelimit-" + name
                headers[p + "-limit"] = str(int(b.limit))
                headers[p + "-remaining"] = str(b.remaining())
                headers[p + "-reset"] = rfc3339_after(b.reset_s(), wall)

    def retry_headers(self, wait_s: float, headers: dict[str, str]) -> None:
        _retry_after(wait_s, headers)

    def rate_limit_error(
        self, model: str, unit: str, bucket: Bucket, wait: float, cost: int
    ) -> bytes:
        unit = "input tokens" if unit == "tokens" else unit
        return anthropic_error(
            "rate_limit_error",
            f"This request would exceed the rate limit for your organization of"
            f" {int(bucket.limit)} {unit} per minute. For details, refer to:"
            " https://docs.anthropic.com/en/api/rate-limits. You can see the response"
            " headers for current usage. Please reduce the prompt length or the maximum"
            " tokens requested, or try again later.",
        )

    def fault_429(self, wait_s: float) -> bytes:
        return anthropic_error(
            "rate_limit_error", "Number of requests has exceeded your rate limit."
        )

    def status_error(self, status: int) -> tuple[int, bytes]:
        message, type_ = ANTHROPIC_STATUS_ERRORS[status]
        return status, anthropic_error(type_, message)

    def stream_error(self) -> bytes:
        return b"event: error\ndata: " + anthropic_error("overloaded_error", "Overloaded")

    def _usage(self, reply: Reply, output: int) -> dict[str, Any]:
        return anthropic_usage(
            reply.input_tokens, reply.cached, reply.write_5m, reply.write_1h, output
        )

    def body(self, reply: Reply, model: str, ident: str) -> bytes:
        content = [{"type": "text", "text": self._core._text(reply.n_out)}] if reply.n_out else []
        doc = {
            "id": "msg_" + ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": "end_turn" if reply.finish_early else "max_tokens",
            "stop_sequence": None,
            "usage": self._usage(reply, reply.n_out),
        }
        return orjson.dumps(doc)

    def frames(self, reply: Reply, model: str, ident: str, words: str) -> list[bytes]:
        message: dict[str, Any] = {
            "id": "msg_" + ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": self._usage(reply, 1),
        }
        head = b"".join(
            (
                _event("message_start", {"type": "message_start", "message": message}),
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                ),
                _event("ping", {"type": "ping"}),
            )
        )
        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta"}}
        frames = []
        for i in range(0, len(words), 4):
            delta["delta"] = {"type": "text_delta", "text": words[i : i + 4]}
            frames.append(_event("content_block_delta", delta))
        frames[0] = head + frames[0]
        usage = self._usage(reply, reply.n_out)
        del usage["cache_creation"], usage["service_tier"]
        tail = b"".join(
            (
                _event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                _event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {
                            "stop_reason": "end_turn" if reply.finish_early else "max_tokens",
                            "stop_sequence": None,
                        },
                        "usage": usage,
                    },
                ),
                _event("message_stop", {"type": "message_stop"}),
            )
        )
        frames.append(tail)
        return frames

    def models_doc(self, models: tuple[str, ...]) -> dict[str, Any]:
        data = [
            {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
            for m in models
        ]
        return {"data": data, "has_more": False, "first_id": models[0], "last_id": models[-1]}
