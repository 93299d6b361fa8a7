"""Tests of the jobs and contexts readers: both shapes, every malformed-line case, group keys."""

from __future__ import annotations

import importlib.util
import os
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.errors import InputError
from runner.jobs import load_contexts, prefix_digest, read_jobs
from runner.models import BadLine, Context, Job

SYSTEM = "You are an expert contract analyst."


def write(path: Path, *lines: Any, end: bytes = b"\n") -> Path:
    """Write lines (objects are JSON-encoded, bytes and str are written as they are)."""
    out = []
    for line in lines:
        if isinstance(line, bytes):
            out.append(line)
        elif isinstance(line, str):
            out.append(line.encode())
        else:
            out.append(orjson.dumps(line))
    path.write_bytes(end.join(out) + (end if lines else b""))
    return path


def read(path: Path, contexts: Mapping[str, Context] | None = None, **kw: Any) -> list[Any]:
    return list(read_jobs(path, contexts=contexts or {}, **kw))


def only_bad(path: Path, contexts: Mapping[str, Context] | None = None, **kw: Any) -> BadLine:
    (item,) = read(path, contexts, **kw)
    assert isinstance(item, BadLine), item
    return item


def only_job(path: Path, contexts: Mapping[str, Context] | None = None) -> Job:
    (item,) = read(path, contexts)
    assert isinstance(item, Job), item
    return item


@pytest.fixture
def contexts(tmp_path: Path) -> dict[str, Context]:
    few_shot = [
        {"role": "user", "content": "Is clause 1 valid?"},
        {"role": "assistant", "content": "Yes."},
    ]
    path = write(
        tmp_path / "contexts.jsonl",
        {"cache_id": "legal", "system": SYSTEM, "messages": few_shot},
        {"cache_id": "plain", "system": "Be brief."},
    )
    return load_contexts(path)


# --- contexts -------------------------------------------------------------------------------


def test_load_contexts_builds_messages_digest_and_chars(contexts: dict[str, Context]) -> None:
    legal = contexts["legal"]
    assert legal.messages == (
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Is clause 1 valid?"},
        {"role": "assistant", "content": "Yes."},
    )
    assert legal.chars == len(SYSTEM) + len("Is clause 1 valid?") + len("Yes.")
    assert len(legal.digest) == 16
    int(legal.digest, 16)
    assert legal.digest == prefix_digest(legal.messages)
    assert contexts["plain"].messages == ({"role": "system", "content": "Be brief."},)
    assert contexts["plain"].digest != legal.digest


def test_context_digest_ignores_key_order(tmp_path: Path) -> None:
    a = write(
        tmp_path / "a.jsonl", '{"cache_id": "c", "messages": [{"role": "user", "content": "x"}]}'
    )
    b = write(
        tmp_path / "b.jsonl", '{"messages": [{"content": "x", "role": "user"}], "cache_id": "c"}'
    )
    assert load_contexts(a)["c"].digest == load_contexts(b)["c"].digest


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("not json", ":2: invalid JSON"),
        ("[1, 2]", ":2: line: expected a JSON object, got an array"),
        ('{"system": "s"}', ":2: cache_id: missing"),
        ('{"cache_id": 7, "system": "s"}', ":2: cache_id: must be a non-empty string, got 7"),
        ('{"cache_id": "", "system": "s"}', ":2: cache_id: must be a non-empty string"),
        ('{"cache_id": "b"}', ":2: system: a context needs system or messages"),
        ('{"cache_id": "b", "system": 3}', ":2: system: must be a string, got 3"),
        ('{"cache_id": "b", "sytem": "s"}', ":2: sytem: unknown field"),
        ('{"cache_id": "b", "messages": {}}', ":2: messages: must be a list of messages"),
        (
            '{"cache_id": "b", "messages": [{"role": "judge", "content": "x"}]}',
            ":2: messages[0].role: must be one of",
        ),
        (
            '{"cache_id": "a", "system": "again"}',
            ":2: cache_id: duplicate cache_id 'a' (first on line 1)",
        ),
    ],
)
def test_bad_context_line_raises_with_file_line_and_field(
    tmp_path: Path, line: str, expected: str
) -> None:
    path = write(tmp_path / "contexts.jsonl", {"cache_id": "a", "system": "s"}, line)
    with pytest.raises(InputError) as info:
        load_contexts(path)
    assert str(info.value).startswith(f"{path}{expected}")


