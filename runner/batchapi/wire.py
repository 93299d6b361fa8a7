"""The two batch wire protocols behind one small interface: OpenAI Batch, Anthropic Message Batches.

Each class builds request items with the chat backend's own ``build_body`` (so a batch request
is byte for byte the request a direct run would send), submits, retrieves, lists, cancels, and
turns each provider's result rows into :class:`Row` values. The facts assumed about each wire
(field names, statuses, limits) are listed in docs/BATCH.md.

Failures of the control requests (upload, create, retrieve, download) are retried here with
backoff when transient; authentication failures raise :class:`~runner.errors.AuthError`,
transient ones that outlast the retries :class:`~runner.errors.Unavailable` (exit 75), other
permanent ones :class:`BatchAPIError`. A failed *row* is never an exception: it is a Row with an
``ErrorInfo``.
"""

from __future__ import annotations

import asyncio
import random
import re
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final

import orjson
from yarl import URL

from .._aiohttp import aiohttp
from ..config import RunConfig
from ..errors import AuthError, QuotaError, RunnerError, Unavailable
from ..models import ErrorInfo, Job, Usage
from ..providers import anthropic as anthropic_wire
from ..providers import openai as openai_wire
from ..providers._http import HTTPBackend, _secret, _text_of, scrub
from ..providers._wire import BodyTooLarge, KeyGuard, read_capped, too_large
from ..urls import public_url

__all__ = [
    "LOOKUP_BACK_S",
    "RETRY_ROW_CODES",
    "AnthropicBatchAPI",
    "BatchAPI",
    "BatchAPIError",
    "BatchNotFound",
    "BatchRejected",
    "BatchView",
    "CreateUncertain",
    "OpenAIBatchAPI",
    "ResultsGone",
    "Row",
    "open_batch_api",
]

#: Row error codes that a later submission can fix (the request itself was never judged).
RETRY_ROW_CODES: Final = frozenset(
    {"batch_expired", "batch_cancelled", "token_limit_exceeded", "batch_failed", "missing_row"}
)
_CONTROL_ATTEMPTS = 6
#: What a result row may hold beyond its answer (ids, status, the envelope's fields): a row is
#: read into memory up to the answer cap (``max_response_bytes``) plus this.
ROW_ENVELOPE_BYTES: Final = 64 << 10
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*("(?:[^"\\]|\\.)*")')
#: How far before the local time of a lost create the lookup lists batches (seconds). Only a
#: bound on the listing: a batch is matched by what the run put into it (OpenAI: its metadata;
#: Anthropic: its rows' custom ids, which carry the chunk key), never by its time, so a local
#: clock off the provider's by up to this much still finds it (docs/BATCH.md).
LOOKUP_BACK_S: Final = 3600.0
_ANTHROPIC_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Anthropic error types inside an ``errored`` result -> the HTTP status they stand for.
_ANTHROPIC_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


class BatchAPIError(RunnerError):
    """A batch control request failed permanently (not a row: the upload, create, ...)."""

    exit_code = 1


class CreateUncertain(BatchAPIError):
    """A batch create whose answer was lost (a timeout, a cut connection, a 5xx from a gateway,
    a 2xx that is not JSON): the provider may have made the batch. Sending the create again
    could make a second batch of the same jobs, billed twice, the first never collected; the
    engine looks the batch up first (as after a crash between create and journal)."""

    exit_code = 75


class ResultsGone(BatchAPIError):
    """An ended batch's results file answers 404/410: deleted (OpenAI files can be deleted,
    Anthropic batches too) or past the provider's retention. Re-running cannot bring it back."""


class BatchNotFound(BatchAPIError):
    """A journaled batch answers 404: deleted, past the provider's retention, or made with
    another API key or base URL. Its jobs are neither written nor sent again unless the user
    says so (``--resubmit-lost-batches``): the batch may still run, billed, elsewhere. Exit 3,
    like a guard: re-running alone cannot change it."""

    exit_code = 3


class BatchRejected(BatchAPIError):
    """The provider refused a batch upload or create with a 4xx (other than auth, quota and
    rate limits): a wrong URL, model or request, which re-sending cannot fix. Misuse, like a
    wrong endpoint before any success in a direct run: exit 2."""

    exit_code = 2


