"""Streaming readers for the jobs file and the contexts file (docs/FORMATS.md, "Input").

The jobs file is read in binary, one line at a time, so a file of millions of jobs costs the
memory of one line plus one small integer per id (for the duplicate check). A line longer than
the limit is skipped in chunks without ever being held whole. Each non-blank line yields exactly
one :class:`~runner.models.Job` or one :class:`~runner.models.BadLine`; only a file that cannot be
opened raises :class:`~runner.errors.InputError`.

Two shapes are detected per line: the OpenAI Batch shape (``custom_id`` + ``body``) and the
compact shape (``id`` + ``query`` or ``messages``, with an optional ``cache_id`` naming a context
from the contexts file). Cache groups are keyed by ``cache_id`` plus a digest of the static
prefix, so an edited context is always a new group.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Mapping, Sequence
from hashlib import blake2b
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

import orjson

from .config import DEFAULT_MAX_LINE_BYTES, RunConfig
from .errors import InputError
from .fieldtypos import COMPACT_KEYS, compact_field_problem, token_param_problem
from .idset import IdSet
from .models import BadLine, Context, Job, Message

__all__ = [
    "BATCH_URLS",
    "DEFAULT_MAX_LINE_BYTES",
    "ROLES",
    "contexts_for",
    "count_lines",
    "id_field",
    "load_contexts",
    "parse_job",
    "prefix_digest",
    "read_jobs",
]

ROLES: Final = frozenset({"system", "user", "assistant", "tool", "developer"})
BATCH_URLS: Final = frozenset({"/v1/chat/completions", "/chat/completions"})

_BOM: Final = b"\xef\xbb\xbf"
_SKIP_CHUNK: Final = 1 << 16  # an over-long line is consumed in pieces this size
_NO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType({})  # shared, so it must be read-only
_TOKEN_PARAMS: Final = ("max_tokens", "max_completion_tokens")
_CONTEXT_KEYS: Final = frozenset({"cache_id", "system", "messages"})
_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class _Bad(Exception):
    """One problem on one line; the readers turn it into a BadLine or an InputError."""

    __slots__ = ("field", "problem")

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


def prefix_digest(messages: Sequence[Message]) -> str:
    """16 hex characters identifying a static prefix: key order does not matter."""
    canonical = orjson.dumps(messages, option=orjson.OPT_SORT_KEYS)
    return blake2b(canonical, digest_size=8).hexdigest()


def count_lines(path: Path) -> int:
    """Lines of a file, a last one without its newline included: a fast newline count, no
    parsing (the progress total of a jobs file, the result lines ``runner status`` shows).

    :raises OSError: the file cannot be read.
    """
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def count_jobs(path: Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> int:
    """Lines of a jobs file that each get one result line: every line :func:`read_jobs` does
    not skip (a blank or whitespace-only line is no job; an over-long one is a bad line). Reads
    the lines without parsing them: the jobs a run stopped early never reached.

    :raises InputError: the file cannot be opened.
    :raises OSError: it cannot be read.
    """
    n = 0
    with _open(path) as fh:
        for _, raw in _iter_lines(fh, max_line_bytes):
            if isinstance(raw, int) or raw.strip():
                n += 1
    return n


def contexts_for(config: RunConfig) -> dict[str, Context]:
    """The contexts of ``config.contexts`` (read with its line limit), or none without one."""
    if not config.contexts:
        return {}
    return load_contexts(config.contexts, max_line_bytes=config.max_line_bytes)


def load_contexts(
    path: Path, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> dict[str, Context]:
    """Read every context of a contexts file.

    Lines are ``{"cache_id": str, "system": str, "messages": [...]}`` (``system`` and
    ``messages`` optional, at least one given). Contexts are few and shared by many jobs, so any
    bad line rejects the whole file.

    :param path: the contexts JSONL file.
    :param max_line_bytes: longest accepted line, in bytes.
    :raises InputError: ``"FILE:LINE: field: problem"`` for the first bad line, or when the file
        cannot be opened.
    """
    where = str(path)
    contexts: dict[str, Context] = {}
    first_line: dict[str, int] = {}
    with _open(path) as fh:
        for lineno, raw in _iter_lines(fh, max_line_bytes):
            if isinstance(raw, int):
                raise InputError(f"{where}:{lineno}: {_too_long(raw, max_line_bytes)}")
            try:
                obj = _loads(raw)
            except _JSONDecodeError as exc:
                if not raw.strip():
                    continue
                raise InputError(f"{where}:{lineno}: {_decode_problem(raw, exc)}") from None
            try:
                ctx = _context(obj)
                if ctx.cache_id in first_line:
                    raise _Bad(
                        "cache_id",
                        f"duplicate cache_id {ctx.cache_id!r} (first on line "
                        f"{first_line[ctx.cache_id]})",
                    )
            except _Bad as bad:
                raise InputError(f"{where}:{lineno}: {bad.field}: {bad.problem}") from None
            contexts[ctx.cache_id] = ctx
            first_line[ctx.cache_id] = lineno
    return contexts


def _context(obj: Any) -> Context:
    if type(obj) is not dict:
        raise _Bad("line", f"expected a JSON object, got {_json_type(obj)}")
    unknown = obj.keys() - _CONTEXT_KEYS
    if unknown:
        # contexts are few and hand-written: a typo such as "sytem" must not silently vanish
        raise _Bad(min(unknown), "unknown field (expected cache_id, system, messages)")
    cache_id = obj.get("cache_id")
    if type(cache_id) is not str or not cache_id:
        raise _Bad("cache_id", _missing_or("a non-empty string", cache_id))
    system = obj.get("system")
    msgs = obj.get("messages")
    messages: list[Message] = []
    if system is not None:
        if type(system) is not str:
            raise _Bad("system", _missing_or("a string", system))
        messages.append({"role": "system", "content": system})
    if msgs is not None:
        _check_messages(msgs, "messages", allow_empty=True)
        messages.extend(msgs)
    if not messages:
        raise _Bad("system", "a context needs system or messages")
    chars = _check_messages(messages, "messages", allow_empty=False)[0]
    return Context(
        cache_id=cache_id,
        messages=tuple(messages),
        digest=prefix_digest(messages),
        chars=chars,
    )


def read_jobs(
    path: Path,
    *,
    contexts: Mapping[str, Context],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    keep: Callable[[dict[str, Any], str, bool], bool] | None = None,
) -> Iterator[Job | BadLine]:
    """Read the jobs file lazily: one Job or BadLine per non-blank line, in file order.

    The file is checked when this is called; the lines are read as the iterator is consumed.
    ``BadLine.field`` is ``None`` exactly when the line is not a JSON object at all (invalid
    UTF-8, invalid JSON, an array or scalar), which lets ``validate`` recognise a file that is
    not JSONL. An id is claimed by the first line that carries it, even if that line is bad
    otherwise, so no later line can take it over: a later line with the same id is a BadLine
    whose ``custom_id`` is ``None`` (its message names the id), so its error result can never be
    mistaken for the real job's (see docs/FORMATS.md, "Bad lines and duplicate ids").

    :param path: the jobs JSONL file.
    :param contexts: contexts by ``cache_id``, from :func:`load_contexts`.
    :param max_line_bytes: longer lines become a BadLine (field ``"line"``), read in chunks.
    :param keep: ``keep(obj, custom_id, batch_shape)`` is asked once a line's id is claimed;
        False drops the line unbuilt (a shard skipping another shard's jobs, see
        :mod:`runner.shards`). Every line's id is still claimed, so duplicates are found alike.
    :raises InputError: only when the file cannot be opened.
    """
    _open(path).close()  # fail now, at the call, not at the first next()
    return _read_jobs(path, contexts, max_line_bytes, keep)


def _read_jobs(
    path: Path,
    contexts: Mapping[str, Context],
    max_line_bytes: int,
    keep: Callable[[dict[str, Any], str, bool], bool] | None = None,
) -> Iterator[Job | BadLine]:
    where = str(path)
    # hash() of each id rather than the id itself, in sorted shards: 8 bytes an id
    seen = IdSet()
    with _open(path) as fh:
        for lineno, raw in _iter_lines(fh, max_line_bytes):
            if isinstance(raw, int):
                problem = _too_long(raw, max_line_bytes)
                yield BadLine(lineno, None, "line", f"{where}:{lineno}: {problem}")
                continue
            try:
                obj = _loads(raw)
            except _JSONDecodeError as exc:
                # blank lines land here too: checking only on failure keeps the hot path lean
                if raw.strip():
                    problem = _decode_problem(raw, exc)
                    yield BadLine(lineno, None, None, f"{where}:{lineno}: {problem}")
                continue
            if type(obj) is not dict:
                problem = f"expected a JSON object, got {_json_type(obj)}"
                yield BadLine(lineno, None, None, f"{where}:{lineno}: {problem}")
                continue
            batch = "custom_id" in obj or "body" in obj  # id_field(), inlined: once per line
            custom_id: str | None = None
            try:
                custom_id = _claim_id(obj, "custom_id" if batch else "id", seen)
                if keep is not None and not keep(obj, custom_id, batch):
                    continue
                if batch:
                    yield _batch_job(obj, custom_id, lineno)
                else:
                    yield _compact_job(obj, custom_id, lineno, contexts)
            except _Bad as bad:
                # A duplicate (or unreadable) id is not this line's: its result is keyed by line.
                message = f"{where}:{lineno}: {bad.field}: {bad.problem}"
                yield BadLine(lineno, custom_id, bad.field, message)


def id_field(obj: Mapping[str, Any]) -> str:
    """The field that holds a job line's id: ``custom_id`` in the OpenAI Batch shape (a line
    with ``custom_id`` or ``body``), else ``id`` (docs/FORMATS.md)."""
    return "custom_id" if "custom_id" in obj or "body" in obj else "id"


def _claim_id(obj: dict[str, Any], field: str, seen: IdSet) -> str:
    value = obj.get(field)
    if type(value) is not str or not value:
        if value is None and field == "id":
            raise _Bad("id", "missing (compact shape needs id; OpenAI Batch shape needs custom_id)")
        raise _Bad(field, _missing_or("a non-empty string", value))
    if not seen.add(hash(value)):
        raise _Bad(field, f"duplicate id {_show(value)}: an earlier line already uses it")
    return value


def parse_job(
    obj: Mapping[str, Any],
    *,
    line: int = 1,
    contexts: Mapping[str, Context] | None = None,
    where: str = "job",
) -> Job:
    """One job from a plain dict in either input shape (what a line of the jobs file holds).

    ``{"id": "q1", "query": "..."}``, ``{"id": ..., "messages": [...], "cache_id": ...,
    "params": {...}, "metadata": {...}}`` or the OpenAI Batch ``{"custom_id": ..., "body": ...}``.

    :param line: the number reported in errors and used to order ``--order input`` output.
    :param contexts: contexts by ``cache_id``, for compact jobs that name one.
    :raises InputError: ``"WHERE:LINE: field: problem"`` for an invalid job.
    """
    if not isinstance(obj, dict):
        raise InputError(f"{where}:{line}: line: expected a JSON object, got {_json_type(obj)}")
    field = id_field(obj)
    try:
        custom_id = _claim_id(obj, field, IdSet())
        if field == "custom_id":
            return _batch_job(obj, custom_id, line)
        return _compact_job(obj, custom_id, line, contexts or {})
    except _Bad as bad:
        raise InputError(f"{where}:{line}: {bad.field}: {bad.problem}") from None


def _metadata(obj: dict[str, Any]) -> Mapping[str, Any] | None:
    """The job's ``metadata`` object, copied verbatim into its result line."""
    value = obj.get("metadata")
    if value is None or type(value) is dict:
        return value
    raise _Bad("metadata", f"must be an object, got {_json_type(value)}")


