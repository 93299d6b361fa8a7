"""A shard skips other shards' lines before building them, with the same assignment as before."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

import runner.jobs
from runner.jobs import load_contexts, read_jobs
from runner.models import BadLine, Job
from runner.shards import ShardPicker, ShardSpec, shard_of

MAX_LINE = 4096


def _line(kind: str, i: int, rnd: random.Random) -> bytes:
    """One input line of ``kind``: valid jobs of every shape and every kind of bad line."""
    jid = f"j{i}"
    g = f"c{rnd.randrange(7)}"
    user = {"role": "user", "content": f"u{i}"}
    lines: dict[str, Any] = {
        "query": {"id": jid, "query": f"q{i}"},
        "query_params": {"id": jid, "query": "q", "params": {"max_tokens": 5}},
        "query_bad_params": {"id": jid, "query": "q", "params": {"max_tokens": 0}},
        "ctx": {"id": jid, "cache_id": g, "query": f"q{i}"},
        "ctx_messages": {"id": jid, "cache_id": g, "messages": [user]},
        "ctx_bad_params": {"id": jid, "cache_id": g, "query": "q", "params": "x"},
        "ctx_no_query": {"id": jid, "cache_id": g},
        "ctx_unknown": {"id": jid, "cache_id": "nope", "query": "q"},
        "ctx_not_str": {"id": jid, "cache_id": 5, "query": "q"},
        "ctx_empty": {"id": jid, "cache_id": "", "query": "q"},
        "ctx_null": {"id": jid, "cache_id": None, "query": "q"},
        "auto_group": {
            "id": jid,
            "messages": [
                {"role": "system", "content": f"sys {rnd.randrange(5)}"},
                {"role": "user", "content": "shared"},
                {"role": "assistant", "content": "ok"},
                user,
            ],
        },
        "one_message": {"id": jid, "messages": [user]},
        "messages_null": {"id": jid, "messages": None, "query": "q"},
        "query_and_messages": {"id": jid, "query": "q", "messages": [user]},
        "messages_bad": {"id": jid, "messages": [{"role": "robot", "content": "x"}]},
        "batch": {"custom_id": jid, "body": {"messages": [user]}},
        "batch_prefix": {
            "custom_id": jid,
            "body": {"messages": [{"role": "system", "content": "s"}, user]},
        },
        "batch_cache": {"custom_id": jid, "cache_id": g, "body": {"messages": [user]}},
        "batch_bad": {"custom_id": jid, "body": {"messages": "no"}},
        "duplicate": {"id": f"j{max(i - 3, 0)}", "query": "again"},
        "no_id": {"query": "q"},
        "id_not_str": {"id": 7, "query": "q"},
    }
    if kind == "not_json":
        return b"{not json\n"
    if kind == "array":
        return b"[1, 2]\n"
    if kind == "too_long":
        return orjson.dumps({"id": jid, "query": "x" * MAX_LINE}) + b"\n"
    if kind == "blank":
        return b"\n"
    return orjson.dumps(lines[kind]) + b"\n"


KINDS = [
    *(
        "query query_params query_bad_params ctx ctx_messages ctx_bad_params ctx_no_query "
        "ctx_unknown ctx_not_str ctx_empty ctx_null auto_group one_message messages_null "
        "query_and_messages messages_bad batch batch_prefix batch_cache batch_bad duplicate "
        "no_id id_not_str"
    ).split(),
    "not_json",
    "array",
    "too_long",
    "blank",
]


def _write(d: Path, n: int = 1500, seed: int = 13) -> tuple[Path, Path]:
    rnd = random.Random(seed)
    ctx = d / "ctx.jsonl"
    ctx.write_bytes(
        b"".join(
            orjson.dumps({"cache_id": f"c{g}", "system": f"context {g}"}) + b"\n" for g in range(7)
        )
    )
    jobs = d / "jobs.jsonl"
    jobs.write_bytes(b"".join(_line(rnd.choice(KINDS), i, rnd) for i in range(n)))
    return jobs, ctx


def _shard(jobs: Path, contexts: Any, spec: ShardSpec) -> list[Job | BadLine]:
    pick = ShardPicker(spec, contexts)
    items = read_jobs(jobs, contexts=contexts, max_line_bytes=MAX_LINE, keep=pick.maybe)
    return list(pick.filter(items))


@pytest.mark.parametrize("seed", [13, 14])
def test_picking_before_building_keeps_every_item_in_its_shard(tmp_path: Path, seed: int) -> None:
    jobs, ctx = _write(tmp_path, seed=seed)
    contexts = load_contexts(ctx)
    everything = list(read_jobs(jobs, contexts=contexts, max_line_bytes=MAX_LINE))
    assert {type(x) for x in everything} == {Job, BadLine}
    kinds = {x.field for x in everything if isinstance(x, BadLine)}
    assert {"id", "params.max_tokens", "cache_id", "query", "line", None} <= kinds
    for n in (1, 2, 3, 4, 7):
        got: list[Job | BadLine] = []
        for k in range(n):
            part = _shard(jobs, contexts, ShardSpec(k, n))
            # the very items (equal Jobs and BadLines, in file order) the old filter kept
            assert part == [x for x in everything if shard_of(x, n) == k], (k, n)
            got += part
        assert sorted(x.line for x in got) == [x.line for x in everything]


def test_another_shards_jobs_are_never_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(2000):
            fh.write(orjson.dumps({"id": f"q-{i}", "query": f"question {i}"}) + b"\n")
    built = 0
    real = runner.jobs._compact_job

    def counting(*args: Any) -> Job:
        nonlocal built
        built += 1
        return real(*args)

    monkeypatch.setattr(runner.jobs, "_compact_job", counting)
    sizes = []
    for k in range(4):
        built = 0
        part = _shard(jobs, {}, ShardSpec(k, 4))
        assert built == len(part)  # only this shard's jobs were built
        sizes.append(len(part))
    assert sum(sizes) == 2000 and max(sizes) < 700