def test_context_line_over_the_limit_raises(tmp_path: Path) -> None:
    line = orjson.dumps({"cache_id": "a", "system": "s" * 200})
    path = write(tmp_path / "contexts.jsonl", line)
    with pytest.raises(InputError, match=rf":1: line: {len(line)} bytes, over the limit of 100"):
        load_contexts(path, max_line_bytes=100)


def test_contexts_tolerate_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "contexts.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"cache_id": "a", "system": "s"}\r\n\r\n  \r\n'
        b'{"cache_id": "b", "system": "t"}'
    )
    assert sorted(load_contexts(path)) == ["a", "b"]


def test_unopenable_contexts_file_raises(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot open"):
        load_contexts(tmp_path / "missing.jsonl")
    with pytest.raises(InputError, match="cannot open"):
        load_contexts(tmp_path)


# --- compact shape --------------------------------------------------------------------------


def test_compact_job_with_context(tmp_path: Path, contexts: dict[str, Context]) -> None:
    line = {
        "id": "q-1",
        "cache_id": "legal",
        "query": "Analyze Section 4.2.",
        "model": "gpt-x",
        "params": {"temperature": 0.3, "max_tokens": 512},
    }
    job = only_job(write(tmp_path / "jobs.jsonl", line), contexts)
    legal = contexts["legal"]
    assert job.custom_id == "q-1"
    assert job.line == 1
    assert job.messages == (*legal.messages, {"role": "user", "content": "Analyze Section 4.2."})
    assert job.prefix_len == 3
    assert job.group == f"legal:{legal.digest}"
    assert job.cache_id == "legal"
    assert job.model == "gpt-x"
    assert job.params == {"temperature": 0.3, "max_tokens": 512}
    assert job.max_tokens == 512
    assert job.prefix_chars == legal.chars
    assert job.prompt_chars == legal.chars + len("Analyze Section 4.2.")


def test_compact_job_with_messages_after_context(
    tmp_path: Path, contexts: dict[str, Context]
) -> None:
    msgs = [
        {"role": "user", "content": "First?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": [{"type": "text", "text": "And?"}, {"type": "image_url"}]},
    ]
    line = {"id": "q", "cache_id": "plain", "messages": msgs}
    job = only_job(write(tmp_path / "jobs.jsonl", line), contexts)
    assert job.messages == (*contexts["plain"].messages, *msgs)
    assert job.prefix_len == 1  # only the context is static; the job's own turns vary
    assert job.prompt_chars == len("Be brief.") + len("First?Yes.And?")
    assert job.params == {}
    assert job.model is None


def test_compact_query_without_context_has_no_group(tmp_path: Path) -> None:
    job = only_job(write(tmp_path / "jobs.jsonl", {"id": "q", "query": "hello"}))
    assert job.messages == ({"role": "user", "content": "hello"},)
    assert (job.prefix_len, job.group, job.cache_id, job.prefix_chars) == (0, None, None, 0)
    assert job.prompt_chars == 5


def test_compact_messages_without_context_are_auto_grouped(tmp_path: Path) -> None:
    prefix = [{"role": "system", "content": "sys"}, {"role": "user", "content": "u1"}]
    prefix += [{"role": "assistant", "content": "a1"}]
    jobs = read(
        write(
            tmp_path / "jobs.jsonl",
            {"id": "a", "messages": [*prefix, {"role": "user", "content": "x"}]},
            {"id": "b", "messages": [*prefix, {"role": "user", "content": "yy"}]},
        )
    )
    assert [j.group for j in jobs] == [f"auto:{prefix_digest(prefix)}"] * 2
    assert [j.prefix_len for j in jobs] == [3, 3]
    assert [j.prefix_chars for j in jobs] == [7, 7]
    assert [j.cache_id for j in jobs] == [None, None]


# --- OpenAI Batch shape ---------------------------------------------------------------------


def batch_line(custom_id: str, *messages: tuple[str, str], **extra: Any) -> dict[str, Any]:
    body = {"model": "gpt-4.1-mini", "messages": [{"role": r, "content": c} for r, c in messages]}
    body.update(extra.pop("body", {}))
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": body,
        **extra,
    }