def _next_cursor(page: Mapping[str, Any], seen: set[str], url: str) -> str:
    """The listing's next cursor (``last_id``). One that came back (a gateway that ignores the
    cursor and answers page one, ``has_more`` on, again) listed the same page for ever: the
    lookup cannot finish, and "not found" would send the create again, maybe a second batch."""
    cursor = str(page["last_id"])
    if cursor in seen:
        raise BatchAPIError(
            f"listing batches ({public_url(url)}): the cursor {cursor} came back, so the server "
            "does not page the listing and the lookup of a batch whose create answer was lost "
            "cannot finish; its jobs are not sent again (they may be in a batch already)"
        )
    seen.add(cursor)
    return cursor


@dataclass(slots=True)
class BatchView:
    """One retrieval of a batch, normalised across the two shapes."""

    id: str
    status: str  # the provider's own status value
    ended: bool  # terminal: results (if any) can be fetched
    total: int
    done: int  # rows finished so far (any outcome)
    counts: dict[str, int]
    output_file_id: str | None = None
    error_file_id: str | None = None
    results_url: str | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    created_at: float | None = None
    ended_at: float | None = None


@dataclass(slots=True)
class Row:
    """One request's outcome inside a batch."""

    sent_id: str
    status: int | None  # HTTP status of the request inside the batch; None when never run
    body: Any  # the response body (parsed), or None
    request_id: str | None
    row_id: str | None
    error: ErrorInfo | None
    usage: Usage | None


