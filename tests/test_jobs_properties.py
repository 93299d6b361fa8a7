"""Property tests of the jobs reader: whatever the mix of good, garbage and blank lines, every
non-blank line yields exactly one Job or BadLine, at its own line number, and good lines keep
their ids and their order."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.jobs import read_jobs
from runner.models import BadLine, Job

# a byte that can start no JSON value, so the line is invalid JSON whatever follows it
_garbage_bytes = st.binary(max_size=40).map(lambda b: b"#" + b.replace(b"\n", b" "))
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
_non_objects = (_json_scalars | st.lists(_json_scalars, max_size=3)).map(orjson.dumps)
# objects that never carry an id of either shape
_id_less = st.dictionaries(
    st.text(max_size=8).filter(lambda k: k not in ("id", "custom_id", "body")),
    _json_scalars,
    max_size=3,
).map(orjson.dumps)
_bad_utf8 = st.binary(max_size=10).map(
    lambda b: b'{"id": "u", "query": "\xff' + b.replace(b"\n", b" ") + b'"}'
)
_bad_types = st.sampled_from(
    [
        b'{"id": 1, "query": "q"}',
        b'{"id": "t1", "query": 2}',
        b'{"id": "t2", "query": "q", "params": []}',
        b'{"custom_id": "t3", "body": {"messages": "x"}}',
    ]
)
_garbage = st.one_of(_garbage_bytes, _non_objects, _id_less, _bad_utf8, _bad_types)
_blank = st.sampled_from([b"", b" ", b"\t", b"  \t "])


@st.composite
def _good(draw: st.DrawFn, n: int) -> tuple[str, bytes]:
    custom_id = f"good-{n}-" + draw(st.text(max_size=6))
    query = draw(st.text(max_size=30))
    if draw(st.booleans()):
        line: dict[str, Any] = {"id": custom_id, "query": query}
        if draw(st.booleans()):
            line["params"] = {"max_tokens": draw(st.integers(1, 4096))}
    else:
        body = {"messages": [{"role": "user", "content": query}]}
        line = {"custom_id": custom_id, "body": body}
    return custom_id, orjson.dumps(line)


@st.composite
def _files(draw: st.DrawFn) -> tuple[list[tuple[str, bytes]], bytes]:
    """A list of (kind, line) and the file's bytes, with mixed line endings and maybe a BOM."""
    kinds = draw(st.lists(st.sampled_from(["good", "garbage", "blank"]), max_size=30))
    lines: list[tuple[str, bytes]] = []
    for n, kind in enumerate(kinds):
        if kind == "good":
            custom_id, raw = draw(_good(n))
            lines.append((custom_id, raw))
        else:
            lines.append((kind, draw(_garbage if kind == "garbage" else _blank)))
    endings = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
    data = b"".join(raw + end for (_, raw), end in zip(lines, endings, strict=True))
    if draw(st.booleans()) and lines:
        data = data[: -len(endings[-1])]  # no newline after the last line
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return lines, data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_files())
def test_every_non_blank_line_yields_exactly_one_item(
    file: tuple[list[tuple[str, bytes]], bytes],
) -> None:
    lines, data = file
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.jsonl"
        path.write_bytes(data)
        items = list(read_jobs(path, contexts={}))

    expected = [(n, kind) for n, (kind, _) in enumerate(lines, 1) if kind != "blank"]
    assert [item.line for item in items] == [n for n, _ in expected]
    for item, (_, kind) in zip(items, expected, strict=True):
        if kind == "garbage":
            assert isinstance(item, BadLine)
            assert item.message.startswith(f"{path}:{item.line}: ")
        else:
            assert isinstance(item, Job)
            assert item.custom_id == kind
    good_ids = [kind for _, kind in expected if kind != "garbage"]
    assert [item.custom_id for item in items if isinstance(item, Job)] == good_ids


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=20))
def test_only_the_first_line_with_an_id_is_a_job(ids: list[str]) -> None:
    data = b"".join(orjson.dumps({"id": i, "query": "q"}) + b"\n" for i in ids)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jobs.jsonl"
        path.write_bytes(data)
        items = list(read_jobs(path, contexts={}))
    first_seen = [n for n, i in enumerate(ids) if i not in ids[:n]]
    assert [n for n, item in enumerate(items) if isinstance(item, Job)] == first_seen
    # a duplicate's error is keyed by its line, never by the id the real job owns
    assert [item.custom_id for item in items] == [
        i if n in first_seen else None for n, i in enumerate(ids)
    ]