def test_batch_job_fields(tmp_path: Path) -> None:
    line = batch_line(
        "req-1",
        ("system", "S" * 10),
        ("user", "u1"),
        ("assistant", "a1"),
        ("user", "last"),
        body={"temperature": 0, "max_completion_tokens": 64},
    )
    job = only_job(write(tmp_path / "batch.jsonl", line))
    assert job.custom_id == "req-1"
    assert job.model == "gpt-4.1-mini"
    assert job.params == {"temperature": 0, "max_completion_tokens": 64}
    assert job.max_tokens == 64
    assert job.messages == tuple(line["body"]["messages"])
    assert job.prefix_len == 3
    assert job.prefix_chars == 14
    assert job.prompt_chars == 18
    assert job.group == f"auto:{prefix_digest(job.messages[:3])}"
    assert job.cache_id is None


def test_batch_groups(tmp_path: Path) -> None:
    path = write(
        tmp_path / "batch.jsonl",
        batch_line("a", ("system", "S"), ("user", "1"), cache_id="kb"),
        batch_line("b", ("system", "S"), ("user", "2"), cache_id="kb"),
        batch_line("c", ("system", "S2"), ("user", "3"), cache_id="kb"),  # edited prefix
        batch_line("d", ("system", "S"), ("user", "4")),  # same prefix, no cache_id
        batch_line("e", ("user", "5")),  # no prefix at all
        {"custom_id": "f", "body": {"messages": [{"role": "system", "content": "only"}]}},
    )
    a, b, c, d, e, f = read(path)
    digest = prefix_digest([{"role": "system", "content": "S"}])
    assert a.group == b.group == f"kb:{digest}"
    assert c.group not in (None, a.group) and c.group.startswith("kb:")
    assert d.group == f"auto:{digest}"
    assert (e.group, e.prefix_len) == (None, 0)
    assert (f.group, f.prefix_len, f.model, f.params) == (None, 0, None, {})


def test_batch_without_method_and_url_and_short_url(tmp_path: Path) -> None:
    line = {
        "custom_id": "x",
        "url": "/chat/completions",
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
    assert only_job(write(tmp_path / "b.jsonl", line)).custom_id == "x"


def test_batch_group_matches_compact_group_for_the_same_prefix(
    tmp_path: Path, contexts: dict[str, Context]
) -> None:
    # one cache_id and one content give one group, whichever shape the job came in
    body = {"messages": [*contexts["plain"].messages, {"role": "user", "content": "q"}]}
    path = write(
        tmp_path / "jobs.jsonl",
        {"custom_id": "b", "cache_id": "plain", "body": body},
        {"id": "c", "cache_id": "plain", "query": "q"},
    )
    b, c = read(path, contexts)
    assert b.group == c.group


def test_tool_call_message_with_null_content(tmp_path: Path) -> None:
    msgs = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t1", "type": "function"}]},
        {"role": "tool", "tool_call_id": "t1", "content": "sunny"},
        {"role": "user", "content": "so?"},
    ]
    job = only_job(write(tmp_path / "j.jsonl", {"custom_id": "t", "body": {"messages": msgs}}))
    assert job.prompt_chars == len("weather?sunnyso?")
    assert job.prefix_len == 3


# --- group keys across context edits --------------------------------------------------------


def test_edited_context_is_a_new_group(tmp_path: Path) -> None:
    jobs = write(tmp_path / "jobs.jsonl", {"id": "q", "cache_id": "c", "query": "?"})
    v1 = write(tmp_path / "v1.jsonl", {"cache_id": "c", "system": "Contract text v1."})
    v1_again = write(tmp_path / "v1b.jsonl", {"system": "Contract text v1.", "cache_id": "c"})
    v2 = write(tmp_path / "v2.jsonl", {"cache_id": "c", "system": "Contract text v2."})
    g1 = only_job(jobs, load_contexts(v1)).group
    assert g1 == only_job(jobs, load_contexts(v1_again)).group
    assert g1 != only_job(jobs, load_contexts(v2)).group


# --- malformed lines ------------------------------------------------------------------------

GOOD = {"id": "ok", "query": "fine"}
MSGS = '[{"role": "user", "content": "c"}]'