class BatchAPI:
    """What the batch engine needs from a provider; one subclass per wire shape."""

    shape: ClassVar[str]
    max_requests: ClassVar[int]
    max_bytes: ClassVar[int]
    one_model_per_batch: ClassVar[bool]
    needs_upload: ClassVar[bool]
    #: Whether :meth:`find` identifies a batch exactly (by metadata); if not, every id of a
    #: chunk travels as "<chunk key>-<position>" and the engine checks the rows of the batch it
    #: found against them before using any.
    find_is_exact: ClassVar[bool]
    #: Whether :meth:`sent_id` may replace a job's id (then a chunk's ids are all replaced).
    maps_ids: ClassVar[bool] = False

    @staticmethod
    def settled(counts: dict[str, int]) -> int:
        """Rows finished so far (any outcome), from a view's (or journalled chunk's) counts."""
        raise NotImplementedError

    #: where uploads and downloads are spooled: None for tempfile's directory (TMPDIR, /tmp),
    #: else the outputs' directory where no temporary directory is usable (:func:`spool_dir`)
    spool_dir: str | None = None

    def __init__(
        self,
        session: aiohttp.ClientSession,
        backend: HTTPBackend,
        *,
        base_url: str,
        api_key: str | None,
        retry_base_s: float,
    ) -> None:
        self._session = session
        self._backend = backend
        self._base = base_url.rstrip("/")
        self._password = URL(base_url).password
        self._api_key = api_key
        self._guard = KeyGuard(_secret(api_key))
        # a gateway's basic auth in the base URL: kept out of the outputs like the key
        self._password_guard = KeyGuard(_secret(self._password))
        self._retry_base = retry_base_s
        # Control answers are bounded as chat answers are (README, "Reliability"); a result
        # row too: a row is one answer (see _download_rows for the file as a whole).
        self._cap = backend._cap

    # -- requests ------------------------------------------------------------------------------

    def sent_id(self, custom_id: str, index: int) -> str:
        """The id a job travels under inside a batch (its own, where the provider accepts it)."""
        return custom_id

    def body(self, job: Job, cache_key: str | None) -> dict[str, Any]:
        body, _ = self._backend.build_body(job, cache_key)
        body.pop("stream", None)  # batch requests never stream
        body.pop("stream_options", None)
        return body

    def item(self, job: Job, sent_id: str, cache_key: str | None) -> bytes:  # pragma: no cover
        raise NotImplementedError

    # -- control -------------------------------------------------------------------------------

    def write_input(self, fh: BinaryIO, items: Iterable[bytes]) -> None:  # pragma: no cover
        """Write the batch input (the file to upload, or the create body) to ``fh``."""
        raise NotImplementedError

    async def upload(self, name: str, path: Path) -> str:  # pragma: no cover
        raise NotImplementedError

    async def create(
        self, *, file_id: str | None, path: Path, metadata: Mapping[str, str]
    ) -> BatchView:  # pragma: no cover
        raise NotImplementedError

    async def get(self, batch_id: str) -> BatchView:  # pragma: no cover
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> BatchView:  # pragma: no cover
        raise NotImplementedError

    async def find(
        self, *, metadata: Mapping[str, str], sent_at: float, total: int, known: set[str]
    ) -> str | None:  # pragma: no cover
        """The id of a batch this run created but never journaled (a crash right after create,
        or a create whose answer was lost), listing back to ``sent_at - LOOKUP_BACK_S``.

        :param sent_at: the local time the create was sent (journaled as ``creating_at``).
        :param known: batch ids never to return (journaled, or found not to be ours).
        """
        raise NotImplementedError

    def rows(self, view: BatchView) -> AsyncIterator[Row]:  # pragma: no cover
        raise NotImplementedError

    # -- plumbing ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: Any = None,
        sink: BinaryIO | None = None,
        sink_limit: int | None = None,
        submit: bool = False,
        once: bool = False,
        batch: bool = False,
    ) -> Any:
        """One control request with retries for transient failures; the parsed JSON.

        Every answer is read up to ``max_response_bytes`` (an endless or enormous one fails
        the call, not retried: a create's raises :class:`CreateUncertain`, as its batch may
        exist). With ``sink`` the body is streamed into it instead (rewound for each attempt),
        up to ``sink_limit`` bytes, so a results file is never held in memory and a cut
        download is retried whole.
        With ``submit`` (an upload or create) a permanent 4xx raises :class:`BatchRejected`.
        With ``once`` (a create, which must never run twice) a transient failure is retried
        here only when the request surely made nothing (no connection, a 429); any other
        raises :class:`CreateUncertain`. With ``batch`` (a request about one batch) a 404 raises
        :class:`BatchNotFound`.
        """
        last = ""
        status = 0
        for attempt in range(1, _CONTROL_ATTEMPTS + 1):
            body_data = data() if callable(data) else data
            try:
                async with self._session.request(method, url, json=json, data=body_data) as resp:
                    if resp.status < 300 and sink is not None:
                        sink.seek(0)
                        sink.truncate()
                        size = 0
                        async for chunk in resp.content.iter_chunked(1 << 20):
                            size += len(chunk)
                            if sink_limit is not None and size > sink_limit:
                                raise BodyTooLarge(_file_too_large(sink_limit))
                            sink.write(chunk)
                        sink.flush()
                        return None
                    payload = await read_capped(resp, self._cap)
                    if resp.status < 300:
                        return self._keyless(payload, orjson.loads(payload))
                    try:
                        parsed: Any = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        parsed = _text_of(payload)  # cut and marked: see redact()
                    status = resp.status
                    err = self._backend.classify(status, parsed, resp.headers)
                    unsent = status == 429
            except BodyTooLarge as exc:
                err = ErrorInfo("response_too_large", str(exc), retriable=False)
                unsent = False
            except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError) as exc:
                err = ErrorInfo("connection", f"{type(exc).__name__}: {exc}", retriable=True)
                unsent = isinstance(exc, aiohttp.ClientConnectorError)
            last = scrub(f"{method} {public_url(url.split('?')[0])}: {err.message}", self._api_key)
            if self._password:  # a gateway's basic auth in the base URL: never in a message,
                # in any spelling (a 401 quoting the "Authorization: Basic" it got is base64)
                last = self._password_guard.text(last) or last
                last = last.replace(self._password, "[redacted]")
            if err.fatal:
                raise (QuotaError if err.code == "insufficient_quota" else AuthError)(last)
            if sink is not None and status in (404, 410):
                raise ResultsGone(last)
            if batch and status == 404:
                raise BatchNotFound(last)
            if once and err.code == "response_too_large":
                raise CreateUncertain(f"{last}: the batch may have been created")
            if not err.retriable:
                break
            if once and not unsent:
                raise CreateUncertain(f"{last}: the batch may have been created")
            if attempt == _CONTROL_ATTEMPTS:
                # Still transient after every retry: exit 75, a re-run reattaches (the journal).
                raise Unavailable(f"{last} (after {attempt} attempts); run again later")
            delay = err.retry_after_s or self._retry_base * 2 ** (attempt - 1)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
        if submit and 400 <= status < 500:
            raise BatchRejected(
                f"{last}: the provider refused the batch; check the base URL, "
                "the model and the request (re-sending would not help)"
            )
        raise BatchAPIError(last)

    def _keyless(self, raw: bytes, doc: Any) -> Any:
        """A 2xx control answer (a batch object, a file, a listing) with the key removed from
        every string, field names included: its id, status, counts and errors are journaled,
        logged and shown by ``runner status``, so an echo anywhere in it would reach an output.
        An id that carried the key no longer names the provider's batch: it is then reported
        missing (exit 3), never followed under the key (docs/BATCH.md)."""
        for guard in (self._guard, self._password_guard):
            if guard.leaks(raw, doc):
                doc, _ = guard.scrub_body(doc)
                raw = orjson.dumps(doc)
        return doc

    def _doc(self, line: bytes) -> dict[str, Any] | None:
        """A result row's object (:func:`_row_doc`) with the key removed wherever the provider
        echoed it (text, request id, error message), as a direct run's bodies are (README,
        "Reliability"); a row without it is returned as parsed."""
        doc = _row_doc(line)
        for guard in (self._guard, self._password_guard):  # a gateway's password as the key
            if doc is not None and guard.leaks(line, doc):
                cleaned, raw = guard.scrub_body(doc)
                doc = cleaned if isinstance(cleaned, dict) else None
                line = raw or line
        return doc

    async def _download_rows(self, url: str, rows: int) -> AsyncIterator[bytes | _TooLarge]:
        """The non-empty lines of a JSONL download of at most ``rows`` rows, spooled through
        a temporary file (disk, not memory: a results file is large by nature).

        Bounds (docs/BATCH.md): the file at ``rows`` times a row's bound (when the batch's
        counts give ``rows``), so an endless body stops (a non-retried
        :class:`BatchAPIError`); a row in memory at its bound, the answer cap plus
        :data:`ROW_ENVELOPE_BYTES`: a longer one comes as :class:`_TooLarge`.
        """
        row_cap = self._cap + ROW_ENVELOPE_BYTES
        with tempfile.TemporaryFile(dir=self.spool_dir) as fh:
            # a view without counts (rows 0) bounds no file: its rows are still bounded
            await self._call("GET", url, sink=fh, sink_limit=rows * row_cap if rows > 0 else None)
            fh.seek(0)
            while line := fh.readline(row_cap + 1):
                if len(line) > row_cap and not line.endswith(b"\n"):
                    while (rest := fh.readline(1 << 20)) and not rest.endswith(b"\n"):
                        pass  # the rest of the row, never held whole
                    yield _TooLarge(line[:4096], row_cap)
                elif line.strip():
                    yield line

    def _too_large_row(self, over: _TooLarge) -> Row:
        """A row over its bound: failed (``response_too_large``, not resubmitted: the same
        request would get the same answer), under its custom_id when its head names one,
        else unnamed (its job is then reported missing)."""
        m = _CUSTOM_ID.search(over.head)
        try:
            cid = orjson.loads(m.group(1)) if m else ""
        except orjson.JSONDecodeError:
            cid = ""
        message = too_large(over.cap).replace("response body", "result row")
        info = ErrorInfo("response_too_large", message, retriable=False)
        return Row(cid if isinstance(cid, str) else "", None, None, None, None, info, None)


