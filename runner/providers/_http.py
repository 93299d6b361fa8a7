"""HTTP plumbing shared by the provider backends.

One ``aiohttp.ClientSession`` per run; one ``send`` skeleton that times the request, reads JSON
or an SSE stream and turns every request failure into an ``Attempt`` carrying a classified
``ErrorInfo`` (only ``asyncio.CancelledError`` and programming errors propagate). A provider
module supplies four hooks: build the body, normalise usage, classify an HTTP error and parse a
stream.

API keys must never leak into an ``Attempt``: servers sometimes echo request headers into
bodies and header values, so every body, request id and message built here goes through
:class:`~runner.providers._wire.KeyGuard` or :func:`scrub`. Bodies are capped at
``max_response_bytes`` and re-encoded onto one line when the server sent line breaks (see
:mod:`runner.providers._wire`). Redirects are followed only within the base URL's origin and
only when they keep the method and body (307/308): credentials never go to another host.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from time import perf_counter
from typing import Any, ClassVar, Final

import orjson
from yarl import URL

from .._aiohttp import aiohttp
from ..config import RunConfig
from ..loading import LOADING_CODE
from ..models import Attempt, ErrorInfo, Job, RateInfo, Usage
from ..urls import public_url
from ._wire import CUT, BodyTooLarge, KeyGuard, key_forms, read_capped, redact, too_large
from .capabilities import Capabilities, capabilities_for
from .headers import parse_go_duration, parse_rate_headers, parse_retry_after

__all__ = [
    "HTTPBackend",
    "Headers",
    "StreamParser",
    "apply_should_retry",
    "body_error",
    "error_fields",
    "error_from_exception",
    "http_message",
    "limit_kind",
    "make_session",
    "retry_delay",
    "scrub",
    "sse_data",
    "status_error",
    "stream_error",
]

# aiohttp's pool default of 100 connections would silently cap a higher concurrency.
MIN_CONNECTOR_LIMIT = 100
MAX_MESSAGE_CHARS = 300
PROBE_TIMEOUT_S = 30.0
MIN_SECRET_CHARS = 8
MAX_TEXT_BYTES = 4096  # of a non-JSON error body, read for its message
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# CPython fixed the leak of aborted TLS transports in 3.12.7 / 3.13.1; aiohttp warns when the
# workaround is requested on an interpreter that no longer needs it.
_NEEDS_CLEANUP_CLOSED = sys.version_info < (3, 12, 7) or (3, 13, 0) <= sys.version_info < (3, 13, 1)

Headers = Mapping[str, str]


def _dumps_str(obj: Any) -> str:
    # The backends post pre-encoded bytes; this only serves ``json=`` callers. It is the str
    # flavour because ``json_serialize_bytes`` needs a newer aiohttp than the one we require.
    return orjson.dumps(obj).decode()


def make_session(config: RunConfig, *, headers: Mapping[str, str]) -> aiohttp.ClientSession:
    """The run's one session; ``headers`` (auth, content type, extras) go on every request.

    Must be called inside the running event loop.
    """
    connector = aiohttp.TCPConnector(
        limit=max(config.concurrency, MIN_CONNECTOR_LIMIT),
        ttl_dns_cache=300,
        enable_cleanup_closed=_NEEDS_CLEANUP_CLOSED,
    )
    # total bounds the whole request (streams included); sock_connect, not connect, so that
    # waiting for a free pooled connection is not mistaken for an unreachable server.
    timeout = aiohttp.ClientTimeout(total=config.timeout, sock_connect=config.connect_timeout)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers=dict(headers),
        json_serialize=_dumps_str,
    )


# -- messages and classification -------------------------------------------------------------

# Patterns used only on error paths stay strings: ``re`` compiles them on first use (and
# caches them), so a run that meets no error does not pay for compiling them at start-up.
_SECRET_PATTERNS = (
    r"(?i)(bearer\s+|x-api-key[\"']?\s*[:=]\s*[\"']?)[^\s\"',;}]+|\bsk-[A-Za-z0-9_\-]{8,}"
)


def _secret(api_key: str | None) -> str | None:
    """The key when it is worth hunting for in text.

    Local servers take placeholders such as ``EMPTY`` or ``x``; replacing those everywhere would
    mangle every message (and every JSON field name containing the letter) to hide nothing.
    """
    return api_key if api_key and len(api_key) >= MIN_SECRET_CHARS else None


def scrub(text: str, api_key: str | None) -> str:
    """``text`` with the API key, and anything that looks like a credential, redacted."""
    key = _secret(api_key)
    if key is not None:
        text = redact(text, key_forms(key))
    return re.sub(_SECRET_PATTERNS, lambda m: (m.group(1) or "") + "[redacted]", text)


def _short(text: str) -> str:
    text = " ".join(text.split())
    # the CUT mark also lets redact() remove the start of a key the cut went through
    return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 3] + CUT


def _text_of(raw: bytes) -> str:
    """The first ``MAX_TEXT_BYTES`` of a body that is not JSON, marked when cut (see _short)."""
    text = raw[:MAX_TEXT_BYTES].decode("utf-8", "replace")
    return text + CUT if len(raw) > MAX_TEXT_BYTES else text


def error_fields(body: Any) -> tuple[str | None, str | None, str]:
    """(type, code, message) from ``{"error": {...}}`` bodies (OpenAI and Anthropic alike).

    ``body`` is the parsed JSON, or the response text when it was not JSON.
    """
    if isinstance(body, str):
        return None, None, body
    if not isinstance(body, dict):
        return None, None, ""
    err = body.get("error", body)
    if isinstance(err, str):
        return None, None, err
    if not isinstance(err, dict):
        return None, None, ""
    etype, code, msg = err.get("type"), err.get("code"), err.get("message")
    return (
        etype if isinstance(etype, str) else None,
        str(code) if isinstance(code, str | int) else None,
        msg if isinstance(msg, str) else "",
    )


def http_message(status: int, provider_message: str) -> str:
    return _short(f"HTTP {status}: {provider_message}" if provider_message else f"HTTP {status}")


_HINT = r"(?i)try again in\s+(?:(\d+(?:\.\d+)?)\s*seconds?\b|((?:\d+(?:\.\d+)?(?:ms|h|m|s))+)\b)"


def _hinted_delay(message: str) -> float | None:
    """The delay in a message such as "Please try again in 644ms." (OpenAI 429 bodies)."""
    m = re.search(_HINT, message)
    if m is None:
        return None
    if m.group(1) is not None:
        return float(m.group(1))
    return parse_go_duration(m.group(2))


def _reset_delay(rate: RateInfo | None, kind: str | None) -> float | None:
    """The reset of the exhausted limit, or of the one ``kind`` names, else the later one."""
    if rate is None:
        return None
    req, tok = rate.reset_requests_s, rate.reset_tokens_s
    if kind == "requests" and req is not None:
        return req
    if kind == "tokens" and tok is not None:
        return tok
    if rate.remaining_requests == 0 and req is not None:
        return req
    if rate.remaining_tokens == 0 and tok is not None:
        return tok
    known = [v for v in (req, tok) if v is not None]
    return max(known) if known else None


def limit_kind(etype: str | None, message: str) -> str | None:
    """Which limit a 429 is about ("requests" / "tokens"), from its type or its wording."""
    if etype in ("requests", "tokens"):
        return etype
    low = message.lower()
    if "tokens per" in low or "(tpm)" in low or "input tokens" in low or "output tokens" in low:
        return "tokens"
    if "requests per" in low or "(rpm)" in low or "number of requests" in low:
        return "requests"
    return None


def retry_delay(headers: Headers, *, kind: str | None, message: str) -> float | None:
    """The server's requested delay: retry-after(-ms), then the relevant reset, then the text."""
    delay = parse_retry_after(headers)
    if delay is None:
        delay = _reset_delay(parse_rate_headers(headers), kind)
    if delay is None:
        delay = _hinted_delay(message)
    return delay


