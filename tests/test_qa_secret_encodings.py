"""Found by QA: a server that echoes the credential base64- or hex-encoded (a debugging echo of
the ``Authorization`` header, an error saying ``b64=...``) got it into the results and into
error messages on stderr: only the key as sent and its JSON escapes were searched. The key is
now also searched as base64 (standard and URL-safe, at each of the three alignments a key can
take inside a longer encoded text, so ``base64("Bearer " + key)`` is caught) and as hex."""

from __future__ import annotations

import base64
import binascii

import orjson
import pytest

from runner.providers._http import scrub
from runner.providers._wire import KeyGuard

KEY = "sk-proj-QAenc0dingSECRET+/key1234567890"


def encodings(key: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for prefix in ("", "Bearer ", "x:"):  # the three alignments of the key in the encoding
        raw = (prefix + key).encode()
        out[f"b64 {prefix!r}"] = base64.b64encode(raw).decode()
        out[f"urlsafe {prefix!r}"] = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    out["hex"] = binascii.hexlify(KEY.encode()).decode()
    out["HEX"] = out["hex"].upper()
    return out


def _core(encoded: str) -> str:
    """What must not survive: the encoding less two characters at each end (those also carry
    bits of the text around the key)."""
    return encoded[-len(encoded) + 12 : -3]


@pytest.mark.parametrize(("name", "encoded"), sorted(encodings(KEY).items()))
def test_an_encoded_key_in_a_body_is_removed(name: str, encoded: str) -> None:
    guard = KeyGuard(KEY)
    body = {"choices": [{"message": {"content": f"echo: {encoded}!"}}], "id": "x"}
    raw = orjson.dumps(body)
    assert guard.leaks(raw, body), name
    clean_raw, clean = guard.clean(raw, body)
    assert _core(encoded).encode() not in clean_raw, name
    assert b"[redacted]" in clean_raw
    assert clean == orjson.loads(clean_raw)
    escaped = raw.replace(b"/", b"\\/")  # JSON may escape the slashes base64 holds
    assert guard.leaks(escaped, orjson.loads(escaped)), name


@pytest.mark.parametrize(("name", "encoded"), sorted(encodings(KEY).items()))
def test_an_encoded_key_in_a_message_or_header_is_removed(name: str, encoded: str) -> None:
    text = f"HTTP 401: Incorrect API key provided: b64={encoded} (request {encoded})"
    assert _core(encoded) not in scrub(text, KEY), name
    assert _core(encoded) not in (KeyGuard(KEY).text(f"req-{encoded}") or ""), name


def test_a_body_without_the_key_keeps_the_zero_copy_path() -> None:
    guard = KeyGuard(KEY)
    body = {"choices": [{"message": {"content": "Zm9vYmFy deadbeef " * 20}}]}
    raw = orjson.dumps(body)
    assert not guard.leaks(raw, body)
    assert guard.clean(raw, body)[0] is raw