@pytest.mark.parametrize(
    ("line", "custom_id", "field", "problem"),
    [
        ("{not json", None, None, "invalid JSON at column 2: "),
        (
            '{"id": "x", "query": "a"',
            None,
            None,
            "invalid JSON at the end of the line: unexpected end",
        ),
        (b'{"id": "x", "query": "\xff\xfe"}', None, None, "invalid UTF-8 at byte 23"),
        ("[1, 2, 3]", None, None, "expected a JSON object, got an array"),
        ("42", None, None, "expected a JSON object, got a number"),
        ('"text"', None, None, "expected a JSON object, got a string"),
        ("null", None, None, "expected a JSON object, got null"),
        ('{"query": "q"}', None, "id", "missing (compact shape needs id"),
        ('{"id": 5, "query": "q"}', None, "id", "must be a non-empty string, got 5"),
        ('{"id": "", "query": "q"}', None, "id", "must be a non-empty string"),
        ('{"id": "ok", "query": "q"}', None, "id", "duplicate id 'ok'"),  # keyed by its line
        ('{"id": "x"}', "x", "query", "missing: give query"),
        ('{"id": "x", "query": 3}', "x", "query", "must be a string, got a number"),
        (
            '{"id": "x", "query": "q", "messages": [{"role": "user", "content": "m"}]}',
            "x",
            "query",
            "either query or messages",
        ),
        ('{"id": "x", "query": "q", "params": [1]}', "x", "params", "must be an object"),
        (
            '{"id": "x", "query": "q", "params": {"max_tokens": 0}}',
            "x",
            "params.max_tokens",
            "positive",
        ),
        (
            '{"id": "x", "query": "q", "params": {"max_tokens": 1.5}}',
            "x",
            "params.max_tokens",
            "positive",
        ),
        (
            '{"id": "x", "query": "q", "params": {"max_tokens": true}}',
            "x",
            "params.max_tokens",
            "positive",
        ),
        (
            '{"id": "x", "query": "q", "params": {"max_completion_tokens": "9"}}',
            "x",
            "params.max_completion_tokens",
            "positive",
        ),
        ('{"id": "x", "query": "q", "params": {"model": "m"}}', "x", "params.model", "not allowed"),
        ('{"id": "x", "query": "q", "model": 3}', "x", "model", "non-empty string"),
        (
            '{"id": "x", "query": "q", "cache_id": "nope"}',
            "x",
            "cache_id",
            "unknown cache_id 'nope'",
        ),
        ('{"id": "x", "query": "q", "cache_id": 1}', "x", "cache_id", "must be a non-empty string"),
        ('{"id": "x", "messages": []}', "x", "messages", "must not be empty"),
        ('{"id": "x", "messages": "hi"}', "x", "messages", "must be a list of messages"),
        ('{"id": "x", "messages": ["hi"]}', "x", "messages[0]", "must be an object, got a string"),
        ('{"id": "x", "messages": [{"content": "c"}]}', "x", "messages[0].role", "got null"),
        (
            '{"id": "x", "messages": [{"role": ["user"], "content": "c"}]}',
            "x",
            "messages[0].role",
            "one of",
        ),
        ('{"id": "x", "messages": [{"role": "user"}]}', "x", "messages[0].content", "missing"),
        (
            '{"id": "x", "messages": [{"role": "user", "content": 1}]}',
            "x",
            "messages[0].content",
            "got a number",
        ),
        (
            '{"id": "x", "messages": [{"role": "assistant", "content": null}]}',
            "x",
            "messages[0].content",
            "missing",
        ),
        (
            '{"id": "x", "messages": [{"role": "user", "content": ["t"]}]}',
            "x",
            "messages[0].content[0]",
            "must be an object",
        ),
        ('{"custom_id": "b"}', "b", "body", "missing"),
        ('{"custom_id": "b", "body": []}', "b", "body", "must be an object"),
        ('{"custom_id": "b", "body": {}}', "b", "body.messages", "missing"),
        ('{"custom_id": 1, "body": {}}', None, "custom_id", "must be a non-empty string"),
        ('{"body": {"messages": []}}', None, "custom_id", "missing"),
        ('{"custom_id": "b", "method": "GET", "body": {}}', "b", "method", "must be POST"),
        (
            '{"custom_id": "b", "url": "/v1/embeddings", "body": {}}',
            "b",
            "url",
            "/v1/chat/completions",
        ),
        ('{"custom_id": "b", "url": ["x"], "body": {}}', "b", "url", "/v1/chat/completions"),
        (
            '{"custom_id": "b", "body": {"messages": [{"role": "bot", "content": "c"}]}}',
            "b",
            "body.messages[0].role",
            "one of",
        ),
        (
            '{"custom_id": "b", "body": {"model": "", "messages": ' + MSGS + "}}",
            "b",
            "body.model",
            "non-empty string",
        ),
        (
            '{"custom_id": "b", "body": {"max_tokens": -1, "messages": ' + MSGS + "}}",
            "b",
            "body.max_tokens",
            "positive integer",
        ),
        (
            '{"custom_id": "b", "cache_id": "", "body": {"messages": ' + MSGS + "}}",
            "b",
            "cache_id",
            "non-empty string",
        ),
    ],
)
def test_malformed_line(
    tmp_path: Path, line: str | bytes, custom_id: str | None, field: str | None, problem: str
) -> None:
    path = write(tmp_path / "jobs.jsonl", GOOD, line, {"id": "after", "query": "still read"})
    first, bad, last = read(path)
    assert isinstance(first, Job) and isinstance(last, Job)
    assert last.custom_id == "after"
    assert isinstance(bad, BadLine)
    assert (bad.line, bad.custom_id, bad.field) == (2, custom_id, field)
    prefix = f"{path}:2: {field}: " if field else f"{path}:2: "
    assert bad.message.startswith(prefix), bad.message
    assert problem in bad.message, bad.message


