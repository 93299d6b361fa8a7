"""The result line: one model that the engines produce and the sinks write and read back.

The on-disk shape is the OpenAI Batch output (docs/FORMATS.md, "Results")::

    {"id": ..., "custom_id": ..., "response": {"status_code", "request_id", "body"} | null,
     "error": {"code", "message"} | null [, "metadata": ...] [, "line": N]}

:class:`ResultLine` builds it (:meth:`ResultLine.to_json`), and :func:`parse_result`,
:func:`result_key`, :func:`line_key` and :func:`rerun_code` read it back for resume,
``--retry-failed``, ``merge`` and ``report``, so the schema lives here only. Building a line is
one slotted object and one dict per job: no validation on the hot path (the engines fill the
fields from typed values).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import orjson

from ._records import MutableRecord

__all__ = [
    "RETRIABLE_ERROR_CODES",
    "ResultLine",
    "line_key",
    "parse_result",
    "rerun_code",
    "result_key",
]

#: Error codes of results that ``--retry-failed`` sends again (the failure was transient).
RETRIABLE_ERROR_CODES: Final = frozenset(
    {
        "rate_limited",
        "overloaded",
        "timeout",
        "connection",
        "http_5xx",
        "http_408",
        "http_409",
        "bad_response",
        "stream_error",
        "results_gone",  # a provider batch's results file was deleted (--via batch)
        "batch_lost",  # a provider batch answered 404, on its last attempt (--via batch)
    }
)

_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE


@dataclass(slots=True, eq=False, repr=False)
class ResultLine(MutableRecord):
    """One job's result.

    ``line`` is the job's line in the input: it is written only for a line-keyed result (a bad
    line without an id of its own, ``custom_id`` None), and lets a sink place results in input
    order. ``body`` is the provider's parsed body, or an ``orjson.Fragment`` of its raw bytes
    (written verbatim). ``status`` None means no response arrived (``"response": null``).
    """

    id: str
    custom_id: str | None
    line: int
    status: int | None = None
    request_id: str | None = None
    body: Any = None
    error_code: str | None = None
    error_message: str | None = None
    metadata: Any = None

    @property
    def key(self) -> str | int:
        """What resume knows the result by: its ``custom_id``, else its line."""
        return self.line if self.custom_id is None else self.custom_id

    def to_dict(self) -> dict[str, Any]:
        """The result as written (``body`` may still be an ``orjson.Fragment``)."""
        out: dict[str, Any] = {
            "id": self.id,
            "custom_id": self.custom_id,
            "response": None
            if self.status is None
            else {"status_code": self.status, "request_id": self.request_id, "body": self.body},
            "error": None
            if self.error_code is None
            else {"code": self.error_code, "message": self.error_message},
        }
        if self.metadata is not None:
            out["metadata"] = self.metadata
        if self.custom_id is None:
            out["line"] = self.line  # the marker of a line-keyed result
        return out

    def to_json(self) -> bytes:
        """The result's line, newline included."""
        return orjson.dumps(self.to_dict(), option=_NEWLINE)


def parse_result(raw: bytes) -> dict[str, Any] | None:
    """A result (or latency) line as a dict; None when it is not a JSON object (a torn line)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def result_key(obj: dict[str, Any]) -> str | int | None:
    """A result's or latency line's key: its custom_id, else the line of a line-keyed bad line."""
    cid = obj.get("custom_id")
    if isinstance(cid, str):
        return cid
    line = obj.get("line")
    return line if cid is None and type(line) is int else None


def line_key(raw: bytes) -> str | int | None:
    """:func:`result_key` of a raw result line. A line as :meth:`ResultLine.to_json` writes it
    starts ``{"id":"…","custom_id":"…"``: an id without escapes is read from the bytes (a JSON
    string without a backslash is its UTF-8 text; inside a string every quote is escaped, so
    ``","custom_id":"`` cannot occur there); anything else is parsed. Meant for whole lines
    (a torn one may still yield the id it starts with)."""
    if raw.startswith(b'{"id":"'):
        end = raw.find(b'"', 7)
        if end > 0 and raw.startswith(b',"custom_id":"', end + 1):
            start = end + 15
            stop = raw.find(b'"', start)
            if stop > 0 and raw.find(b"\\", start, stop) < 0:  # find: no copy, no TypeError
                return raw[start:stop].decode()
    obj = parse_result(raw)
    return None if obj is None else result_key(obj)


def rerun_code(obj: dict[str, Any]) -> str | None:
    """The result's error code when ``--retry-failed`` sends its job again, else None."""
    err = obj.get("error")
    code = err.get("code") if isinstance(err, dict) else None
    return code if code in RETRIABLE_ERROR_CODES else None
