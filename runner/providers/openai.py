"""OpenAI Chat Completions, also spoken by vLLM, SGLang, DeepSeek and the built-in mock.

Usage is normalised across the dialects: OpenAI and vLLM report
``prompt_tokens_details.cached_tokens``; SGLang omits it when zero (so absence means "unknown",
None, never 0); DeepSeek reports ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens``.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..config import RunConfig
from ..models import ErrorInfo, Job, Usage, token_count, usage_of
from ..retry import FIELD_REFUSED
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

__all__ = ["OpenAIBackend", "build_headers", "classify_error", "parse_usage"]


def build_headers(config: RunConfig, api_key: str | None) -> dict[str, str]:
    """Headers for every request: JSON content type, bearer auth, then the config's extras."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    headers.update(config.headers)
    return headers


_int = token_count  # an int, integral float or digit string; a negative count is none


def parse_usage(usage: Any) -> Usage | None:
    """Normalise an OpenAI-dialect ``usage`` object; None when the response has none."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    cached: int | None = None
    write = 0
    details = usage.get("prompt_tokens_details")
    if isinstance(details, dict):
        cached = _int(details.get("cached_tokens"))
        write = _int(details.get("cache_write_tokens")) or 0
    hit = _int(usage.get("prompt_cache_hit_tokens"))
    if hit is not None:  # DeepSeek
        cached = hit
        if prompt is None:
            prompt = hit + (_int(usage.get("prompt_cache_miss_tokens")) or 0)
    return usage_of(prompt or 0, cached, write, _int(usage.get("completion_tokens")) or 0)


def _classify(status: int, body: Any, headers: Headers) -> ErrorInfo:
    etype, code, message = error_fields(body)
    if status == 429:
        # An exhausted quota also arrives as 429 but no amount of waiting fixes it.
        if etype == "insufficient_quota" or code == "insufficient_quota":
            return ErrorInfo(
                "insufficient_quota", http_message(status, message), retriable=False, fatal=True
            )
        delay = retry_delay(headers, kind=limit_kind(etype, message), message=message)
        return ErrorInfo("rate_limited", http_message(status, message), True, delay)
    if status == 529:  # gateways in front of OpenAI-compatible servers borrow Anthropic's code
        return ErrorInfo("overloaded", http_message(status, message), True)
    return status_error(status, message, headers)


def classify_error(status: int, body: Any, headers: Headers) -> ErrorInfo:
    """Classify a non-2xx response. ``body`` is the parsed JSON, or the text if not JSON.

    ``x-should-retry: true|false`` overrides the retry decision of non-fatal errors.
    """
    return apply_should_retry(_classify(status, body, headers), headers)


class _Choice:
    """One choice being assembled from stream deltas."""

    __slots__ = ("content", "finish_reason", "logprobs", "reasoning", "refusal", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.refusal: list[str] = []
        self.logprobs: dict[str, list[Any]] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None

    def add_tool_calls(self, deltas: list[Any]) -> None:
        for d in deltas:
            if not isinstance(d, dict):
                continue
            index = d.get("index", 0)
            if not isinstance(index, int):
                index = 0
            call = self.tool_calls.get(index)
            fn = d.get("function")
            if not isinstance(fn, dict):
                fn = {}
            if call is None:
                call = {"id": d.get("id"), "type": d.get("type", "function")}
                name = fn.get("name")
                call["function"] = {"name": name if isinstance(name, str) else "", "arguments": ""}
                self.tool_calls[index] = call
            elif d.get("id"):
                call["id"] = d["id"]
            args = fn.get("arguments")
            if args:
                # Some servers send the arguments as a JSON object, not a string: keep them.
                call["function"]["arguments"] += (
                    args if isinstance(args, str) else orjson.dumps(args).decode()
                )

    def add_logprobs(self, logprobs: dict[str, Any]) -> None:
        """Each chunk's ``logprobs.content`` / ``.refusal`` lists, concatenated."""
        merged = self.logprobs
        if merged is None:
            merged = self.logprobs = {}
        for field in ("content", "refusal"):
            items = logprobs.get(field)
            if isinstance(items, list):
                merged.setdefault(field, []).extend(items)

    def message(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.refusal:
            msg["refusal"] = "".join(self.refusal)
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            msg["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        return msg


class OpenAIStream(StreamParser):
    """Assembles ``chat.completion.chunk`` events into a ``chat.completion`` body."""

    __slots__ = ("_choices", "_meta", "_usage")

    unfinished = "stream ended before [DONE] or a finish_reason on every choice"

    def __init__(self, t0: float) -> None:
        super().__init__(t0)
        self._meta: dict[str, Any] | None = None
        self._choices: dict[int, _Choice] = {}
        self._usage: Any = None

    def finished(self) -> bool:
        """``[DONE]``, or a body that ended cleanly after every choice had its finish_reason
        (some servers and proxies never send ``[DONE]``; a cut connection is an error before
        this is asked)."""
        if self.done:
            return True
        choices = self._choices.values()
        return bool(choices) and all(c.finish_reason for c in choices)

    def feed(self, line: bytes, now: float) -> bool:
        data = sse_data(line)
        if data is None:
            return False
        if data == b"[DONE]":
            self.done = True
            return False
        chunk = self.event(data)
        if chunk is HELD:
            return False
        if not isinstance(chunk, dict):
            self.error = ErrorInfo("bad_response", "invalid JSON in a stream event", True)
            return True
        if chunk.get("error") is not None:
            self.error = stream_error(chunk["error"])
            return True
        choices = chunk.get("choices")
        meta = self._meta
        # The id, model and created of the first chunk with choices: Azure's first chunk
        # carries only prompt_filter_results, with an empty id and model.
        if meta is None or (choices and not meta.get("choices")):
            self._meta = chunk
        if choices and self._add_choices(choices):
            self._content_at(now)
        usage = chunk.get("usage")
        if usage:
            self._usage = usage
        return False

    def _add_choices(self, choices: Any) -> bool:
        """Merge deltas; True when any carried generated content (not just a role).

        Anything of the wrong type (a null choice, a string delta) is skipped: a server's
        malformed chunk must not stop the run.
        """
        carried = False
        if not isinstance(choices, list):
            return False
        for ch in choices:
            if not isinstance(ch, dict):
                continue
            index = ch.get("index", 0)
            if not isinstance(index, int):
                index = 0
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _Choice()
            delta = ch.get("delta")
            if delta and isinstance(delta, dict):
                text = delta.get("content")
                if text and isinstance(text, str):
                    state.content.append(text)
                    carried = True
                elif text and isinstance(text, list) and _add_parts(state, text):
                    carried = True
                thought = delta.get("reasoning_content") or delta.get("reasoning")
                if thought and isinstance(thought, str):
                    state.reasoning.append(thought)
                    carried = True
                refusal = delta.get("refusal")
                if refusal and isinstance(refusal, str):
                    state.refusal.append(refusal)
                    carried = True
                calls = delta.get("tool_calls")
                if calls and isinstance(calls, list):
                    state.add_tool_calls(calls)
                    carried = True
            logprobs = ch.get("logprobs")
            if logprobs and isinstance(logprobs, dict):
                state.add_logprobs(logprobs)
            finish = ch.get("finish_reason")
            if finish and isinstance(finish, str):
                state.finish_reason = finish
        return carried

    def result(self) -> tuple[dict[str, Any], Usage | None]:
        meta = self._meta or {}
        body: dict[str, Any] = {
            "id": meta.get("id"),
            "object": "chat.completion",
            "created": meta.get("created"),
            "model": meta.get("model"),
            "choices": [_choice(i, c) for i, c in sorted(self._choices.items())],
            "usage": self._usage,
        }
        if meta.get("system_fingerprint") is not None:
            body["system_fingerprint"] = meta["system_fingerprint"]
        return body, parse_usage(self._usage)


def _choice(index: int, c: _Choice) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": index, "message": c.message()}
    if c.logprobs is not None:
        choice["logprobs"] = c.logprobs
    choice["finish_reason"] = c.finish_reason
    return choice


def _texts(value: Any) -> list[str]:
    """The text of a string or of a list of ``{"text": ...}`` parts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [p["text"] for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
    return []


def _add_parts(state: _Choice, parts: list[Any]) -> bool:
    """A delta whose content is a list of parts (Mistral's reasoning models stream
    ``[{"type": "thinking", "thinking": [...]}]`` then ``[{"type": "text", "text": ...}]``):
    text parts join the content, thinking parts the reasoning. True when any carried text."""
    carried = False
    for p in parts:
        if not isinstance(p, dict):
            continue
        if p.get("type") == "thinking":
            thought = "".join(_texts(p.get("thinking")))
            if thought:
                state.reasoning.append(thought)
                carried = True
        elif isinstance(p.get("text"), str) and p["text"]:
            state.content.append(p["text"])
            carried = True
    return carried


#: Fields runner adds to a request on its own, dropped for the run when a server refuses them
#: (a job's own ``params`` may set them too: dropped all the same, the server refuses them).
_OWN_FIELDS = ("prompt_cache_key", "stream_options")


def _without_echo(said: bytes) -> bytes:
    """An error body without the copies of the request it holds (objects with ``messages``)."""
    try:
        body = orjson.loads(said)
    except orjson.JSONDecodeError:
        return said

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            if "messages" in node:
                return None
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return orjson.dumps(strip(body))


class OpenAIBackend(HTTPBackend):
    """``POST {base_url}/chat/completions``."""

    __slots__ = ("_refused", "_retention")

    path = "/chat/completions"

    parse_usage = staticmethod(parse_usage)
    classify = staticmethod(classify_error)
    stream_class = OpenAIStream

    def configure(self, config: RunConfig) -> None:
        self._retention = config.prompt_cache_retention
        self._refused: set[str] = set()  # fields of ours the server refused: never sent again

    def refused(self, error: ErrorInfo, said: bytes, sent: dict[str, Any]) -> ErrorInfo:
        """A server that refuses a field runner adds on its own (strict OpenAI-compatible APIs
        answer 400/422 "extra inputs are not permitted" to ``prompt_cache_key``; older Azure API
        versions refuse ``stream_options``) is never sent it again, and the attempt becomes a
        :data:`~runner.retry.FIELD_REFUSED` error that the sender re-sends at once, through the
        limiter like any attempt: a hint must not fail every job. Only a request that carried
        the field is marked so; later ones leave it out, so none is re-sent twice for it.
        A copy of the request inside the error (FastAPI's 422 echoes the whole body as the
        ``input`` of a model-level check) names every field sent: it refuses none of them."""
        fields = [f for f in _OWN_FIELDS if f in sent and f.encode() in said]
        if fields and b'"messages"' in said:
            said = _without_echo(said)
            fields = [f for f in fields if f.encode() in said]
        if not fields:
            return error
        self._refused.update(fields)
        what = " and ".join(fields)
        return ErrorInfo(
            FIELD_REFUSED, f"{error.message} (refused {what}: sent again without it)", True
        )

    def build_body(
        self, job: Job, cache_key: str | None, *, prewarm: bool = False
    ) -> tuple[dict[str, Any], bool]:
        body: dict[str, Any] = {"model": job.model or self._model, "messages": list(job.messages)}
        if self._params:
            body.update(self._params)
        if job.params:
            body.update(job.params)
        if cache_key is not None:
            body["prompt_cache_key"] = cache_key
        if self._retention is not None:
            body["prompt_cache_retention"] = self._retention
        stream = False
        if self._stream or body.get("stream") is True:
            body["stream"] = stream = True
            extra = body.get("stream_options")
            # Without include_usage a stream carries no usage at all (vLLM, OpenAI).
            body["stream_options"] = (
                {**extra, "include_usage": True}
                if isinstance(extra, dict)
                else {"include_usage": True}
            )
        if self._refused:  # refused by the server: never sent again, whoever set them
            for field in self._refused:
                body.pop(field, None)
        return body, stream
