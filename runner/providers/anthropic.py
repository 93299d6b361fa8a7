"""Anthropic Messages (``POST {base_url}/messages``).

Jobs are written in the OpenAI chat shape; this module translates them: system/developer
messages become the top-level ``system`` blocks, ``max_tokens`` is always sent (Anthropic requires
it), OpenAI-only parameters are dropped, and the static prefix gets one ``cache_control``
breakpoint on its last block.

The breakpoint carries ``"ttl": "1h"`` only when the config asks for the hour-long cache: the
5-minute cache is the wire default, so omitting it keeps bodies short and works with servers and
proxies that predate the ``ttl`` field.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..budget import RequestBudget
from ..config import RunConfig
from ..models import ErrorInfo, Job, Message, Usage, token_count
from ._http import (
    HELD,
    Headers,
    HTTPBackend,
    StreamParser,
    apply_should_retry,
    error_fields,
    http_message,
    limit_kind,
    retry_delay,
    sse_data,
    status_error,
    stream_error,
)
from .headers import parse_retry_after

__all__ = [
    "AnthropicBackend",
    "build_headers",
    "classify_error",
    "parse_usage",
]

# Chat Completions parameters with no Messages counterpart; Anthropic rejects unknown fields.
# ``max_tokens``/``stop``/``stream`` are translated separately.
_DROPPED = frozenset(
    {
        "audio",
        "cache_salt",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "top_logprobs",
        "user",
        "verbosity",
        "web_search_options",
    }
)


def build_headers(config: RunConfig, api_key: str | None) -> dict[str, str]:
    """Headers for every request: JSON, ``x-api-key``, ``anthropic-version``, the extras."""
    headers = {"content-type": "application/json", "anthropic-version": config.anthropic_version}
    if api_key:
        headers["x-api-key"] = api_key
    headers.update(config.headers)
    return headers


_int = token_count  # an int, integral float or digit string; a negative count is none


def parse_usage(usage: Any) -> Usage | None:
    """Normalise Anthropic usage: prompt = input + cache read + cache creation.

    ``cached_tokens`` is None when the server does not report cache reads at all.
    """
    if not isinstance(usage, dict):
        return None
    read = _int(usage.get("cache_read_input_tokens"))
    write = _int(usage.get("cache_creation_input_tokens")) or 0
    return Usage(
        prompt_tokens=(_int(usage.get("input_tokens")) or 0) + (read or 0) + write,
        cached_tokens=read,
        cache_write_tokens=write,
        completion_tokens=_int(usage.get("output_tokens")) or 0,
    )


def _classify(status: int, body: Any, headers: Headers) -> ErrorInfo:
    etype, _code, message = error_fields(body)
    if status == 529 or etype == "overloaded_error":
        return ErrorInfo(
            "overloaded", http_message(status, message), True, parse_retry_after(headers)
        )
    # An empty balance arrives as 400 (or 402 billing_error); retrying cannot help.
    if status == 402 or etype == "billing_error" or "credit balance" in message.lower():
        return ErrorInfo(
            "insufficient_quota", http_message(status, message), retriable=False, fatal=True
        )
    if status == 429:
        delay = retry_delay(headers, kind=limit_kind(etype, message), message=message)
        return ErrorInfo("rate_limited", http_message(status, message), True, delay)
    return status_error(status, message, headers)


def classify_error(status: int, body: Any, headers: Headers) -> ErrorInfo:
    """Classify a non-2xx response. ``body`` is the parsed JSON, or the text if not JSON.

    ``x-should-retry: true|false`` overrides the retry decision of non-fatal errors.
    """
    return apply_should_retry(_classify(status, body, headers), headers)


def _text_blocks(content: Any) -> list[Any]:
    """System content as a list of blocks (a fresh list; the blocks are the job's own)."""
    if isinstance(content, str):
        # Anthropic rejects empty text blocks.
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        return list(content)
    return []


def _marked(content: Any, cache_control: dict[str, str]) -> Any:
    """``content`` with ``cache_control`` on its last block; the job's dicts are not touched."""
    if isinstance(content, str):
        return [{"type": "text", "text": content, "cache_control": cache_control}]
    if isinstance(content, list) and content and isinstance(content[-1], dict):
        return [*content[:-1], {**content[-1], "cache_control": cache_control}]
    return content


class AnthropicStream(StreamParser):
    """Assembles Messages stream events into a ``message`` body."""

    __slots__ = ("_blocks", "_citations", "_message", "_parts", "_usage")

    unfinished = "stream ended before message_stop"

    def __init__(self, t0: float) -> None:
        super().__init__(t0)
        self._message: dict[str, Any] = {}
        self._usage: dict[str, Any] = {}
        self._blocks: dict[int, dict[str, Any]] = {}
        self._parts: dict[int, dict[str, list[str]]] = {}
        self._citations: dict[int, list[Any]] = {}

    def feed(self, line: bytes, now: float) -> bool:
        data = sse_data(line)  # the data's own "type" repeats the "event:" line
        if data is None:
            return False
        event = self.event(data)
        if event is HELD:
            return False
        if not isinstance(event, dict):
            self.error = ErrorInfo("bad_response", "invalid JSON in a stream event", True)
            return True
        kind = event.get("type")
        if kind == "content_block_delta":
            self._content_at(now)
            self._delta(event.get("index", 0), event.get("delta") or {})
        elif kind == "content_block_start":
            block = event.get("content_block")
            self._blocks[event.get("index", 0)] = dict(block) if isinstance(block, dict) else {}
        elif kind == "message_start":
            message = event.get("message")
            if isinstance(message, dict):
                self._message = message
                self._merge_usage(message.get("usage"))
        elif kind == "message_delta":
            delta = event.get("delta")
            if isinstance(delta, dict):
                self._message.update(delta)  # stop_reason, stop_sequence
            self._merge_usage(event.get("usage"))
        elif kind == "message_stop":
            self.done = True
        elif kind == "error":
            self.error = stream_error(event.get("error"))
            return True
        return False  # ping, content_block_stop and unknown events carry nothing we keep

    def _merge_usage(self, usage: Any) -> None:
        # message_delta usage is cumulative: later values replace earlier ones.
        if isinstance(usage, dict):
            self._usage.update((k, v) for k, v in usage.items() if v is not None)

    def _delta(self, index: int, delta: dict[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "citations_delta":  # one citation of a text block (search results, documents)
            self._citations.setdefault(index, []).append(delta.get("citation"))
            return
        field, piece = (
            {
                "text_delta": ("text", "text"),
                "thinking_delta": ("thinking", "thinking"),
                "input_json_delta": ("input", "partial_json"),
                "signature_delta": ("signature", "signature"),
            }.get(kind, (None, None))
            if isinstance(kind, str)
            else (None, None)
        )
        if field is None or piece is None:
            return
        text = delta.get(piece)
        if isinstance(text, str):
            self._parts.setdefault(index, {}).setdefault(field, []).append(text)

    def _content(self) -> list[dict[str, Any]]:
        content = []
        for index in sorted(self._blocks):
            block = self._blocks[index]
            for field, pieces in self._parts.get(index, {}).items():
                joined = "".join(pieces)
                if field == "input":
                    try:
                        block["input"] = orjson.loads(joined) if joined else {}
                    except orjson.JSONDecodeError:
                        block["input"] = joined  # keep what arrived rather than lose it
                else:
                    block[field] = block.get(field, "") + joined
            cited = self._citations.get(index)
            if cited:
                before = block.get("citations")
                block["citations"] = [*before, *cited] if isinstance(before, list) else cited
            content.append(block)
        return content

    def result(self) -> tuple[dict[str, Any], Usage | None]:
        body = dict(self._message)
        body["content"] = self._content()
        body["usage"] = self._usage
        return body, parse_usage(self._usage) if self._usage else None


class AnthropicBackend(HTTPBackend):
    """``POST {base_url}/messages``."""

    __slots__ = ("_cache_control", "_max_tokens", "_warm")

    path = "/messages"

    parse_usage = staticmethod(parse_usage)
    classify = staticmethod(classify_error)
    stream_class = AnthropicStream

    def configure(self, config: RunConfig) -> None:
        self._warm = config.cache == "warm"
        self._cache_control: dict[str, str] = {"type": "ephemeral"}
        if config.anthropic_cache_ttl != "5m":
            self._cache_control["ttl"] = config.anthropic_cache_ttl
        # Anthropic requires max_tokens: the run's one budget policy supplies the default.
        self._max_tokens = RequestBudget.for_run(config, self.capabilities).default_completion

    def _convert(self, job: Job, mark: bool) -> tuple[list[Any], list[Message]]:
        """(system blocks, messages); with ``mark``, the prefix's last block gets the breakpoint."""
        last = job.prefix_len - 1 if mark else -1
        cc = self._cache_control
        system: list[Any] = []
        messages: list[Message] = []
        for i, m in enumerate(job.messages):
            role = m.get("role")
            if role == "system" or role == "developer":
                blocks = _text_blocks(m.get("content"))
                if i == last and blocks and isinstance(blocks[-1], dict):
                    blocks[-1] = {**blocks[-1], "cache_control": cc}
                system.extend(blocks)
            else:
                content = m.get("content")
                if i == last:
                    content = _marked(content, cc)
                messages.append({"role": role, "content": content})
        return system, messages

    def build_body(
        self, job: Job, cache_key: str | None, *, prewarm: bool = False
    ) -> tuple[dict[str, Any], bool]:
        mark = job.prefix_len > 0 and (self._warm or cache_key is not None)
        system, messages = self._convert(job, mark)
        body: dict[str, Any] = {
            "model": job.model or self._model,
            "max_tokens": job.max_tokens or self._max_tokens,
        }
        if system:
            body["system"] = system
        body["messages"] = messages
        stream = self._stream
        for params in (self._params, job.params):
            for k, v in params.items():
                if k not in _DROPPED and not (k == "system" and system):
                    body[k] = v
            if "stop" in params:
                stop = params["stop"]
                body["stop_sequences"] = [stop] if isinstance(stop, str) else stop
            if "stream" in params:
                stream = stream or params["stream"] is True
        if prewarm:
            # Writes the cache and bills only the write; not allowed with streaming.
            body["max_tokens"] = 0
            return body, False
        if stream:
            body["stream"] = True
        return body, stream