@dataclass(slots=True, frozen=True)
class _TooLarge:
    """A result row longer than its bound: its first bytes and the bound."""

    head: bytes
    cap: int


def _file_too_large(limit: int) -> str:
    return (
        f"results file over {limit:,} bytes (its rows times max_response_bytes plus "
        f"{ROW_ENVELOPE_BYTES:,}); not read further (raise max_response_bytes if such "
        "answers are expected)"
    )


def _parse_iso(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _row_doc(line: bytes) -> dict[str, Any] | None:
    """A result line's JSON object, or None unless it is an object with a string custom_id."""
    try:
        doc = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("custom_id"), str) else None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) else None


class OpenAIBatchAPI(BatchAPI):
    """``POST /files`` + ``POST /batches``; results in ``output_file_id`` and ``error_file_id``."""

    shape = "openai"

    @staticmethod
    def settled(counts: dict[str, int]) -> int:
        return int(counts.get("completed") or 0) + int(counts.get("failed") or 0)

    max_requests = 50_000
    max_bytes = 200 * 1000 * 1000
    one_model_per_batch = True
    needs_upload = True
    find_is_exact = True
    _ENDED: ClassVar[frozenset[str]] = frozenset({"completed", "failed", "expired", "cancelled"})

    def item(self, job: Job, sent_id: str, cache_key: str | None) -> bytes:
        doc = {
            "custom_id": sent_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": self.body(job, cache_key),
        }
        return orjson.dumps(doc)

    def write_input(self, fh: BinaryIO, items: Iterable[bytes]) -> None:
        for item in items:
            fh.write(item)
            fh.write(b"\n")

    async def upload(self, name: str, path: Path) -> str:
        def form() -> aiohttp.FormData:
            # A fresh file object per attempt: aiohttp streams it and closes it when sent.
            f = aiohttp.FormData()
            f.add_field("purpose", "batch")
            fh = open(path, "rb")
            f.add_field("file", fh, filename=name, content_type="application/jsonl")
            return f

        doc = await self._call("POST", self._base + "/files", data=form, submit=True)
        return str(doc["id"])

    async def create(
        self, *, file_id: str | None, path: Path, metadata: Mapping[str, str]
    ) -> BatchView:
        doc = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": dict(metadata),
        }
        url = self._base + "/batches"
        return self._view(await self._call("POST", url, json=doc, submit=True, once=True))

    async def get(self, batch_id: str) -> BatchView:
        return self._view(await self._call("GET", f"{self._base}/batches/{batch_id}", batch=True))

    async def cancel(self, batch_id: str) -> BatchView:
        return self._view(await self._call("POST", f"{self._base}/batches/{batch_id}/cancel"))

    async def find(
        self, *, metadata: Mapping[str, str], sent_at: float, total: int, known: set[str]
    ) -> str | None:
        # Batches carry the metadata we sent: match it exactly, newest first, until older ones.
        created_after = sent_at - LOOKUP_BACK_S
        after: str | None = None
        seen: set[str] = set()
        while True:
            url = f"{self._base}/batches?limit=100" + (f"&after={after}" if after else "")
            page = await self._call("GET", url)
            for b in page.get("data") or []:
                meta = b.get("metadata") or {}
                if all(meta.get(k) == v for k, v in metadata.items()):
                    return str(b["id"])
                created = _num(b.get("created_at"))
                if created is not None and created < created_after:
                    return None
            if not page.get("has_more") or not page.get("last_id"):
                return None
            after = _next_cursor(page, seen, url)

    def _view(self, doc: Any) -> BatchView:
        counts = doc.get("request_counts") or {}
        status = str(doc.get("status"))
        total = int(counts.get("total") or 0)
        done = self.settled(counts)
        errors = (doc.get("errors") or {}).get("data") or []  # key-free: see _keyless
        ended_at = next(
            (
                _num(doc.get(k))
                for k in ("completed_at", "failed_at", "expired_at", "cancelled_at")
                if doc.get(k) is not None
            ),
            None,
        )
        return BatchView(
            id=str(doc["id"]),
            status=status,
            ended=status in self._ENDED,
            total=total,
            done=done,
            counts={k: int(v) for k, v in counts.items() if isinstance(v, int)},
            output_file_id=doc.get("output_file_id"),
            error_file_id=doc.get("error_file_id"),
            errors=[e for e in errors if isinstance(e, dict)],
            created_at=_num(doc.get("created_at")),
            ended_at=ended_at,
        )

    async def rows(self, view: BatchView) -> AsyncIterator[Row]:
        for fid in (view.output_file_id, view.error_file_id):
            if not fid:
                continue
            # A file is downloaded whole before its rows are used: a download cut halfway is
            # retried instead of leaving half the rows unaccounted for.
            url = f"{self._base}/files/{fid}/content"
            async for line in self._download_rows(url, view.total):
                yield self._row(line) if isinstance(line, bytes) else self._too_large_row(line)

    def _row(self, line: bytes) -> Row:
        doc = self._doc(line)
        if doc is None:
            return Row("", None, None, None, None, None, None)
        resp = doc.get("response")
        err = doc.get("error")
        status = body = request_id = None
        if isinstance(resp, dict):
            status = resp.get("status_code") if isinstance(resp.get("status_code"), int) else None
            body = resp.get("body")
            request_id = resp.get("request_id")
        info: ErrorInfo | None = None
        if isinstance(err, dict):
            code = str(err.get("code") or "batch_error")
            info = ErrorInfo(code, str(err.get("message") or code), code in RETRY_ROW_CODES)
        elif status is None:
            info = ErrorInfo("bad_response", "a row with neither response nor error", True)
        elif status >= 300:
            # A request-level failure: inside response.body, with error null.
            info = openai_wire.classify_error(status, body, {})
        usage = openai_wire.parse_usage(body.get("usage")) if isinstance(body, dict) else None
        return Row(doc["custom_id"], status, body, request_id, doc.get("id"), info, usage)


