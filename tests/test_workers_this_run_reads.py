"""``--workers``: the parent's ``this_run`` is summed from the workers' summaries as the merge
read them (runner/merge.py hands them to its ``finish``), not from a second read of each file
(runner/workers.py ``_this_run``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, load, write_jobs


def test_each_worker_summary_is_read_once_by_the_parent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = write_jobs(tmp_path, 30)
    out = tmp_path / "r.jsonl"
    reads: Counter[str] = Counter()
    read_bytes = Path.read_bytes

    def counted(self: Path) -> bytes:
        reads[self.name] += 1  # in this process: a forked worker counts in its own copy
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", counted)
    flags = ["-c", str(fast_config(tmp_path)), "-o", str(out), "-q"]
    code, err = cli_run(capsys, "run", str(jobs), *flags, "--workers", "2")
    assert code == 0, err
    parts = [f"r.shard-{k}-of-2.summary.json" for k in range(2)]
    assert {name: reads[name] for name in parts} == dict.fromkeys(parts, 1)
    # and this_run is still the workers' sum, as before
    summary = load(tmp_path / "r.summary.json")
    shards = [load(tmp_path / name) for name in parts]
    assert summary["this_run"]["ok"] == sum(s["this_run"]["ok"] for s in shards) == 30
    walls = [s["this_run"]["wall_s"] for s in shards]
    assert summary["this_run"]["wall_s"] == max(walls) == summary["wall_s"]
