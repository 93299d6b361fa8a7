"""The simulated provider's batch endpoints: OpenAI Batch and Anthropic Message Batches.

Time is accelerated: a batch is created, works through its requests and ends within
``duration_s`` seconds (default 2), passing through the real status values on the way.
Requests are answered by the same planning code as the chat endpoints (same usage, same prefix
cache), in input order when the batch ends, so a group kept together in one batch reads the
prefix its first request wrote. Rows come back shuffled (``shuffle``), like the real services.

Routes (relative to ``/v1``)::

    POST /files                             multipart upload, purpose=batch (OpenAI)
    GET  /files/{id}/content                a file's bytes
    POST /batches                           create (input_file_id, endpoint, completion_window)
    GET  /batches                           list, newest first (limit, after)
    GET  /batches/{id}                      retrieve
    POST /batches/{id}/cancel               cancel
    POST /messages/batches                  create with inline requests (Anthropic)
    GET  /messages/batches                  list, newest first (limit, after_id)
    GET  /messages/batches/{id}             retrieve
    POST /messages/batches/{id}/cancel      cancel
    GET  /messages/batches/{id}/results     results JSONL

Seeded faults, each named by the 1-based ordinal of the batch create it hits (per shape):
``expire`` (the window closes with ``partial`` of the rows done; the rest come back expired),
``all_failed`` (OpenAI: every row fails; the batch is ``completed`` with no output file),
``token_limit`` (OpenAI: ``failed`` with ``token_limit_exceeded`` after it was accepted);
``fail_downloads`` answers the first N result downloads with a 500;
``body_error_rate`` answers that share of rows with ``body_error_status`` inside the response
body (OpenAI ``error: null``; Anthropic ``errored``). A client cancel ends a batch with the rows
done so far and the rest cancelled.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import MultipartReader, web
from aiohttp.web_request import BaseRequest

from .wire import anthropic_error, openai_error

if TYPE_CHECKING:
    from .server import MockServer

__all__ = ["BatchMockConfig", "BatchService"]

_JSON = "application/json"
_WINDOW_S = 86400
_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class BatchMockConfig:
    """Batch behaviour of the mock (the ``batch`` table of the mock options)."""

    duration_s: float = 2.0  # create -> ended
    shuffle: bool = True
    partial: float = 0.5  # share of rows done when a seeded expiry cuts a batch
    body_error_rate: float = 0.0
    body_error_status: int = 500
    expire: tuple[int, ...] = ()
    all_failed: tuple[int, ...] = ()
    token_limit: tuple[int, ...] = ()
    max_requests: int = 100_000
    fail_downloads: int = 0  # the first N result downloads answer 500 (clients must retry)

    def __post_init__(self) -> None:
        if self.duration_s < 0 or not 0 <= self.partial <= 1:
            raise ValueError("batch duration_s must be >= 0 and partial in [0, 1]")
        if not 0 <= self.body_error_rate <= 1:
            raise ValueError("batch body_error_rate must be in [0, 1]")
        for name in ("expire", "all_failed", "token_limit"):
            object.__setattr__(self, name, tuple(getattr(self, name)))


@dataclass(slots=True)
class _Batch:
    id: str
    anthropic: bool
    ordinal: int
    requests: list[tuple[str, dict[str, Any]]]  # (custom_id, body)
    created: float  # server clock
    created_wall: float
    metadata: dict[str, Any] | None = None
    input_file_id: str | None = None
    endpoint: str = "/v1/chat/completions"
    cancel_at: float | None = None
    cancel_wall: float | None = None
    ended_wall: float | None = None
    rows: list[bytes] | None = None  # result lines once finished
    errors_rows: list[bytes] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    final: str | None = None  # completed | failed | expired | cancelled | ended


class BatchService:
    """In-memory batch state for one :class:`~runner.mock.server.MockServer`."""

    def __init__(
        self, server: MockServer, config: BatchMockConfig, clock: Callable[[], float]
    ) -> None:
        self.server = server
        self.config = config
        self._clock = clock
        self._rng = random.Random(server.config.seed ^ 0xBA7C)
        self._files: dict[str, tuple[str, bytes]] = {}  # id -> (filename, content)
        self._batches: dict[str, _Batch] = {}
        self._order: list[str] = []
        self._n = 0
        self.creates = {"openai": 0, "anthropic": 0}
        self.requests = 0  # requests in all batches created
        self.uploads = 0
        self.failed_downloads = 0

    def stats(self) -> dict[str, Any]:
        return {
            "creates": dict(self.creates),
            "requests": self.requests,
            "uploads": self.uploads,
            "failed_downloads": self.failed_downloads,
        }

    def _download_fault(self, anthropic: bool) -> web.Response | None:
        if self.failed_downloads >= self.config.fail_downloads:
            return None
        self.failed_downloads += 1
        return self._error(anthropic, 500, "The server had an error while processing your request.")

    # -- routing -------------------------------------------------------------------------------

    async def handle(self, request: BaseRequest, path: str, query: str) -> web.Response | None:
        """Answer a batch route, or None when ``path`` is not one."""
        method = request.method
        parts = path.split("/")[2:]  # "", "v1", ...
        anthropic = parts[:2] == ["messages", "batches"]
        if anthropic:
            parts = parts[1:]
        if not parts or parts[0] not in ("files", "batches"):
            return None
        args = dict(p.partition("=")[::2] for p in query.split("&") if p)
        if parts[0] == "files":
            if method == "POST" and len(parts) == 1:
                return await self._upload(request)
            if method == "GET" and len(parts) == 3 and parts[2] == "content":
                if fault := self._download_fault(False):
                    return fault
                item = self._files.get(parts[1])
                if item is None:
                    return self._missing(False, "file", parts[1])
                return web.Response(body=item[1], content_type="application/octet-stream")
            return None
        if len(parts) == 1:
            if method == "POST":
                return await self._create(request, anthropic)
            if method == "GET":
                return self._list(anthropic, args)
            return None
        batch = self._batches.get(parts[1])
        if batch is None or batch.anthropic != anthropic:
            return self._missing(anthropic, "batch", parts[1])
        if len(parts) == 2 and method == "GET":
            return self._json(self._view(batch, request))
        if len(parts) == 3 and parts[2] == "cancel" and method == "POST":
            self._cancel(batch)
            return self._json(self._view(batch, request))
        if len(parts) == 3 and parts[2] == "results" and method == "GET" and anthropic:
            self._advance(batch)
            if batch.final is None:
                return self._error(anthropic, 400, f"batch {batch.id} has not ended yet")
            if fault := self._download_fault(True):
                return fault
            assert batch.rows is not None
            return web.Response(body=b"".join(batch.rows), content_type="application/x-jsonl")
        return None

    # -- create --------------------------------------------------------------------------------

    async def _upload(self, request: BaseRequest) -> web.Response:
        # Not request.multipart(): that caps a part at client_max_size (1 MiB); files are big.
        reader = MultipartReader(request.headers, request.content)
        purpose, content, filename = None, None, "input.jsonl"
        while (part := await reader.next()) is not None:
            if not isinstance(part, object) or not hasattr(part, "read"):
                continue
            name = getattr(part, "name", None)
            data = await part.read()  # type: ignore[union-attr]
            if name == "purpose":
                purpose = bytes(data).decode()
            elif name == "file":
                content = bytes(data)
                filename = getattr(part, "filename", None) or filename
        if purpose != "batch" or content is None:
            return self._error(False, 400, "purpose must be 'batch' and a file must be given")
        self.uploads += 1
        fid = self._new_id("file-")
        self._files[fid] = (filename, content)
        doc = {
            "id": fid,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": "batch",
            "status": "processed",
            "expires_at": None,
        }
        return self._json(doc)

    async def _create(self, request: BaseRequest, anthropic: bool) -> web.Response:
        try:
            data = orjson.loads(await _read_all(request))
        except orjson.JSONDecodeError:
            return self._error(anthropic, 400, "invalid JSON body")
        if not isinstance(data, dict):
            return self._error(anthropic, 400, "request body must be a JSON object")
        requests: list[tuple[str, dict[str, Any]]] = []
        batch = _Batch(
            id="",
            anthropic=anthropic,
            ordinal=0,
            requests=requests,
            created=self._clock(),
            created_wall=time.time(),
        )
        if anthropic:
            items = data.get("requests")
            if not isinstance(items, list) or not items:
                return self._error(True, 400, "requests: expected a non-empty array")
            for i, item in enumerate(items):
                cid = item.get("custom_id") if isinstance(item, dict) else None
                params = item.get("params") if isinstance(item, dict) else None
                if not isinstance(cid, str) or not isinstance(params, dict):
                    return self._error(True, 400, f"requests.{i}: custom_id and params required")
                requests.append((cid, params))
        else:
            fid = data.get("input_file_id")
            if data.get("completion_window") != "24h":
                return self._error(False, 400, "completion_window: only '24h' is supported")
            if data.get("endpoint") != "/v1/chat/completions":
                return self._error(False, 400, "endpoint: only /v1/chat/completions is mocked")
            item = self._files.get(fid) if isinstance(fid, str) else None
            if item is None:
                return self._missing(False, "file", str(fid))
            models = set()
            for n, raw in enumerate(item[1].splitlines(), 1):
                try:
                    line = orjson.loads(raw)
                    cid, body = line["custom_id"], line["body"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    return self._error(False, 400, f"line {n}: not a batch request line")
                models.add(body.get("model"))
                requests.append((cid, body))
            if len(models) > 1:
                return self._error(False, 400, "a batch input file may name only one model")
            batch.input_file_id = fid
            meta = data.get("metadata")
            batch.metadata = meta if isinstance(meta, dict) else None
        if len(requests) > self.config.max_requests:
            return self._error(anthropic, 400, f"at most {self.config.max_requests} requests")
        if len({c for c, _ in requests}) != len(requests):
            return self._error(anthropic, 400, "custom_id values must be unique within a batch")
        shape = "anthropic" if anthropic else "openai"
        self.creates[shape] += 1
        self.requests += len(requests)
        batch.ordinal = self.creates[shape]
        batch.id = self._new_id("msgbatch_" if anthropic else "batch_")
        self._batches[batch.id] = batch
        self._order.append(batch.id)
        return self._json(self._view(batch, request))

    # -- time ----------------------------------------------------------------------------------

    def _progress(self, batch: _Batch, at: float) -> float:
        """Share of the rows done at server time ``at`` (validating takes the first 10%)."""
        d = self.config.duration_s
        if d <= 0:
            return 1.0
        return min(max((at - batch.created - 0.1 * d) / (0.8 * d), 0.0), 1.0)

    def _advance(self, batch: _Batch) -> None:
        """Finish the batch once its time has come (results are computed once, in order)."""
        if batch.final is not None:
            return
        now = self._clock()
        d = self.config.duration_s
        o = batch.ordinal
        if batch.cancel_at is not None:
            if now - batch.cancel_at >= 0.05 * d:
                done = int(len(batch.requests) * self._progress(batch, batch.cancel_at))
                self._finish(batch, done, "cancelled")
        elif not batch.anthropic and o in self.config.token_limit:
            if now - batch.created >= 0.1 * d:
                batch.final = "failed"
                batch.ended_wall = time.time()
                batch.rows = []
        elif now - batch.created >= d:
            if o in self.config.expire:
                self._finish(batch, int(len(batch.requests) * self.config.partial), "expired")
            else:
                self._finish(batch, len(batch.requests), "completed")

    def _finish(self, batch: _Batch, done: int, final: str) -> None:
        rows: list[tuple[bytes, bool]] = []  # (line, goes to the error file)
        counts = dict.fromkeys(("succeeded", "errored", "canceled", "expired"), 0)
        all_failed = not batch.anthropic and batch.ordinal in self.config.all_failed
        for i, (cid, body) in enumerate(batch.requests):
            if i >= done:
                kind = "expired" if final == "expired" else "canceled"
                counts[kind] += 1
                rows.append((self._cut_row(batch, cid, kind), True))
                continue
            status = 200
            if all_failed:
                status = 400
            elif self.config.body_error_rate and self._rng.random() < self.config.body_error_rate:
                status = self.config.body_error_status
            line, ok = self._answer(batch, cid, body, status)
            counts["succeeded" if ok else "errored"] += 1
            rows.append((line, not ok))
        if self.config.shuffle:
            self._rng.shuffle(rows)
        batch.counts = counts
        batch.final = "ended" if batch.anthropic else final
        batch.ended_wall = time.time()
        if batch.anthropic:
            batch.rows = [r for r, _ in rows]
            return
        out = [r for r, err in rows if not err]
        errs = [r for r, err in rows if err]
        batch.rows = out
        batch.errors_rows = errs
        if out:
            batch.output_file_id = self._new_id("file-")
            self._files[batch.output_file_id] = ("batch_output.jsonl", b"".join(out))
        if errs:
            batch.error_file_id = self._new_id("file-")
            self._files[batch.error_file_id] = ("batch_error.jsonl", b"".join(errs))

    def _answer(
        self, batch: _Batch, cid: str, body: dict[str, Any], status: int
    ) -> tuple[bytes, bool]:
        """One row answered through the chat planning code; (result line, succeeded)."""
        srv = self.server
        self._n += 1
        ident = f"{srv._id_prefix}b{self._n:015x}"
        request_id = "req_" + ident
        model = body.get("model")
        payload: Any
        try:
            if not isinstance(model, str) or not model:
                raise ValueError("model: field required")
            if status == 200:
                wire = srv._anthropic if batch.anthropic else srv._openai
                reply, _ = wire.plan(body, model, False)
                srv._commit(reply)
                payload = orjson.Fragment(wire.body(reply, model, ident))
        except (ValueError, TypeError) as exc:
            status, message = 400, str(exc)
        else:
            message = "The server had an error while processing your request."
            if status == 400:
                message = "Invalid request: the request was rejected."
        if batch.anthropic:
            if status == 200:
                result = {"type": "succeeded", "message": payload}
            else:
                etype = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
                result = {"type": "errored", "error": orjson.loads(anthropic_error(etype, message))}
            return orjson.dumps({"custom_id": cid, "result": result}) + b"\n", status == 200
        if status != 200:
            etype = "invalid_request_error" if status < 500 else "server_error"
            payload = orjson.Fragment(openai_error(message, etype, None))
        row = {
            "id": "batch_req_" + ident,
            "custom_id": cid,
            "response": {"status_code": status, "request_id": request_id, "body": payload},
            "error": None,
        }
        return orjson.dumps(row) + b"\n", status == 200

    def _cut_row(self, batch: _Batch, cid: str, kind: str) -> bytes:
        if batch.anthropic:
            return orjson.dumps({"custom_id": cid, "result": {"type": kind}}) + b"\n"
        self._n += 1
        code, message = (
            (
                "batch_expired",
                "This request could not be executed before the completion window expired.",
            )
            if kind == "expired"
            else ("batch_cancelled", "This request was cancelled before it was executed.")
        )
        row = {
            "id": f"batch_req_{self.server._id_prefix}b{self._n:015x}",
            "custom_id": cid,
            "response": None,
            "error": {"code": code, "message": message},
        }
        return orjson.dumps(row) + b"\n"

    def _cancel(self, batch: _Batch) -> None:
        self._advance(batch)
        if batch.final is None and batch.cancel_at is None:
            batch.cancel_at = self._clock()
            batch.cancel_wall = time.time()

    # -- views ---------------------------------------------------------------------------------

    def _view(self, batch: _Batch, request: BaseRequest) -> dict[str, Any]:
        self._advance(batch)
        return self._anthropic_view(batch, request) if batch.anthropic else self._openai_view(batch)

    def _openai_view(self, b: _Batch) -> dict[str, Any]:
        d = self.config.duration_s
        now = self._clock()
        created = int(b.created_wall)
        n = len(b.requests)
        status: str
        doc: dict[str, Any] = {
            "id": b.id,
            "object": "batch",
            "endpoint": b.endpoint,
            "errors": None,
            "input_file_id": b.input_file_id,
            "completion_window": "24h",
            "status": "",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": created,
            "in_progress_at": None,
            "expires_at": created + _WINDOW_S,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": n, "completed": 0, "failed": 0},
            "metadata": b.metadata,
        }
        ended = int(b.ended_wall) if b.ended_wall is not None else None
        if b.final == "failed":
            status = "failed"
            doc["failed_at"] = ended
            doc["errors"] = {
                "object": "list",
                "data": [
                    {
                        "code": "token_limit_exceeded",
                        "message": "Enqueued token limit reached for the model in organization "
                        "org-mock. Please try again once some in_progress batches have been "
                        "completed.",
                        "param": None,
                        "line": None,
                    }
                ],
            }
            doc["request_counts"]["total"] = 0
        elif b.final is not None:
            status = b.final
            doc["in_progress_at"] = created
            doc["output_file_id"] = b.output_file_id
            doc["error_file_id"] = b.error_file_id
            c = b.counts
            doc["request_counts"] = {
                "total": n,
                "completed": c["succeeded"],
                "failed": n - c["succeeded"],
            }
            key = {
                "completed": "completed_at",
                "expired": "expired_at",
                "cancelled": "cancelled_at",
            }
            doc[key[status]] = ended
            if status == "completed":
                doc["finalizing_at"] = ended
            if b.cancel_wall is not None:
                doc["cancelling_at"] = int(b.cancel_wall)
        elif b.cancel_at is not None:
            status = "cancelling"
            doc["in_progress_at"] = created
            doc["cancelling_at"] = int(b.cancel_wall or created)
        else:
            elapsed = now - b.created
            if elapsed < 0.1 * d:
                status = "validating"
            else:
                doc["in_progress_at"] = created
                status = "in_progress" if elapsed < 0.9 * d else "finalizing"
                done = int(n * self._progress(b, now))
                doc["request_counts"] = {"total": n, "completed": done, "failed": 0}
        doc["status"] = status
        return doc

    def _anthropic_view(self, b: _Batch, request: BaseRequest) -> dict[str, Any]:
        n = len(b.requests)
        counts = {"processing": n, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
        status = "in_progress"
        results_url = None
        if b.final is not None:
            status = "ended"
            counts = {"processing": 0, **b.counts}
            results_url = f"http://{request.host}/v1/messages/batches/{b.id}/results"
        else:
            if b.cancel_at is not None:
                status = "canceling"
            done = int(n * self._progress(b, self._clock()))
            counts["processing"], counts["succeeded"] = n - done, done
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": _rfc3339(b.ended_wall),
            "created_at": _rfc3339(b.created_wall),
            "expires_at": _rfc3339(b.created_wall + _WINDOW_S),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(b.cancel_wall),
            "results_url": results_url,
        }

    def _list(self, anthropic: bool, args: dict[str, str]) -> web.Response:
        limit = min(max(int(args.get("limit", "20") or 20), 1), 100)
        after = args.get("after_id" if anthropic else "after")
        ids = [i for i in reversed(self._order) if self._batches[i].anthropic == anthropic]
        if after in ids:
            ids = ids[ids.index(after) + 1 :]
        page = ids[:limit]

        class _Host:
            host = "mock"

        data = [
            self._anthropic_view(self._batches[i], _Host())  # type: ignore[arg-type]
            if anthropic
            else self._view_openai_listed(i)
            for i in page
        ]
        doc: dict[str, Any] = {
            "data": data,
            "has_more": len(ids) > limit,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        if not anthropic:
            doc["object"] = "list"
        return self._json(doc)

    def _view_openai_listed(self, ident: str) -> dict[str, Any]:
        b = self._batches[ident]
        self._advance(b)
        return self._openai_view(b)

    # -- helpers -------------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self.server._id_prefix}{self._n:012x}"

    @staticmethod
    def _json(doc: dict[str, Any]) -> web.Response:
        return web.Response(body=orjson.dumps(doc), content_type=_JSON)

    @staticmethod
    def _error(anthropic: bool, status: int, message: str) -> web.Response:
        body = (
            anthropic_error("invalid_request_error", message)
            if anthropic
            else openai_error(message, "invalid_request_error", None)
        )
        return web.Response(status=status, body=body, content_type=_JSON)

    def _missing(self, anthropic: bool, kind: str, ident: str) -> web.Response:
        if anthropic:
            body = anthropic_error("not_found_error", f"No {kind} with id {ident}")
        else:
            body = openai_error(
                f"No {kind} found with id '{ident}'.", "invalid_request_error", None
            )
        return web.Response(status=404, body=body, content_type=_JSON)


async def _read_all(request: BaseRequest) -> bytes:
    """The whole body, without the 1 MiB ``client_max_size`` of ``read()`` (batches are big)."""
    chunks = []
    while chunk := await request.content.read(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _rfc3339(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")
