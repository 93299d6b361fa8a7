"""Jobs-reader behaviour that surviving mutants of ``runner/jobs.py`` showed untested.

Each test names the behaviour; docs/TESTING.md lists the mutants it was written against.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_jobs import only_bad, only_job, write

from runner.errors import InputError
from runner.jobs import load_contexts, parse_job, read_jobs
from runner.models import Job


def test_parse_job_reads_both_shapes_like_the_file_reader(tmp_path: Path) -> None:
    contexts = load_contexts(
        write(tmp_path / "c.jsonl", {"cache_id": "legal", "system": "You are a lawyer."})
    )
    compact = {"id": "q1", "cache_id": "legal", "query": "Valid?", "metadata": {"k": 1}}
    batch = {
        "custom_id": "b1",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    for obj in (compact, batch):
        from_file = only_job(write(tmp_path / "j.jsonl", obj), contexts)
        parsed = parse_job(obj, line=1, contexts=contexts)
        assert isinstance(parsed, Job)
        assert {f: getattr(parsed, f) for f in Job.__slots__} == {
            f: getattr(from_file, f) for f in Job.__slots__
        }
    assert parse_job(compact, line=1, contexts=contexts).cache_id == "legal"
    assert parse_job(batch, line=1).custom_id == "b1"


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (["not", "an", "object"], "src:7: line: expected a JSON object, got an array"),
        ({"query": "q"}, "src:7: id: missing (compact shape needs id"),
        ({"body": {}}, "src:7: custom_id: "),
        ({"custom_id": "b", "query": "q"}, "src:7: body: "),  # custom_id alone means Batch
        ({"id": "x", "cache_id": "c", "query": "q"}, "src:7: cache_id: unknown cache_id"),
        ({"id": "x", "query": "q", "metadata": [1]}, "src:7: metadata: must be an object"),
    ],
)
def test_parse_job_names_where_line_and_field_of_a_bad_job(obj: object, message: str) -> None:
    with pytest.raises(InputError) as info:
        parse_job(obj, line=7, where="src")  # type: ignore[arg-type]
    assert str(info.value).startswith(message), str(info.value)


def test_a_batch_line_keeps_its_cache_id(tmp_path: Path) -> None:
    line = {
        "custom_id": "b1",
        "cache_id": "docs",
        "body": {
            "model": "m",
            "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}],
        },
    }
    job = only_job(write(tmp_path / "j.jsonl", line))
    assert job.cache_id == "docs"
    assert job.group is not None and job.group.startswith("docs:")


def test_metadata_is_carried_and_must_be_an_object(tmp_path: Path) -> None:
    job = only_job(write(tmp_path / "j.jsonl", {"id": "a", "query": "q", "metadata": {"k": 1}}))
    assert job.metadata == {"k": 1}
    bad = only_bad(write(tmp_path / "j.jsonl", {"id": "a", "query": "q", "metadata": "x"}))
    assert bad.field == "metadata"
    assert "must be an object, got a string" in bad.message, bad.message


def test_max_tokens_of_one_is_allowed_and_zero_is_not(tmp_path: Path) -> None:
    job = only_job(
        write(tmp_path / "j.jsonl", {"id": "a", "query": "q", "params": {"max_tokens": 1}})
    )
    assert job.max_tokens == 1
    bad = only_bad(
        write(tmp_path / "j.jsonl", {"id": "a", "query": "q", "params": {"max_tokens": 0}})
    )
    assert bad.field == "params.max_tokens"


def test_a_context_may_have_an_empty_messages_list(tmp_path: Path) -> None:
    path = write(tmp_path / "c.jsonl", {"cache_id": "c", "system": "S", "messages": []})
    assert load_contexts(path)["c"].messages == ({"role": "system", "content": "S"},)


def test_unknown_cache_id_with_a_contexts_file_says_it_is_not_in_it(tmp_path: Path) -> None:
    contexts = load_contexts(write(tmp_path / "c.jsonl", {"cache_id": "c", "system": "S"}))
    bad = only_bad(
        write(tmp_path / "j.jsonl", {"id": "x", "cache_id": "d", "query": "q"}), contexts
    )
    assert "unknown cache_id 'd' (not in the contexts file)" in bad.message, bad.message


def test_a_last_line_at_exactly_the_limit_without_a_newline_is_read(tmp_path: Path) -> None:
    line = b'{"id": "a", "query": "q"}'
    path = tmp_path / "j.jsonl"
    path.write_bytes(line)
    (job,) = read_jobs(path, contexts={}, max_line_bytes=len(line))
    assert isinstance(job, Job) and job.custom_id == "a"