class AnthropicBatchAPI(BatchAPI):
    """``POST /messages/batches`` with inline requests; results streamed from ``results_url``."""

    shape = "anthropic"

    @staticmethod
    def settled(counts: dict[str, int]) -> int:
        return sum(counts.values()) - counts.get("processing", 0)

    max_requests = 100_000
    max_bytes = 256 * 1000 * 1000
    one_model_per_batch = False
    needs_upload = False
    find_is_exact = False
    maps_ids = True

    def sent_id(self, custom_id: str, index: int) -> str:
        # custom_id must match ^[a-zA-Z0-9_-]{1,64}$; others travel under their position. (As
        # find_is_exact is False, the engine sends every id as "<chunk key>-<position>".)
        return custom_id if _ANTHROPIC_ID.fullmatch(custom_id) else f"r{index}"

    def item(self, job: Job, sent_id: str, cache_key: str | None) -> bytes:
        return orjson.dumps({"custom_id": sent_id, "params": self.body(job, cache_key)})

    def write_input(self, fh: BinaryIO, items: Iterable[bytes]) -> None:
        fh.write(b'{"requests":[')
        sep = b""
        for item in items:
            fh.write(sep)
            fh.write(item)
            sep = b","
        fh.write(b"]}")

    async def create(
        self, *, file_id: str | None, path: Path, metadata: Mapping[str, str]
    ) -> BatchView:
        url = self._base + "/messages/batches"
        # Streamed from the file (a batch body can be hundreds of MB), reopened per attempt.
        doc = await self._call("POST", url, data=lambda: open(path, "rb"), submit=True, once=True)
        return self._view(doc)

    async def get(self, batch_id: str) -> BatchView:
        url = f"{self._base}/messages/batches/{batch_id}"
        return self._view(await self._call("GET", url, batch=True))

    async def cancel(self, batch_id: str) -> BatchView:
        url = f"{self._base}/messages/batches/{batch_id}/cancel"
        return self._view(await self._call("POST", url))

    async def find(
        self, *, metadata: Mapping[str, str], sent_at: float, total: int, known: set[str]
    ) -> str | None:
        # Message batches carry no metadata, and a batch's custom ids can be read only once it
        # has ended: an unknown batch with exactly this many requests is a candidate, the one
        # created nearest the create's local time first. The engine uses it only if its rows'
        # ids are the chunk's ("<chunk key>-<position>", unique to the chunk); else it is set
        # aside and the lookup runs again (docs/BATCH.md, "Journal and reattach"). Time only
        # bounds how far back the listing goes: the clocks need not agree.
        after: str | None = None
        seen: set[str] = set()
        found: tuple[float, str] | None = None
        while True:
            url = f"{self._base}/messages/batches?limit=100" + (
                f"&after_id={after}" if after else ""
            )
            page = await self._call("GET", url)
            for b in page.get("data") or []:
                created = _parse_iso(b.get("created_at"))
                if created is not None and created < sent_at - LOOKUP_BACK_S:
                    return None if found is None else found[1]
                view = self._view(b)
                if view.id not in known and view.total == total:
                    gap = abs(created - sent_at) if created is not None else LOOKUP_BACK_S
                    if found is None or gap < found[0]:
                        found = (gap, view.id)
            if not page.get("has_more") or not page.get("last_id"):
                return None if found is None else found[1]
            after = _next_cursor(page, seen, url)

    def _view(self, doc: Any) -> BatchView:
        counts = {k: int(v) for k, v in (doc.get("request_counts") or {}).items()}
        total = sum(counts.values())
        status = str(doc.get("processing_status"))
        return BatchView(
            id=str(doc["id"]),
            status=status,
            ended=status == "ended",
            total=total,
            done=self.settled(counts),
            counts=counts,
            results_url=doc.get("results_url"),
            created_at=_parse_iso(doc.get("created_at")),
            ended_at=_parse_iso(doc.get("ended_at")),
        )

    async def rows(self, view: BatchView) -> AsyncIterator[Row]:
        if not view.results_url:
            return
        url = view.results_url
        if URL(url).origin() != URL(self._base).origin():
            # The key goes with this request: never to another host than the API's own.
            url = f"{self._base}/messages/batches/{view.id}/results"
        async for line in self._download_rows(url, view.total):
            yield self._row(line) if isinstance(line, bytes) else self._too_large_row(line)

    def _row(self, line: bytes) -> Row:
        doc = self._doc(line)
        if doc is None:
            return Row("", None, None, None, None, None, None)
        cid = doc["custom_id"]
        result = doc.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            msg = result.get("message")
            usage = anthropic_wire.parse_usage(msg.get("usage")) if isinstance(msg, dict) else None
            rid = msg.get("id") if isinstance(msg, dict) else None
            return Row(cid, 200, msg, None, rid, None, usage)
        if kind == "errored":
            body = result.get("error")
            inner = body.get("error") if isinstance(body, dict) else None
            etype = inner.get("type") if isinstance(inner, dict) else None
            status = _ANTHROPIC_STATUS.get(str(etype), 500)
            info = anthropic_wire.classify_error(status, body, {})
            return Row(cid, status, body, None, None, info, None)
        if kind in ("canceled", "expired"):
            code = "batch_cancelled" if kind == "canceled" else "batch_expired"
            info = ErrorInfo(code, f"request {kind} before it was processed", True)
            return Row(cid, None, None, None, None, info, None)
        return Row(
            cid, None, None, None, None, ErrorInfo("bad_response", "unknown row", True), None
        )