#: Statuses of the completion endpoint that mean the URL or model is wrong for every job.
WRONG_ENDPOINT: Final = frozenset({404, 405, 501})


#: sends again of one request whose kept-alive connection closed unanswered (HTTPBackend.send)
MAX_RESENDS: Final = 3


def _closed_unanswered(exc: BaseException) -> bool:
    """Whether ``exc`` says the request never left: aiohttp could not write it because the
    connection was already closing (``Can not write request body``, caused by aiohttp's own
    ``ClientConnectionResetError`` from its writer's check of a closing transport). A server
    that read the request and then closed or reset the connection may have applied it, so that
    stays a failed attempt, retried (and counted) by the retry policy: aiohttp reports a reset
    while it awaits the answer as a ClientOSError too, but caused by the socket's own
    ConnectionResetError, which must not be sent again silently."""
    return isinstance(exc, aiohttp.ClientOSError) and isinstance(
        exc.__cause__, aiohttp.ClientConnectionResetError
    )


_LOADING: Final = re.compile(rb"\bloading\b", re.IGNORECASE)
_LOADING_SCAN: Final = 4096  # bytes of a 503's body searched for it


def _probe_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _text_of(raw)


def _model_ids(body: Any) -> tuple[str, ...] | None:
    """The ids of an OpenAI-shaped ``/models`` list (``{"data": [{"id": ...}]}``), or None."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        return None
    ids = tuple(m["id"] for m in data if isinstance(m, dict) and isinstance(m.get("id"), str))
    return ids or None


def status_error(status: int, message: str, headers: Headers) -> ErrorInfo:
    """The classification shared by both providers for statuses without a special meaning."""
    text = http_message(status, message)
    if status in (401, 403):
        return ErrorInfo("auth", text, retriable=False, fatal=True)
    if status == 408:  # the server gave up waiting for us: a timeout, worth another try
        return ErrorInfo("timeout", text, True, parse_retry_after(headers))
    if status == 409:  # a conflict with a concurrent request; the SDKs retry it
        # its own code, so that --retry-failed (which retries http_409) sends it again
        return ErrorInfo("http_409", text, True, parse_retry_after(headers))
    if status == 429:
        return ErrorInfo(
            "rate_limited", text, True, retry_delay(headers, kind=None, message=message)
        )
    if status >= 500:
        return ErrorInfo("http_5xx", text, True, parse_retry_after(headers))
    return ErrorInfo("http_4xx", text, retriable=False)


def apply_should_retry(info: ErrorInfo, headers: Headers) -> ErrorInfo:
    """``x-should-retry: true|false`` overrides the decision, except for fatal errors."""
    flag = headers.get("x-should-retry")
    if flag is None or info.fatal:
        return info
    if flag == "true" and not info.retriable:
        return replace(info, retriable=True)
    if flag == "false" and info.retriable:
        return replace(info, retriable=False)
    return info


_TRANSIENT_WORDS = ("overload", "rate_limit", "api_error", "server", "timeout", "unavailable")


def _transient(kind: str | None, code: str | None) -> bool:
    """Whether an in-body error is worth another try: no kind at all, a transient word, or an
    HTTP status code that would be retried (OpenRouter's mid-stream ``{"code": 502}``)."""
    if kind is None or any(w in kind for w in _TRANSIENT_WORDS):
        return True
    if code is None or not code.isdigit() or len(code) != 3:
        return False
    return code in ("408", "409", "429") or code.startswith("5")


def stream_error(err: Any) -> ErrorInfo:
    """An error event inside a 200 stream: retriable unless it says the request itself is bad."""
    etype, code, msg = error_fields({"error": err})
    kind = etype or code
    retriable = _transient(kind, code)
    text = f"error in stream: {kind}: {msg}" if kind else f"error in stream: {msg}"
    return ErrorInfo("stream_error", _short(text), retriable)


def body_error(err: Any, status: int) -> ErrorInfo:
    """An ``error`` object in a 2xx body: retriable unless it says the request itself is bad."""
    etype, code, msg = error_fields({"error": err})
    kind = etype or code
    retriable = _transient(kind, code)
    where = f"error in a {status} body"
    text = f"{where}: {kind}: {msg}" if kind else f"{where}: {msg}"
    return ErrorInfo("bad_response", _short(text), retriable)


#: aiohttp's words for a Content-Encoding it has no decoder for (br, zstd without their package)
_UNDECODABLE: Final = "Can not decode content-encoding"


def error_from_exception(exc: BaseException) -> ErrorInfo:
    """A transport failure (no complete response) as a retriable error."""
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError is one too
        return ErrorInfo("timeout", _short(f"timed out: {type(exc).__name__} {exc}"), True)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return ErrorInfo("connection", _short(f"response cut off: {exc}"), True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ErrorInfo("connection", _short(f"cannot connect: {exc}"), True)
    if isinstance(exc, aiohttp.ClientResponseError) and _UNDECODABLE in str(exc.message):
        # br or zstd sent though not asked for (aiohttp asks for them only when it can decode
        # them): every retry gets, and is billed for, an answer it cannot read either.
        return ErrorInfo(
            "bad_response",
            _short(f"the answer's Content-Encoding was not asked for: {exc.message}"),
            retriable=False,
        )
    return ErrorInfo("connection", _short(f"connection failed: {type(exc).__name__}: {exc}"), True)


# -- streaming ----------------------------------------------------------------------------------


class StreamParser:
    """Consumes SSE lines; subclasses assemble the provider's body. Timing lives here."""

    __slots__ = ("_held", "_last", "_t0", "done", "error", "itl_ms", "ttft_ms")

    #: the message for a stream that ended without its terminator
    unfinished = "stream ended before it was complete"

    def __init__(self, t0: float) -> None:
        self._t0 = t0
        self._last: float | None = None
        self._held: bytes | None = None
        self.ttft_ms: float | None = None
        self.itl_ms: list[float] = []
        self.done = False
        self.error: ErrorInfo | None = None

    def finished(self) -> bool:
        """Whether the stream said it was complete (its terminator, or what stands for it)."""
        return self.done

    def event(self, data: bytes) -> Any:
        """The JSON of an event's data, or :data:`HELD` while it is incomplete.

        SSE lets one event carry its data over several ``data:`` lines, joined with newlines.
        Servers send one line per event, so each line is parsed alone first; a line that does
        not parse is held and joined to the next, until the event's blank line
        (:meth:`end_event`) says it is whole. An event that never parses is a ``bad_response``.
        """
        held = self._held
        if held is not None:
            data = held + b"\n" + data
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            value = lossy_json(data)
            if value is NOT_JSON:
                if len(data) > MAX_HELD_EVENT:
                    return None
                self._held = data
                return HELD
        self._held = None
        return value

    def end_event(self) -> bool:
        """A blank line ended an event: True (an error) when its data never parsed."""
        if self._held is None:
            return False
        self._held = None
        self.error = ErrorInfo("bad_response", "invalid JSON in a stream event", True)
        return True

    def _content_at(self, now: float) -> None:
        """Record a chunk that carried generated content (only those count for TTFT/ITL)."""
        last = self._last
        if last is None:
            self.ttft_ms = (now - self._t0) * 1000.0
        else:
            self.itl_ms.append((now - last) * 1000.0)
        self._last = now

    def feed(self, line: bytes, now: float) -> bool:
        """Take one line (without its newline); True asks the reader to stop (an error)."""
        raise NotImplementedError

    def result(self) -> tuple[dict[str, Any], Usage | None]:
        """The assembled body and the normalised usage."""
        raise NotImplementedError


#: what a stream parser may raise on an event of an unexpected shape (a server's fault)
_MALFORMED: Final = (AttributeError, TypeError, KeyError, IndexError, ValueError)
#: what :func:`lossy_json` returns for data that is not JSON whatever its encoding
NOT_JSON: Any = object()


def lossy_json(data: bytes) -> Any:
    """JSON whose only fault is invalid UTF-8 or a lone surrogate escape, with U+FFFD for the
    bad bytes or escape; else :data:`NOT_JSON`. Servers that detokenise byte by byte split a
    multi-byte character (an emoji, CJK) across two answers or events: as raw bytes, or as
    half of a ``\\ud83d\\ude00`` pair from Python's ``json.dumps``, which accepts what orjson
    refuses. Rejecting the JSON threw the whole (billed) answer away, and a retry meets the same
    bytes."""
    text = data
    if not data.isascii():
        try:
            data.decode()
        except UnicodeDecodeError:
            text = data.decode("utf-8", "replace").encode()
    if data.find(b"\\u") >= 0:
        text = re.sub(_SURROGATES, _lone_to_fffd, text)
    if text == data:
        return NOT_JSON  # nothing to mend: the JSON itself is broken
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return NOT_JSON


#: an escaped backslash (skipped, so that ``\\\\ud800`` is not read as an escape), a surrogate
#: pair, or a lone surrogate escape
_SURROGATES = (
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"
)


def _lone_to_fffd(m: re.Match[bytes]) -> bytes:
    found = m.group()
    return b"\\ufffd" if len(found) == 6 else found


#: a UTF-8 byte order mark, which some servers put before a JSON body
BOM: Final = b"\xef\xbb\xbf"
#: what :meth:`StreamParser.event` returns for data that the next ``data:`` line may complete
HELD: Any = object()
#: the most an event's held data may grow to (one event, not the whole stream)
MAX_HELD_EVENT = 1 << 20


def sse_data(line: bytes) -> bytes | None:
    """The data of an SSE ``data:`` line; None for comments, ``event:`` lines, blanks and an
    empty ``data:`` (a keep-alive some proxies send: SSE dispatches no event for it)."""
    if line.startswith(b"data:"):
        return line[5:].strip() or None
    return None


async def read_sse(content: aiohttp.StreamReader, parser: StreamParser, cap: int) -> None:
    """Feed every line of an SSE body to ``parser``, stamping each with its arrival time.

    Reads whatever the socket has (not line by line) so that events that arrived together
    share a timestamp, and lines of any length work. A line is assembled from a list of pieces
    (linear, however long it grows) and the whole stream is capped at ``cap`` bytes: past it the
    parser gets a ``response_too_large`` error and reading stops.
    """
    parts: list[bytes] = []
    total = 0
    async for data in content.iter_any():
        now = perf_counter()
        if not total and data.startswith(BOM):  # SSE strips one; unstripped, it hid event 1
            data = data[len(BOM) :]
        total += len(data)
        if total > cap:
            parser.error = ErrorInfo("response_too_large", too_large(cap), retriable=False)
            return
        # ``bytes.find``, not ``in``: CPython 3.11's ``in`` first tries a bytes needle as a byte
        # value, and raises and clears a TypeError inside (about 1,800 instructions, 130 ns)
        # before it searches; this loop runs for every line of every streamed answer.
        if data.find(b"\n") < 0:
            parts.append(data)
            continue
        if parts:
            parts.append(data)
            data = b"".join(parts)
            parts.clear()
        *lines, rest = data.split(b"\n")
        if rest:
            parts.append(rest)
        if _feed_lines(parser, lines, now):
            return
    if parts and _feed_cr(parser, b"".join(parts), perf_counter()):
        return
    parser.end_event()


#: how an SSE body begins (after a byte order mark and blank lines); no JSON text does
_SSE_STARTS: Final = (b"data:", b"event:", b":", b"id:", b"retry:")


def _looks_like_sse(raw: bytes) -> bool:
    """Whether a body that is not labelled ``text/event-stream`` is an SSE stream."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    return raw.lstrip(b"\r\n").startswith(_SSE_STARTS)


def _feed_sse(parser: StreamParser, raw: bytes, now: float) -> None:
    """Feed a whole SSE body, already read, to ``parser`` (as :func:`read_sse` would)."""
    if raw.startswith(BOM):
        raw = raw[len(BOM) :]
    if not _feed_lines(parser, raw.split(b"\n"), now):
        parser.end_event()


def _feed_lines(parser: StreamParser, lines: list[bytes], now: float) -> bool:
    """Feed SSE lines (split at LF; one may end in CR, or hold a bare CR) to ``parser``, one
    chunk's worth at a time (:func:`read_sse`) or a whole body (:func:`_feed_sse`). True: the
    parser is done, read no more."""
    for line in lines:
        if not line:  # an event's end: only held data makes it more than a separator
            if parser._held is not None and parser.end_event():
                return True
        elif line.find(b"\r") >= 0:
            if _feed_cr(parser, line, now):
                return True
        elif parser.feed(line, now):
            return True
    return False


def _feed_cr(parser: StreamParser, text: bytes, now: float) -> bool:
    """Lines that may end in CRLF or a bare CR, which SSE allows beside LF. True: stop."""
    if text.endswith(b"\r"):
        text = text[:-1]
    for line in text.split(b"\r"):
        stop = parser.feed(line, now) if line else parser.end_event()
        if stop:
            return True
    return False


# -- the backend -------------------------------------------------------------------------------


class HTTPBackend:
    """Sends jobs to one chat endpoint; subclasses define the wire protocol."""

    __slots__ = (
        "_api_key",
        "_cap",
        "_config",
        "_guard",
        "_listed",
        "_model",
        "_models_url",
        "_params",
        "_session",
        "_stream",
        "_url",
        "capabilities",
    )

    path = ""
    usage_field = "usage"  # the body field holding token usage
    id_field = "id"  # the body field naming the response, when no request-id header is sent

    def __init__(
        self,
        session: aiohttp.ClientSession,
        config: RunConfig,
        *,
        base_url: str,
        api_key: str | None,
    ) -> None:
        base = base_url.rstrip("/")
        self._session = session
        self._config = config
        self._url = URL(base + self.path)
        self._models_url = URL(base + "/models")
        self._api_key = api_key
        self._guard = KeyGuard(_secret(api_key))
        self._cap = config.max_response_bytes
        self._model = config.model
        self._params = config.params
        self._stream = config.stream
        # The model ids the pre-flight's GET /models listed (None: not read), so that a 404
        # naming an unknown model can say which ones the server has.
        self._listed: tuple[str, ...] | None = None
        self.capabilities: Capabilities = capabilities_for(config)
        self.configure(config)

    # hooks ---------------------------------------------------------------------------------

    def configure(self, config: RunConfig) -> None:
        """Read the protocol's own settings from the config (called once, at construction)."""

    def build_body(
        self, job: Job, cache_key: str | None, *, prewarm: bool = False
    ) -> tuple[dict[str, Any], bool]:
        """The request body and whether it asks for a stream."""
        raise NotImplementedError

    def request_url(self, job: Job, stream: bool) -> URL:
        """Where to post ``job`` (one endpoint, unless the protocol names the model in the URL)."""
        return self._url

    # Each protocol sets these to its module's functions (``staticmethod``) and stream parser.
    def parse_usage(self, usage: Any, /) -> Usage | None:
        raise NotImplementedError

    def classify(self, status: int, body: Any, headers: Headers, /) -> ErrorInfo:
        raise NotImplementedError

    stream_class: ClassVar[type[StreamParser]]

    def stream_parser(self, t0: float) -> StreamParser:
        return self.stream_class(t0)

    def refused(self, error: ErrorInfo, said: bytes, sent: dict[str, Any]) -> ErrorInfo:
        """A 400/422 (``error``, whose body is ``said``) to the request ``sent``: the protocol
        may tell a refused field of its own from a bad job (see
        :data:`runner.retry.FIELD_REFUSED`). Called on those statuses only, never on success."""
        return error

    # the request ---------------------------------------------------------------------------

    async def send(
        self,
        job: Job,
        *,
        cache_key: str | None,
        on_first_byte: Callable[[], None] | None = None,
        prewarm: bool = False,
        resent: int = 0,
    ) -> Attempt:
        """Send one attempt of ``job``. Request failures come back as ``Attempt.error``.

        :param cache_key: the routing key for the provider's prompt cache, if any.
        :param on_first_byte: called once when a 2xx status line arrives.
        :param prewarm: write the cache without generating (Anthropic ``max_tokens: 0``).
        :param resent: how many times this request was sent again because its kept-alive
            connection was closed before any answer (see :func:`_closed_unanswered`).
        """
        body, stream = self.build_body(job, cache_key, prewarm=prewarm)
        data = orjson.dumps(body)
        status: int | None = None
        rate: RateInfo | None = None
        parser: StreamParser | None = None
        url = self.request_url(job, stream)
        t0 = perf_counter()
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                # Redirects are followed by hand: aiohttp would carry x-api-key to any host.
                async with self._session.post(url, data=data, allow_redirects=False) as resp:
                    status = resp.status
                    headers = resp.headers
                    if status in _REDIRECTS:
                        url, error = self._redirect(url, status, headers)
                        if error is None:
                            continue
                        latency = (perf_counter() - t0) * 1000.0
                        return Attempt(status=status, error=error, latency_ms=latency)
                    rate = parse_rate_headers(headers)
                    if 200 <= status < 300:
                        if on_first_byte is not None:
                            on_first_byte()
                        # A server may ignore "stream" (the JSON path then), or stream when
                        # not asked (some proxies always do): the content type decides.
                        if resp.content_type == "text/event-stream":
                            parser = self.stream_parser(t0)
                            try:
                                await read_sse(resp.content, parser, self._cap)
                                latency = (perf_counter() - t0) * 1000.0
                                return self._stream_attempt(parser, status, headers, rate, latency)
                            except _MALFORMED as exc:
                                # An event of a shape the parser did not expect: this attempt
                                # fails; the run goes on.
                                error = ErrorInfo(
                                    "bad_response",
                                    self._guard.text(_short(f"malformed stream event: {exc!r}"))
                                    or "",
                                    retriable=True,
                                )
                                latency = (perf_counter() - t0) * 1000.0
                                return Attempt(
                                    status=status, error=error, latency_ms=latency, rate=rate
                                )
                    raw = await read_capped(resp, self._cap)
                    latency = (perf_counter() - t0) * 1000.0
                    if 200 <= status < 300 and raw[:1] != b"{" and _looks_like_sse(raw):
                        return self._late_stream(raw, t0, status, headers, rate, latency)
                    break
            else:
                error = ErrorInfo("http_3xx", f"more than {MAX_REDIRECTS} redirects", False)
                latency = (perf_counter() - t0) * 1000.0
                return Attempt(status=status, error=error, latency_ms=latency)
        except BodyTooLarge as exc:
            error = ErrorInfo("response_too_large", str(exc), retriable=False)
            latency = (perf_counter() - t0) * 1000.0
            return Attempt(status=status, error=error, latency_ms=latency, rate=rate)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if status is None and resent < MAX_RESENDS and _closed_unanswered(exc):
                # The server closed a kept-alive connection before this request could be
                # written on it (llama-server closes after every streamed answer, without
                # Connection: close): never sent, so it is sent at once on another connection,
                # not an attempt of the job (no backoff, no retry counted; RFC 9112 9.3.1).
                # Another pooled connection may be closing too: a few times at most.
                return await self.send(
                    job,
                    cache_key=cache_key,
                    on_first_byte=on_first_byte,
                    prewarm=prewarm,
                    resent=resent + 1,
                )
            return Attempt(
                status=status,
                error=self._scrubbed(error_from_exception(exc)),
                latency_ms=(perf_counter() - t0) * 1000.0,
                ttft_ms=parser.ttft_ms if parser is not None else None,
                itl_ms=parser.itl_ms if parser is not None else None,
                rate=rate,
            )
        return self._json_attempt(status, headers, raw, rate, latency, body)

    def _late_stream(
        self,
        raw: bytes,
        t0: float,
        status: int,
        headers: Headers,
        rate: RateInfo | None,
        latency: float,
    ) -> Attempt:
        """An SSE stream sent under another content type (``application/json``,
        ``text/plain``: a proxy or shim that does not label it), read whole: the SDKs parse a
        stream whatever its label, and taking it for a broken JSON body threw the billed
        answer away, retry after retry. Its chunks arrived before this is known, so it has no
        TTFT or ITL."""
        parser = self.stream_parser(t0)
        try:
            _feed_sse(parser, raw, perf_counter())
        except _MALFORMED as exc:
            text = self._guard.text(_short(f"malformed stream event: {exc!r}")) or ""
            error = ErrorInfo("bad_response", text, retriable=True)
            return Attempt(status=status, error=error, latency_ms=latency, rate=rate)
        parser.ttft_ms = None
        parser.itl_ms = []
        return self._stream_attempt(parser, status, headers, rate, latency)

    def _endpoint_error(self, status: int, message: str) -> ErrorInfo:
        """404/405/501 from the completion endpoint: the URL (or model) is wrong for every job."""
        return ErrorInfo(
            "endpoint",
            f"POST {public_url(self._url)} answered {message}: this is not a chat endpoint for "
            "this provider; check the base URL (does it end in /v1?) and the model name",
            retriable=False,
            fatal=True,
        )

    def _unlisted_model(self, error: ErrorInfo, model: Any) -> ErrorInfo:
        """A 404 for a model the server's ``/models`` did not list (vLLM's and OpenAI's answer
        to a wrong ``--model``): say so and name the listed ones, instead of leaving the reader
        to suspect the base URL, which the pre-flight already found answering."""
        listed = self._listed
        if not listed or not isinstance(model, str) or model in listed:
            return error
        names = ", ".join(listed[:10]) + (
            f" (and {len(listed) - 10} more)" if len(listed) > 10 else ""
        )
        message = error.message.split(": this is not a chat endpoint", 1)[0]
        text = (
            f"{message}: the model {model!r} is not one this server lists at "
            f"{public_url(self._models_url)} ({names}); check --model (or the jobs' model)"
        )
        return replace(error, message=self._guard.text(_short(text)) or "")

    def _redirect(self, url: URL, status: int, headers: Headers) -> tuple[URL, ErrorInfo | None]:
        """Where a redirect may be followed to, or why it is not (an error for the attempt).

        Only 307/308 keep the POST body, and only a target within the base URL's origin may
        receive the credentials.
        """
        location = headers.get("location")
        target = url.join(URL(location)) if location else None
        if target is not None and status in (307, 308) and target.origin() == url.origin():
            return target, None
        where = "" if target is None else f" to {self._guard.text(str(target.origin()))}"
        why = (
            "another origin, where the API key must not be sent"
            if target is not None and target.origin() != url.origin()
            else "a redirect that drops the request body"
        )
        message = _short(
            f"HTTP {status}: redirected{where}: not followed ({why}); set base_url to the final URL"
        )
        return url, ErrorInfo("http_3xx", message, retriable=False)

    def _moved(self, headers: Headers) -> ErrorInfo | None:
        """The probe's redirect to another origin (``http://`` to ``https://``, another host),
        where no request of the run will follow it with the key: a setup error naming where it
        points. It read as "a body that is not JSON: this looks like a web server"."""
        location = headers.get("location")
        if not location:
            return None
        try:
            target = self._models_url.join(URL(location))
        except ValueError:
            return None
        if target.origin() == self._models_url.origin():
            return None
        where = self._guard.text(public_url(str(target.origin()))) or ""
        return ErrorInfo(
            "endpoint",
            _short(
                f"GET {public_url(self._models_url)} redirects to {where}: requests are not "
                "sent to another origin, where the API key would go too; set the base URL "
                "to the one it redirects to"
            ),
            retriable=False,
        )

    def _scrubbed(self, info: ErrorInfo) -> ErrorInfo:
        if self._api_key is None:
            return info
        message = scrub(info.message, self._api_key)
        return info if message == info.message else replace(info, message=message)

    def _request_id(self, headers: Headers, body: Any) -> str | None:
        rid = headers.get("x-request-id") or headers.get("request-id")
        if rid is None and isinstance(body, dict):
            bid = body.get(self.id_field)
            rid = bid if isinstance(bid, str) else None
        return self._guard.text(rid)

    def _json_attempt(
        self,
        status: int,
        headers: Headers,
        raw: bytes,
        rate: RateInfo | None,
        latency: float,
        sent: dict[str, Any],
    ) -> Attempt:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
            if raw.startswith(BOM):  # JSON parsers may ignore one (RFC 8259 section 8.1)
                raw = raw[len(BOM) :]
                try:
                    body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    pass
            if body is None and (lossy := lossy_json(raw)) is not NOT_JSON:
                body, raw = lossy, orjson.dumps(lossy)  # the results file stays valid UTF-8
        if body is not None:
            # What reaches the results file: one line, no key (the same objects when clean).
            raw, body = self._guard.clean(raw, body)
        if 200 <= status < 300:
            if not isinstance(body, dict):
                error = ErrorInfo("bad_response", _short(f"invalid JSON in a {status} body"), True)
                return Attempt(status=status, error=error, latency_ms=latency, rate=rate)
            err = body.get("error")
            if not err and body.get("object") == "error":
                err = body  # vLLM's and FastChat's ErrorResponse, sent by some with a 200
            if err and not body.get("choices") and not body.get("content"):
                # A 200 that carries an error and no answer (some gateways send it beside an
                # empty "choices"): a failed attempt, never an answer.
                return Attempt(
                    status=status,
                    body=body,
                    raw=raw,
                    request_id=self._request_id(headers, None),
                    error=self._scrubbed(body_error(err, status)),
                    latency_ms=latency,
                    rate=rate,
                )
            return Attempt(
                status=status,
                body=body,
                raw=raw,
                usage=self.parse_usage(body.get(self.usage_field)),
                request_id=self._request_id(headers, body),
                latency_ms=latency,
                rate=rate,
            )
        if body is None:
            # scrubbed before classify() shortens it, so no fragment of a key survives the cut
            detail: Any = scrub(_text_of(raw), self._api_key)
        else:
            detail = body
        error = self._scrubbed(self.classify(status, detail, headers))
        if status in WRONG_ENDPOINT:
            error = self._endpoint_error(status, error.message)
            if status == 404:
                error = self._unlisted_model(error, sent.get("model"))
        elif status == 400 or status == 422:
            error = self.refused(error, raw, sent)
        return Attempt(
            status=status,
            body=body,
            raw=raw if isinstance(body, dict) else None,
            request_id=self._request_id(headers, None),
            error=error,
            latency_ms=latency,
            rate=rate,
        )

    def _stream_attempt(
        self,
        parser: StreamParser,
        status: int,
        headers: Headers,
        rate: RateInfo | None,
        latency: float,
    ) -> Attempt:
        error = parser.error
        if error is None and not parser.finished():
            error = ErrorInfo("connection", parser.unfinished, retriable=True)
        if error is not None:
            return Attempt(
                status=status,
                error=self._scrubbed(error),
                latency_ms=latency,
                ttft_ms=parser.ttft_ms,
                itl_ms=parser.itl_ms,
                request_id=self._request_id(headers, None),
                rate=rate,
            )
        body, usage = parser.result()
        body, raw = self._guard.scrub_body(body)
        return Attempt(
            status=status,
            body=body,
            raw=raw,
            usage=usage,
            request_id=self._request_id(headers, body),
            latency_ms=latency,
            ttft_ms=parser.ttft_ms,
            itl_ms=parser.itl_ms,
            rate=rate,
        )

    async def _chat_endpoint_answers(self, limits: aiohttp.ClientTimeout) -> bool:
        """Whether the completion URL exists, asked with an empty (invalid, unbilled) request:
        a chat endpoint refuses ``{}`` with a 4xx of its own; a wrong URL gives 404, 405 or
        501, or the web page the ``/models`` miss gave."""
        if not self.path:  # the protocol names the model in the URL (Gemini): nothing to ask
            return False
        try:
            async with self._session.post(
                self._url, data=b"{}", timeout=limits, allow_redirects=False
            ) as resp:
                return (
                    resp.status not in WRONG_ENDPOINT
                    and resp.status not in _REDIRECTS
                    and resp.content_type != "text/html"
                )
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    @property
    def listed_models(self) -> tuple[str, ...] | None:
        """The model ids the probe's ``GET /models`` listed (None: none read)."""
        return self._listed

    async def probe(self) -> ErrorInfo | None:
        """A cheap pre-flight: ``GET /models`` catches a wrong key or an unreachable URL.

        Reported: an auth failure, a transport failure, and an answer that is HTML or not JSON
        at all (a web page, not an API: likely a wrong base URL). A JSON 404 from servers without
        ``/models`` or a transient 429 or 5xx says nothing about the setup.
        """
        timeout = aiohttp.ClientTimeout(
            total=min(self._config.timeout, PROBE_TIMEOUT_S),
            sock_connect=self._config.connect_timeout,
        )
        try:
            async with self._session.get(
                self._models_url, timeout=timeout, allow_redirects=False
            ) as resp:
                status = resp.status
                raw = await read_capped(resp, self._cap)
                headers = resp.headers
                ctype = resp.content_type
        except BodyTooLarge:
            return None  # an endless or enormous /models says nothing about the setup
        except aiohttp.ClientConnectorCertificateError as exc:
            # Not transient: an untrusted or mismatched certificate does not fix itself, so
            # this is a setup error (exit 2), not "unreachable, run again later" (exit 75).
            return ErrorInfo(
                "endpoint",
                _short(
                    f"the TLS certificate of {public_url(self._models_url)} was not accepted "
                    f"({exc.certificate_error}); if the server's CA is not a public one, "
                    "point SSL_CERT_FILE at its CA bundle"
                ),
                retriable=False,
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            return self._scrubbed(error_from_exception(exc))
        if status in _REDIRECTS:
            moved = self._moved(headers)
            if moved is not None:
                return moved
        if status not in (401, 403):
            if status == 503 and _LOADING.search(raw[:_LOADING_SCAN]):
                # a server loading its model (llama-server's "Loading model", a Hugging Face
                # endpoint's "is currently loading"): wait for it. Another 503 (a provider
                # overloaded, a proxy without a healthy backend) is transient as before.
                said = self._scrubbed(self.classify(status, _probe_body(raw), headers)).message
                return ErrorInfo(LOADING_CODE, said, retriable=True)
            if status == 429 or (status >= 500 and status != 501):
                return None  # transient: says nothing about the URL
            what = "an HTML page" if ctype == "text/html" else None
            if what is None:
                try:
                    listing = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    what = "a body that is not JSON"
                else:
                    if status == 200 and self.path:  # Gemini names models/..., in the URL
                        # server text, printed in a warning and an error: key-guarded
                        ids = _model_ids(listing)
                        guard = self._guard.text
                        self._listed = None if ids is None else tuple(guard(i) or "" for i in ids)
            if what is None:
                return None
            if status == 404 and await self._chat_endpoint_answers(timeout):
                return None  # a server without /models (an Express or Go shim) that chats
            return ErrorInfo(
                "endpoint",
                f"GET {public_url(self._models_url)} answered HTTP {status} with {what}: this "
                "looks like a web server, not the provider's API; check the base URL (does it end "
                "in /v1?)",
                retriable=False,
            )
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = scrub(_text_of(raw), self._api_key)
        return self._scrubbed(self.classify(status, body, headers))
