"""The mock's deterministic tokenizer and the canonical prompt text it counts.

A prompt is flattened into one canonical UTF-8 byte string and every 4 bytes (rounded up) are
one token, so a client's ``chars / 4`` estimate lands close for ASCII text. Cache blocks are byte
slices of ``4 * block_tokens`` bytes, which keeps block hashing a handful of C calls.

Canonical text:

* OpenAI: for each message in order, ``role`` + ``"\\n"`` + its text + ``"\\n"`` (content parts
  contribute their ``text``; other parts their JSON); a ``tools`` array comes first as JSON.
* Anthropic: tools (JSON, one per line), then the system prompt, then each message, in that order
  (the provider's prefix order); the offsets where a ``cache_control`` breakpoint ends are kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

__all__ = ["BYTES_PER_TOKEN", "anthropic_text", "count_tokens", "openai_text"]

BYTES_PER_TOKEN = 4


def count_tokens(nbytes: int) -> int:
    """Tokens in ``nbytes`` bytes of canonical text."""
    return (nbytes + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _part_bytes(part: Any) -> bytes:
    if isinstance(part, dict):
        text = part.get("text")
        if isinstance(text, str):
            return text.encode()
    return orjson.dumps(part)


def _content_bytes(content: Any) -> bytes:
    if isinstance(content, str):
        return content.encode()
    if isinstance(content, list):
        return b"".join(_part_bytes(p) for p in content)
    if content is None:
        return b""
    return orjson.dumps(content)


def openai_text(messages: Iterable[Any], tools: Any = None) -> bytes:
    """Canonical bytes of an OpenAI chat prompt."""
    out: list[bytes] = []
    if tools:
        out.append(orjson.dumps(tools))
        out.append(b"\n")
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        out.append(str(m.get("role", "")).encode())
        out.append(b"\n")
        out.append(_content_bytes(m.get("content")))
        out.append(b"\n")
    return b"".join(out)


def _blocks(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if value is None:
        return []
    return [value]


def anthropic_text(body: dict[str, Any]) -> tuple[bytes, list[tuple[int, str]]]:
    """Canonical bytes of an Anthropic prompt and its cache breakpoints.

    :returns: the bytes, and ``(end_offset, ttl)`` for each block carrying ``cache_control``
        (a top-level ``cache_control`` marks the last block), in prefix order.
    """
    out = bytearray()
    marks: list[tuple[int, str]] = []
    last_end = 0

    def mark(block: Any) -> None:
        if isinstance(block, dict):
            cc = block.get("cache_control")
            if isinstance(cc, dict):
                marks.append((len(out), str(cc.get("ttl", "5m"))))

    for tool in _blocks(body.get("tools")):
        out += orjson.dumps(tool)
        out += b"\n"
        mark(tool)
    system = body.get("system")
    if isinstance(system, str):
        out += system.encode()
        out += b"\n"
    else:
        for block in _blocks(system):
            out += _part_bytes(block)
            out += b"\n"
            mark(block)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("messages: field required")
    for m in messages:
        if not isinstance(m, dict):
            raise ValueError("each message must be an object")
        out += str(m.get("role", "")).encode()
        out += b"\n"
        content = m.get("content")
        if isinstance(content, list):
            for block in content:
                out += _part_bytes(block)
                mark(block)
        else:
            out += _content_bytes(content)
        out += b"\n"
        last_end = len(out)
    top = body.get("cache_control")
    if isinstance(top, dict) and last_end:
        # Top-level cache_control is automatic caching: a breakpoint on the last block.
        marks.append((last_end, str(top.get("ttl", "5m"))))
    marks.sort()
    return bytes(out), marks
