"""Red team 3: `runner merge` with a glob that also matches files that are not parts."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from runner.cli import main


def _shards(d: Path) -> None:
    cfg = d / "cfg.toml"
    cfg.write_text('model = "m-1"\n[mock]\nlatency = "zero"\n')
    jobs = d / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(12):
            fh.write(orjson.dumps({"id": f"j{i}", "query": f"question {i}?"}) + b"\n")
    for k in range(2):
        args = ["run", str(jobs), "-c", str(cfg), "--progress", "off", "-q"]
        assert main([*args, "-o", str(d / "out" / "e.results.jsonl"), "--shard", f"{k}/2"]) == 0


def _ids(path: Path) -> list[str]:
    return sorted(orjson.loads(raw)["custom_id"] for raw in path.read_bytes().splitlines())


def test_merging_again_with_a_glob_that_matches_the_earlier_merge(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found: the second `runner merge out/all.results.jsonl 'out/*.results.jsonl'` read the
    # first merge's output as a part and failed (exit 2, "not a shard's results").
    _shards(tmp_path)
    out = tmp_path / "out" / "all.results.jsonl"
    glob = str(tmp_path / "out" / "*.results.jsonl")
    assert main(["merge", str(out), glob]) == 0
    first = out.read_bytes()
    capsys.readouterr()
    assert main(["merge", str(out), glob]) == 0, capsys.readouterr().err
    assert out.read_bytes() == first
    assert _ids(out) == sorted(f"j{i}" for i in range(12))


def test_a_glob_over_all_of_a_shards_files_takes_only_the_results(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found: 'out/e.shard-*' matched the latency files too, and the merge stopped on them.
    _shards(tmp_path)
    out = tmp_path / "m.results.jsonl"
    assert main(["merge", str(out), str(tmp_path / "out" / "e.shard-*")]) == 0
    assert _ids(out) == sorted(f"j{i}" for i in range(12))
    capsys.readouterr()
    # a glob that matches files but no part is still a clear error
    lat = str(tmp_path / "out" / "*.latency.jsonl")
    assert main(["merge", str(tmp_path / "n.results.jsonl"), lat]) == 2
    assert "matches no shard's results file" in capsys.readouterr().err
