"""What may travel from the wire into an output: bounded, single-line, key-free.

Three rules for every response body and header value that ends up in a result line, a latency
record or a message:

* **Bounded**: a body is read up to ``max_response_bytes`` and the attempt fails past it, so an
  endless or enormous answer cannot exhaust memory (:func:`read_capped`).
* **One line**: the results file is JSONL, so a body with a raw newline or carriage return
  (Go's ``json.Encoder`` and Flask's ``jsonify`` end theirs with one; pretty-printed or CRLF
  bodies hold several) is re-encoded compactly; compact bodies keep the zero-copy path
  (:meth:`KeyGuard.clean`).
* **Key-free**: the API key is searched for as sent, base64-encoded (standard and URL-safe, at
  each alignment, so ``base64("Bearer " + key)`` is found too), hex- and URL-encoded
  (:func:`key_forms`), each also in its JSON-escaped forms (``\\/``, ``\\uXXXX``), and removed
  from every string of a body that carries it (:class:`KeyGuard`).

The common case costs a handful of ``bytes in bytes`` scans (memchr/memmem speed): the key, a
backslash escape that could hide it, and a raw line break.
"""

from __future__ import annotations

import base64
import re
from functools import lru_cache
from typing import Any, Final
from urllib.parse import quote

import orjson

from .._aiohttp import aiohttp
from ..config import DEFAULT_MAX_RESPONSE_BYTES

__all__ = [
    "CUT",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "REDACTED",
    "BodyTooLarge",
    "KeyGuard",
    "key_forms",
    "read_capped",
]

_REDACTED: Final = "[redacted]"
#: what stands where the key was (a name that carried it no longer names its resource)
REDACTED: Final = _REDACTED


class BodyTooLarge(Exception):
    """A response body went past the configured cap; the attempt fails with this message."""


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The whole body, or :class:`BodyTooLarge` as soon as it is known to exceed ``cap`` bytes.

    A declared ``Content-Length`` within the cap takes aiohttp's own single read (the fast path);
    a larger one fails before anything is read; an unknown length, or a compressed body (whose
    declared length is not its decoded size), is read in chunks and abandoned at the cap, so
    memory stays bounded whatever the server sends.
    """
    declared = resp.content_length
    # A declared length counts the bytes on the wire: with a Content-Encoding it is the
    # compressed size, and a 200 KB gzip inflates to 200 MB (read whole, over the cap).
    if declared is not None and "Content-Encoding" not in resp.headers:
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


_URLSAFE: Final = str.maketrans("+/", "-_")


@lru_cache(maxsize=16)  # scrub() asks for the same key's forms on every error message
def key_forms(key: str) -> tuple[str, ...]:
    """The spellings of ``key`` to hunt for: as sent, its base64 (standard and URL-safe) at each
    of the three byte alignments it can take inside a longer encoded text (only the characters
    made of the key's own bits: the ones at either end also carry the neighbours'), hex and
    URL-encoded."""
    raw = key.encode()
    forms = [key]
    for r in range(3):
        enc = base64.b64encode(b"\0" * r + raw).decode()
        core = enc[-(-8 * r // 6) : 8 * (r + len(raw)) // 6]
        forms += [core, core.translate(_URLSAFE)]
    forms += [raw.hex(), raw.hex().upper()]
    # URL-encoded (a proxy echoing the request's URL or a form field): a key with a "/", "+"
    # or "=" (base64-like gateway keys) changes spelling, in upper- or lower-case escapes.
    quoted = quote(key, safe="")
    forms += [quoted, re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quoted)]
    return tuple(dict.fromkeys(f for f in forms if len(f) >= min(8, len(key))))


#: the mark of a message cut to its length limit (``_http._short``, a text body's first 4 KiB)
CUT: Final = "..."
#: the shortest start of a key worth removing where a cut ended the text: fewer characters
#: tell nothing (``AIza``, ``sk-p`` start every key of their kind)
_MIN_FRAGMENT: Final = 4


#: ``\\/`` or a ``\\u`` escape of a printable ASCII character
_ASCII_ESCAPE: Final = r"\\/|\\u00([2-7][0-9a-fA-F])"


def _unescape(m: re.Match[str]) -> str:
    code = m.group(1)
    if code is None:
        return "/"
    return m.group() if code.lower() == "7f" else chr(int(code, 16))


def redact(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with every form of the key replaced.

    A text cut short (ending in :data:`CUT`) may end in the first characters of a key the cut
    went through, which no search for the whole key finds: that start is removed too.
    """
    if "\\" in text:
        # JSON's escapes (``\\/``, ``\\u0073``) in a text that is not parsed JSON (an HTML
        # page, JSON broken by a NaN or a cut) hide the key from the search: read them as the
        # characters they stand for, where that reveals a key (a key is printable ASCII).
        plain = re.sub(_ASCII_ESCAPE, _unescape, text)
        if any(f in plain for f in forms):
            text = plain
    for f in forms:
        if f in text:
            text = text.replace(f, _REDACTED)
    if text.endswith(CUT):
        head = text[: -len(CUT)]
        for f in forms:
            for k in range(len(f) - 1, _MIN_FRAGMENT - 1, -1):
                if head.endswith(f[:k]):
                    return head[:-k] + _REDACTED + CUT
    return text