def test_unknown_cache_id_without_contexts_file_says_so(tmp_path: Path) -> None:
    bad = only_bad(write(tmp_path / "j.jsonl", {"id": "x", "cache_id": "c", "query": "q"}))
    assert "no contexts file was given" in bad.message


def test_first_line_claims_its_id_even_when_bad(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"id": "x", "query": 1}, {"id": "x", "query": "q"})
    first, second = read(path)
    assert isinstance(first, BadLine) and first.field == "query"
    assert isinstance(second, BadLine) and "duplicate" in second.message


def test_ids_are_shared_between_shapes(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"id": "x", "query": "q"}, batch_line("x", ("user", "u")))
    assert [type(i) for i in read(path)] == [Job, BadLine]


def test_long_values_are_shortened_in_messages(tmp_path: Path) -> None:
    bad = only_bad(write(tmp_path / "j.jsonl", {"id": "x", "query": "q", "model": ["m" * 500]}))
    assert bad.message.endswith("...")
    assert len(bad.message) < len(str(tmp_path)) + 120


# --- line handling --------------------------------------------------------------------------


def test_line_numbers_count_blank_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "j.jsonl",
        "",
        {"id": "a", "query": "q"},
        "   ",
        "\t",
        "oops",
        "",
        {"id": "b", "query": "q"},
    )
    items = read(path)
    assert [(type(i), i.line) for i in items] == [(Job, 2), (BadLine, 5), (Job, 7)]


def test_crlf_and_bom_are_tolerated(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "query": "q"}\r\n\r\n{"id": "b", "query": "q"}\r\n')
    items = read(path)
    assert [(i.custom_id, i.line) for i in items] == [("a", 1), ("b", 3)]
    assert all(isinstance(i, Job) for i in items)


def test_bom_only_counts_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a", "query": "q"}\n\xef\xbb\xbf{"id": "b", "query": "q"}\n')
    assert [type(i) for i in read(path)] == [Job, BadLine]


def test_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a", "query": "q"}\n{"id": "b", "query": "q"}')
    assert [i.custom_id for i in read(path)] == ["a", "b"]


def test_empty_and_blank_files_yield_nothing(tmp_path: Path) -> None:
    assert read(write(tmp_path / "empty.jsonl")) == []
    assert read(write(tmp_path / "blank.jsonl", "", " ", "\r")) == []
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf")
    assert read(bom) == []


def test_not_jsonl_yields_a_bad_line_per_line(tmp_path: Path) -> None:
    pretty = orjson.dumps(
        [{"id": "a", "query": "q"}, {"id": "b", "query": "q"}], option=orjson.OPT_INDENT_2
    ).decode()
    csv = "id,query\na,what is 1\nb,what is 2\n"
    for text in (pretty, csv):
        path = write(tmp_path / "input.jsonl", text.strip())
        items = read(path)
        assert [i.line for i in items] == list(range(1, text.strip().count("\n") + 2))
        assert all(isinstance(i, BadLine) and i.field is None for i in items)


def test_line_over_the_limit_is_skipped_and_reading_goes_on(tmp_path: Path) -> None:
    big = orjson.dumps({"id": "big", "query": "x" * 1000})
    path = write(tmp_path / "j.jsonl", {"id": "a", "query": "q"}, big, {"id": "b", "query": "q"})
    a, bad, b = read(path, max_line_bytes=200)
    assert (a.custom_id, b.custom_id, b.line) == ("a", "b", 3)
    assert isinstance(bad, BadLine)
    assert (bad.line, bad.custom_id, bad.field) == (2, None, "line")
    assert (
        bad.message
        == f"{path}:2: line: {len(big):,} bytes, over the limit of 200 bytes (max_line_bytes)"
    )


