"""Found by a new user's QA pass (polish), each test holding one fix:

* ``runner merge OUT shard-0... --partial`` silently replaced a complete earlier merge in OUT (all
  N shards) with a partial one: it is refused (exit 2) naming what OUT holds and how to proceed.
* ``runner report`` of a resumed output counted the idle time between invocations (Ctrl-C, a
  resume hours later) as run time: the wall is the busy time, the union of the records'
  ``[queued_at, ended_at]``.
* ``runner validate`` said "1 jobs", and estimated cache-write tokens for a provider (OpenAI, the
  mock) whose usage never bills a cache write.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config, load, write_jobs

# -- merge: a partial merge never silently replaces a complete one -------------------------


def _shards(tmp_path: Path, capsys: pytest.CaptureFixture[str], n: int) -> list[Path]:
    jobs = write_jobs(tmp_path, 12)
    cfg = fast_config(tmp_path)
    for k in range(n):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(cfg), "--shard", f"{k}/{n}")
        assert code == 0, err
    return [tmp_path / f"jobs.shard-{k}-of-{n}.results.jsonl" for k in range(n)]


def test_a_partial_merge_does_not_replace_a_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = _shards(tmp_path, capsys, 3)
    out = tmp_path / "all.results.jsonl"
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    whole = out.read_bytes()
    summary = (tmp_path / "all.summary.json").read_bytes()
    assert len(whole.splitlines()) == 12

    code, err = cli_run(capsys, "merge", str(out), str(parts[0]), "--partial")
    assert code == 2
    assert "holds an earlier merge of shard(s) 0, 1, 2 of 3" in err
    assert "shard(s) 0 of 3 would replace it with less" in err and "--force" in err
    assert out.read_bytes() == whole  # nothing lost
    assert (tmp_path / "all.summary.json").read_bytes() == summary

    # merging all of them again is allowed (the same or more shards), and --force replaces
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    code, err = cli_run(capsys, "merge", str(out), str(parts[0]), "--partial", "--force")
    assert code == 1, err
    assert len(out.read_bytes().splitlines()) < 12


def test_a_partial_merge_may_grow_into_a_complete_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parts = _shards(tmp_path, capsys, 2)
    out = tmp_path / "m.results.jsonl"
    assert cli_run(capsys, "merge", str(out), str(parts[0]), "--partial")[0] == 1
    assert load(out.with_name(out.name + ".merged.json"))["merged"] == [0]
    code, err = cli_run(capsys, "merge", str(out), *map(str, parts))
    assert code == 0, err
    assert len(out.read_bytes().splitlines()) == 12
    # a marker from before "merged" was recorded: judged by its number of parts
    marker = out.with_name(out.name + ".merged.json")
    old = load(marker)
    del old["merged"]
    marker.write_bytes(orjson.dumps(old))
    code, err = cli_run(capsys, "merge", str(out), str(parts[1]), "--partial")
    assert code == 2 and "would replace it with less" in err
