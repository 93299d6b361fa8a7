"""What may travel from the wire into an output: bounded, single-line, key-free.

Three rules for every response body and header value that ends up in a result line, a latency
record or a message:

* **Bounded**: a body is read up to ``max_response_bytes`` and the attempt fails past it, so an
  endless or enormous answer cannot exhaust memory (:func:`read_capped`).
* **One line**: the results file is JSONL, so a body with a raw newline or carriage return
  (Go's ``json.Encoder`` and Flask's ``jsonify`` end theirs with one; pretty-printed or CRLF
  bodies hold several) is re-encoded compactly; compact bodies keep the zero-copy path
  (:meth:`KeyGuard.clean`).
* **Key-free**: the API key is searched for as sent and in its JSON-escaped forms (``\\/``,
  ``\\uXXXX``), and removed from every string of a body that carries it (:class:`KeyGuard`).

The common case costs a handful of ``bytes in bytes`` scans (memchr/memmem speed): the key, a
backslash escape that could hide it, and a raw line break.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from .._aiohttp import aiohttp
from ..config import DEFAULT_MAX_RESPONSE_BYTES

__all__ = ["DEFAULT_MAX_RESPONSE_BYTES", "BodyTooLarge", "KeyGuard", "read_capped"]

_REDACTED: Final = "[redacted]"


class BodyTooLarge(Exception):
    """A response body went past the configured cap; the attempt fails with this message."""


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it is known to exceed ``cap`` bytes.

    A declared ``Content-Length`` within the cap takes aiohttp's own single read (the fast path);
    a larger one fails before anything is read; an unknown length is read in chunks and
    abandoned at the cap, so memory stays bounded whatever the server sends.
    """
    declared = resp.content_length
    if declared is not None:
        if declared > cap:
            raise BodyTooLarge(too_large(cap, declared))
        return await resp.read()
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(too_large(cap))
        parts.append(chunk)
    return b"".join(parts)


def too_large(cap: int, declared: int | None = None) -> str:
    size = f" ({declared:,} bytes declared)" if declared is not None else ""
    return (
        f"response body over the limit of {cap:,} bytes{size}; not read further "
        "(raise max_response_bytes if such answers are expected)"
    )


def _scrub_json(value: Any, key: str) -> Any:
    """A copy of parsed JSON with the key removed from every string (object keys included)."""
    if isinstance(value, str):
        return value.replace(key, _REDACTED)
    if isinstance(value, dict):
        return {_scrub_json(k, key): _scrub_json(v, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, key) for v in value]
    return value


class KeyGuard:
    """Finds and removes one API key in response bodies and header values.

    ``key`` is ``None`` for no key or a placeholder too short to hunt for (``EMPTY``): then
    only the one-line rule applies.
    """

    __slots__ = ("_key", "_key_bytes", "_slash")

    def __init__(self, key: str | None) -> None:
        self._key = key
        self._key_bytes = key.encode() if key else None
        self._slash = key is not None and "/" in key  # only then can \/ hide it

    def text(self, value: str | None) -> str | None:
        """A header value (``x-request-id``) or message with the key redacted."""
        key = self._key
        if value is None or key is None or key not in value:
            return value
        return value.replace(key, _REDACTED)

    def leaks(self, raw: bytes, body: Any) -> bool:
        """Whether ``raw`` (which parsed to ``body``) carries the key in any JSON spelling."""
        kb = self._key_bytes
        if kb is None:
            return False
        if kb in raw:
            return True
        # An escape (\/ or \uXXXX) inside the key hides it from the byte search; orjson's
        # output has neither, so re-encoding gives the one canonical spelling to search.
        if b"\\u" in raw or (self._slash and b"\\/" in raw):
            return kb in orjson.dumps(body)
        return False

    def clean(self, raw: bytes, body: Any) -> tuple[bytes, Any]:
        """``(raw, body)`` safe for a result line: key removed, one line.

        Returns the very same objects when nothing needs changing (the zero-copy path).
        """
        if self.leaks(raw, body):
            assert self._key is not None
            body = _scrub_json(body, self._key)
            return orjson.dumps(body), body
        if b"\n" in raw or b"\r" in raw:
            return orjson.dumps(body), body
        return raw, body

    def scrub_body(self, body: Any) -> tuple[Any, bytes | None]:
        """A parsed body (an assembled stream) without the key, and its JSON when the check
        had to encode it (pass it on as ``Attempt.raw``: the result line then reuses it
        instead of encoding the body a second time); None when there is no key to look for.
        """
        kb = self._key_bytes
        if kb is None:
            return body, None
        data = orjson.dumps(body)
        if kb not in data:
            return body, data
        assert self._key is not None
        body = _scrub_json(body, self._key)
        return body, orjson.dumps(body)