def _scrub_json(value: Any, forms: tuple[str, ...]) -> Any:
    """A copy of parsed JSON with the key removed from every string (object keys included)."""
    if isinstance(value, str):
        return redact(value, forms)
    if isinstance(value, dict):
        return {_scrub_json(k, forms): _scrub_json(v, forms) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v, forms) for v in value]
    return value


class KeyGuard:
    """Finds and removes one API key in response bodies and header values.

    ``key`` is ``None`` for no key or a placeholder too short to hunt for (``EMPTY``): then
    only the one-line rule applies.
    """

    __slots__ = ("_forms", "_forms_bytes", "_slash")

    def __init__(self, key: str | None) -> None:
        self._forms = key_forms(key) if key else ()
        self._forms_bytes = tuple(f.encode() for f in self._forms)
        self._slash = any("/" in f for f in self._forms)  # only then can \/ hide one

    def text(self, value: str | None) -> str | None:
        """A header value (``x-request-id``) or message with the key redacted."""
        if value is None or not self._forms:
            return value
        return redact(value, self._forms)

    def _found(self, data: bytes) -> bool:
        # find, not ``in``: see _http.read_sse
        find = data.find
        for f in self._forms_bytes:
            if find(f) >= 0:
                return True
        return False

    def leaks(self, raw: bytes, body: Any) -> bool:
        """Whether ``raw`` (which parsed to ``body``) carries the key in any JSON spelling."""
        if not self._forms_bytes:
            return False
        if self._found(raw):
            return True
        # An escape (\/ or \uXXXX) inside the key hides it from the byte search; orjson's
        # output has neither, so re-encoding gives the one canonical spelling to search.
        if raw.find(b"\\u") >= 0 or (self._slash and raw.find(b"\\/") >= 0):
            return self._found(orjson.dumps(body))
        return False

    def clean(self, raw: bytes, body: Any) -> tuple[bytes, Any]:
        """``(raw, body)`` safe for a result line: key removed, one line.

        Returns the very same objects when nothing needs changing (the zero-copy path).
        """
        if self.leaks(raw, body):
            body = _scrub_json(body, self._forms)
            return orjson.dumps(body), body
        if raw.find(b"\n") >= 0 or raw.find(b"\r") >= 0:
            return orjson.dumps(body), body
        return raw, body

    def scrub_body(self, body: Any) -> tuple[Any, bytes | None]:
        """A parsed body (an assembled stream) without the key, and its JSON when the check
        had to encode it (pass it on as ``Attempt.raw``: the result line then reuses it
        instead of encoding the body a second time); None when there is no key to look for.
        """
        if not self._forms_bytes:
            return body, None
        data = orjson.dumps(body)
        if not self._found(data):
            return body, data
        body = _scrub_json(body, self._forms)
        return body, orjson.dumps(body)