def _compact_job(
    obj: dict[str, Any], custom_id: str, lineno: int, contexts: Mapping[str, Context]
) -> Job:
    if not obj.keys() <= COMPACT_KEYS:  # a typo would be ignored, and the job sent without it
        for key in obj.keys() - COMPACT_KEYS:
            if (problem := compact_field_problem(key)) is not None:
                raise _Bad(key, problem)
    model = _model(obj.get("model"), "model")
    params = obj.get("params")
    if params is None:
        params = _NO_PARAMS
    elif type(params) is not dict:
        raise _Bad("params", f"must be an object, got {_json_type(params)}")
    else:
        _check_params(params, "params.")
        for key in ("model", "messages"):
            if key in params:
                raise _Bad(f"params.{key}", f"not allowed in params: give {key} on the job")
    cache_id = obj.get("cache_id")
    context: Context | None = None
    if cache_id is not None:
        if type(cache_id) is not str or not cache_id:
            raise _Bad("cache_id", _missing_or("a non-empty string", cache_id))
        context = contexts.get(cache_id)
        if context is None:
            known = "not in the contexts file" if contexts else "no contexts file was given"
            raise _Bad("cache_id", f"unknown cache_id {_show(cache_id)} ({known})")

    query = obj.get("query")
    msgs = obj.get("messages")
    last_user = own_prefix_chars = 0
    if query is not None:
        if msgs is not None:
            raise _Bad("query", "give either query or messages, not both")
        if type(query) is not str:
            raise _Bad("query", f"must be a string, got {_json_type(query)}")
        own: tuple[Message, ...] = ({"role": "user", "content": query},)
        own_chars = len(query)
    elif msgs is not None:
        own_chars, last_user, own_prefix_chars = _check_messages(msgs, "messages")
        own = tuple(msgs)
    else:
        raise _Bad("query", "missing: give query (a string) or messages (a list)")

    if context is not None:
        return Job(
            custom_id=custom_id,
            line=lineno,
            messages=context.messages + own,
            prefix_len=len(context.messages),
            group=f"{cache_id}:{context.digest}",  # reuse the digest: never rehash per job
            cache_id=cache_id,
            model=model,
            params=params,
            prompt_chars=context.chars + own_chars,
            prefix_chars=context.chars,
            metadata=_metadata(obj),
        )
    # without a context, a job's own messages still have a static prefix worth grouping
    return Job(
        custom_id=custom_id,
        line=lineno,
        messages=own,
        prefix_len=last_user,
        group=f"auto:{prefix_digest(own[:last_user])}" if last_user else None,
        cache_id=None,
        model=model,
        params=params,
        prompt_chars=own_chars,
        prefix_chars=own_prefix_chars,
        metadata=_metadata(obj),
    )