def spool_dir(results: Path) -> str | None:
    """None where tempfile finds a usable temporary directory, else the directory of the
    results file (checked writable before the run opened it).

    A container with a read-only root file system (Kubernetes ``readOnlyRootFilesystem``) and
    a writable volume for the outputs has no usable TMPDIR, /tmp or /var/tmp: the first batch
    upload stopped with a traceback (exit 1) after the outputs had been opened.
    """
    try:
        tempfile.gettempdir()
    except FileNotFoundError:  # "No usable temporary directory found"
        return str(results.parent)
    return None


def open_batch_api(
    config: RunConfig,
    session: aiohttp.ClientSession,
    *,
    base_url: str,
    api_key: str | None,
) -> BatchAPI:
    """The batch protocol for ``config.provider`` (the mock speaks both; it defaults to OpenAI)."""
    retry = min(config.poll_interval, 2.0)
    if config.provider == "anthropic":
        ab = anthropic_wire.AnthropicBackend(session, config, base_url=base_url, api_key=api_key)
        return AnthropicBatchAPI(
            session, ab, base_url=base_url, api_key=api_key, retry_base_s=retry
        )
    ob = openai_wire.OpenAIBackend(session, config, base_url=base_url, api_key=api_key)
    return OpenAIBatchAPI(session, ob, base_url=base_url, api_key=api_key, retry_base_s=retry)


def control_headers(config: RunConfig, api_key: str | None) -> dict[str, str]:
    """Session headers: auth and version only (uploads set their own multipart content type)."""
    if config.provider == "anthropic":
        headers = anthropic_wire.build_headers(config, api_key)
        headers.pop("content-type", None)
        headers["content-type"] = "application/json"
        return headers
    headers = openai_wire.build_headers(config, api_key)
    headers.pop("Content-Type", None)
    return headers