def test_line_at_exactly_the_limit_is_read(tmp_path: Path) -> None:
    line = orjson.dumps({"id": "a", "query": "q"})
    path = write(tmp_path / "j.jsonl", line, line.replace(b'"a"', b'"b"'))
    assert [type(i) for i in read(path, max_line_bytes=len(line))] == [Job, Job]
    assert [type(i) for i in read(path, max_line_bytes=len(line) - 1)] == [BadLine, BadLine]


def test_over_long_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    path.write_bytes(b'{"id": "a", "query": "q"}\n' + b"x" * 300)
    a, bad = read(path, max_line_bytes=100)
    assert isinstance(a, Job)
    assert isinstance(bad, BadLine) and "300 bytes" in bad.message


def test_huge_line_is_never_held_whole(tmp_path: Path) -> None:
    size = 8 << 20
    path = tmp_path / "j.jsonl"
    with path.open("wb") as fh:
        fh.write(b'{"id": "big", "query": "')
        fh.write(b"y" * size)
        fh.write(b'"}\n{"id": "after", "query": "q"}\n')
    tracemalloc.start()
    try:
        bad, after = read(path, max_line_bytes=1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(bad, BadLine) and isinstance(after, Job)
    assert peak < 3 << 20  # the 8 MiB line was streamed past, not loaded


def test_reader_is_lazy(tmp_path: Path) -> None:
    path = write(tmp_path / "j.jsonl", {"id": "a", "query": "q"}, {"id": "b", "query": "q"})
    it = read_jobs(path, contexts={})
    first = next(it)
    assert first.custom_id == "a"
    with path.open("ab") as fh:  # a line appended after reading began is still seen
        fh.write(b'{"id": "c", "query": "q"}\n')
    assert [i.custom_id for i in it] == ["b", "c"]


def test_unopenable_jobs_file_raises_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing\.jsonl: cannot open: No such file"):
        read_jobs(tmp_path / "missing.jsonl", contexts={})
    with pytest.raises(InputError, match="cannot open"):
        read_jobs(tmp_path, contexts={})


# --- the demo inputs ------------------------------------------------------------------------

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_demo_inputs_are_valid_and_reproducible(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    for name in ("contexts.jsonl", "jobs.jsonl", "batch.jsonl"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name

    contexts = load_contexts(EXAMPLES / "contexts.jsonl")
    assert len(contexts) == 6
    assert all(1500 <= len(c.messages[0]["content"].split()) <= 2500 for c in contexts.values())
    jobs = read(EXAMPLES / "jobs.jsonl", contexts)
    assert len(jobs) >= 300 and all(isinstance(j, Job) for j in jobs)
    assert {j.group for j in jobs} == {f"{c.cache_id}:{c.digest}" for c in contexts.values()}
    assert any(j.params for j in jobs)
    batch = read(EXAMPLES / "batch.jsonl")
    assert len(batch) == 20 and all(isinstance(j, Job) for j in batch)
    assert sum(os.path.getsize(EXAMPLES / n) for n in ("contexts.jsonl", "jobs.jsonl")) < 1 << 20


def test_contexts_for_reads_the_configs_contexts_with_its_line_limit(tmp_path: Path) -> None:
    # The one way a run, validate, a batch and bench load contexts from a config.
    from runner.config import RunConfig
    from runner.jobs import contexts_for

    path = write(tmp_path / "contexts.jsonl", {"cache_id": "c", "system": "x" * 200})
    assert contexts_for(RunConfig()) == {}
    assert sorted(contexts_for(RunConfig(contexts=path))) == ["c"]
    with pytest.raises(InputError):
        contexts_for(RunConfig(contexts=path, max_line_bytes=100))


def test_count_lines_counts_a_last_line_without_its_newline(tmp_path: Path) -> None:
    # The one newline counter (the progress total, `runner status`); chunk-boundary safe.
    from runner.jobs import count_lines

    path = tmp_path / "f.jsonl"
    for data, want in [
        (b"", 0),
        (b"a\n", 1),
        (b"a\nb", 2),
        (b"a\n" * 300_000 + b"z", 300_001),  # spans the 1 MiB reads
        (b"x" * (1 << 20) + b"\n", 1),  # the newline alone in the second read
    ]:
        path.write_bytes(data)
        assert count_lines(path) == want, data[:10]