def _batch_job(obj: dict[str, Any], custom_id: str, lineno: int) -> Job:
    method = obj.get("method")
    if method is not None and method != "POST":
        raise _Bad("method", f"must be POST, got {_show(method)}")
    url = obj.get("url")
    if url is not None and (type(url) is not str or url not in BATCH_URLS):
        raise _Bad("url", f"must be /v1/chat/completions, got {_show(url)}")
    body = obj.get("body")
    if type(body) is not dict:
        raise _Bad("body", _missing_or("an object", body))
    msgs = body.get("messages")
    if msgs is None:
        raise _Bad("body.messages", "missing")
    chars, prefix_len, prefix_chars = _check_messages(msgs, "body.messages")
    model = _model(body.get("model"), "body.model")
    _check_params(body, "body.")
    cache_id = obj.get("cache_id")
    if cache_id is not None and (type(cache_id) is not str or not cache_id):
        raise _Bad("cache_id", _missing_or("a non-empty string", cache_id))
    messages = tuple(msgs)
    if cache_id is not None:
        group: str | None = f"{cache_id}:{prefix_digest(messages[:prefix_len])}"
    elif prefix_len:
        group = f"auto:{prefix_digest(messages[:prefix_len])}"
    else:
        group = None
    params = {k: v for k, v in body.items() if k != "model" and k != "messages"}
    return Job(
        custom_id=custom_id,
        line=lineno,
        messages=messages,
        prefix_len=prefix_len,
        group=group,
        cache_id=cache_id,
        model=model,
        params=params or _NO_PARAMS,
        prompt_chars=chars,
        prefix_chars=prefix_chars,
        metadata=_metadata(obj),
    )


def _check_messages(value: Any, field: str, *, allow_empty: bool = False) -> tuple[int, int, int]:
    """Validate a message list in one pass.

    :returns: (content characters, index of the last user message or 0, characters before it).
    """
    if type(value) is not list:
        raise _Bad(field, f"must be a list of messages, got {_json_type(value)}")
    if not value and not allow_empty:
        raise _Bad(field, "must not be empty")
    chars = last_user = prefix_chars = 0
    for i, msg in enumerate(value):
        if type(msg) is not dict:
            raise _Bad(f"{field}[{i}]", f"must be an object, got {_json_type(msg)}")
        role = msg.get("role")
        if type(role) is not str or role not in ROLES:
            raise _Bad(f"{field}[{i}].role", f"must be one of {_ROLE_LIST}, got {_show(role)}")
        if role == "user":
            last_user, prefix_chars = i, chars
        content = msg.get("content")
        if type(content) is str:
            chars += len(content)
        elif type(content) is list:
            chars += _parts_chars(content, f"{field}[{i}].content")
        elif not (content is None and role == "assistant" and msg.get("tool_calls")):
            got = "missing" if content is None else f"got {_json_type(content)}"
            raise _Bad(f"{field}[{i}].content", f"must be a string or a list of parts, {got}")
    return chars, last_user, prefix_chars


def _parts_chars(parts: list[Any], field: str) -> int:
    chars = 0
    for j, part in enumerate(parts):
        if type(part) is not dict:
            raise _Bad(f"{field}[{j}]", f"must be an object, got {_json_type(part)}")
        text = part.get("text")
        if type(text) is str:  # images and audio parts carry no countable text
            chars += len(text)
    return chars


def _check_params(params: dict[str, Any], prefix: str) -> None:
    budget = False
    for key in _TOKEN_PARAMS:
        v = params.get(key)
        # bool is an int subclass: `true` is not a token budget
        if v is not None and (type(v) is not int or v < 1):
            raise _Bad(f"{prefix}{key}", f"must be a positive integer, got {_show(v)}")
        budget = budget or v is not None
    if not budget:  # a misspelt budget (max_token) would be sent as is, the reply unbounded
        for key in params:
            if (problem := token_param_problem(key)) is not None:
                raise _Bad(f"{prefix}{key}", problem)


def _model(value: Any, field: str) -> str | None:
    if value is not None and (type(value) is not str or not value):
        raise _Bad(field, f"must be a non-empty string, got {_show(value)}")
    return value


def _open(path: Path) -> io.BufferedReader:
    try:
        return open(path, "rb")  # the callers close it in a with block
    except OSError as exc:
        raise InputError(f"{path}: cannot open: {exc.strerror or exc}") from exc


def _iter_lines(fh: io.BufferedReader, limit: int) -> Iterator[tuple[int, bytes | int]]:
    """Yield (line number, line bytes), or (line number, size) for a line over ``limit`` bytes."""
    if fh.peek(3)[:3] == _BOM:
        fh.read(3)
    readline = fh.readline
    lineno = 0
    while True:
        # limit + 1: a line of exactly `limit` bytes still ends with its newline
        raw = readline(limit + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > limit and raw[-1] != 0x0A:
            size = len(raw)
            while True:
                chunk = readline(_SKIP_CHUNK)
                size += len(chunk)
                if not chunk:
                    break
                if chunk[-1] == 0x0A:
                    size -= 1  # the size of the line, not counting its newline
                    break
            yield lineno, size
        else:
            yield lineno, raw


_ROLE_LIST: Final = "/".join(sorted(ROLES))


def _too_long(size: int, limit: int) -> str:
    return f"line: {size:,} bytes, over the limit of {limit:,} bytes (max_line_bytes)"


def _decode_problem(raw: bytes, exc: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"invalid UTF-8 at byte {bad.start + 1}"
    # orjson says "problem: line L column C (char N)"; its "line" would read as the file's line
    problem, sep, where = str(exc).rpartition(": line ")
    char = where.rpartition("(char ")[2].rstrip(")")
    if not (sep and char.isdigit()):
        return f"invalid JSON: {exc}"
    if int(char) >= len(raw.rstrip()):
        return f"invalid JSON at the end of the line: {problem}"
    return f"invalid JSON at column {int(char) + 1}: {problem}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _show(value: Any) -> str:
    """A short rendering of a user's value for an error message."""
    text = orjson.dumps(value).decode() if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _missing_or(expected: str, value: Any) -> str:
    return "missing" if value is None else f"must be {expected}, got {_show(value)}"
