"""Shards, ``runner merge`` and ``--workers``: groups stay whole, parts merge exactly once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from shard_helpers import fast_mock

from runner.cli import main
from runner.config import RunConfig
from runner.errors import ConfigError
from runner.jobs import load_contexts, read_jobs
from runner.merge import merge
from runner.models import Job
from runner.shards import (
    ShardSpec,
    filter_items,
    parse_shard,
    resolve_shard,
    shard_from_env,
    shard_path,
)

ROOT = Path(__file__).resolve().parent.parent


# The built-in mock's latency model at a tenth of its default times (a request in about 80 ms,
# not 800): the same shape, so cache hits come out as with the default.
FAST_MOCK = {
    "base_ms": 15.0,
    "prefill_ms_per_token": 0.005,
    "cached_prefill_ms_per_token": 0.0005,
    "decode_ms_per_token": 1.0,
}


@pytest.fixture(autouse=True)
def _fast_mock(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs get the faster mock unless a config says otherwise: these tests are about
    partitions and merges, and the default made each run wait about 3.7 s (the --workers runs
    in child processes are given it by _fast_mock_config)."""
    fast_mock(monkeypatch, FAST_MOCK)


def _write_input(d: Path, groups: int = 6, per: int = 8, loose: int = 10) -> tuple[Path, Path]:
    ctx = d / "ctx.jsonl"
    jobs = d / "jobs.jsonl"
    with open(ctx, "wb") as fh:
        for g in range(groups):
            # A distinct head per context: groups share no prefix, so how many primers overlap
            # (it depends on how the cache controller opens groups) does not move the ratio.
            fh.write(orjson.dumps({"cache_id": f"c{g}", "system": f"{g} " + "words " * 1300}))
            fh.write(b"\n")
    with open(jobs, "wb") as fh:
        for q in range(per):
            for g in range(groups):
                fh.write(orjson.dumps({"id": f"c{g}-q{q}", "cache_id": f"c{g}", "query": f"q{q}"}))
                fh.write(b"\n")
        for i in range(loose):
            fh.write(orjson.dumps({"id": f"loose-{i}", "query": f"loose {i}"}) + b"\n")
        fh.write(b"{not json}\n")  # a bad line belongs to exactly one shard too
    return jobs, ctx


def _ids(path: Path) -> list[str]:
    """Each result's key: its id, or ``line:N`` for a bad line (whose ``custom_id`` is null)."""
    return [_key(line) for line in path.read_bytes().splitlines()]


def _key(raw: bytes) -> str:
    obj = orjson.loads(raw)
    cid = obj["custom_id"]
    return cid if cid is not None else f"line:{obj['line']}"


# -- units --------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["3/3", "-1/3", "a/b", "1", "0/0", "1/2/3"])
def test_a_bad_shard_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_a_bad_shard_exits_2_before_anything_is_written(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    assert main(["run", str(jobs), "--contexts", str(ctx), "--shard", "4/4"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.jsonl", "jobs.jsonl"]


def test_orchestrator_environments() -> None:
    assert shard_from_env({"JOB_COMPLETION_INDEX": "2"}, 4) == ShardSpec(2, 4)
    with pytest.raises(ConfigError, match="--shard-count"):
        shard_from_env({"JOB_COMPLETION_INDEX": "2"}, None)
    slurm = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert shard_from_env(slurm, None) == ShardSpec(3, 4)
    assert shard_from_env({}, 4) is None
    # the environment counts only when asked for: a plain run in an array task is not split
    assert resolve_shard(RunConfig(), {"SLURM_ARRAY_TASK_ID": "1"}) is None
    assert resolve_shard(RunConfig(shard="auto"), slurm) == ShardSpec(3, 4)
    assert resolve_shard(RunConfig(shard_count=3), {"JOB_COMPLETION_INDEX": "0"}) == ShardSpec(0, 3)
    with pytest.raises(ConfigError, match="neither"):
        resolve_shard(RunConfig(shard="auto"), {})


def test_shard_paths() -> None:
    spec = ShardSpec(1, 4)
    assert shard_path(Path("d/x.results.jsonl"), spec) == Path("d/x.shard-1-of-4.results.jsonl")
    assert shard_path(Path("x.summary.json"), spec) == Path("x.shard-1-of-4.summary.json")
    assert shard_path(Path("out.jsonl"), spec) == Path("out.shard-1-of-4.jsonl")


def test_shards_partition_the_input_and_never_split_a_group(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path, groups=20, per=5, loose=40)
    contexts = load_contexts(ctx, max_line_bytes=1 << 20)
    everything = list(read_jobs(jobs, contexts=contexts))
    n = 4
    seen: dict[str, int] = {}
    group_shard: dict[str, int] = {}
    for k in range(n):
        for item in filter_items(iter(everything), ShardSpec(k, n)):
            key = item.custom_id or f"line-{item.line}"
            assert key not in seen, f"{key} in shards {seen[key]} and {k}"
            seen[key] = k
            if isinstance(item, Job) and item.group is not None:
                assert group_shard.setdefault(item.group, k) == k, "a group was split"
    assert len(seen) == len(everything)
    assert len(set(group_shard.values())) > 1  # the groups do spread over the shards


# -- end to end ---------------------------------------------------------------------------


def _run_shard(jobs: Path, ctx: Path, k: int, n: int, *extra: str) -> int:
    args = ["run", str(jobs), "--contexts", str(ctx), "--progress", "off"]
    return main([*args, "--shard", f"{k}/{n}", *extra])


def test_shards_merge_to_the_single_run(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    single = tmp_path / "single"
    single.mkdir()
    args = ["--progress", "off", "--contexts", str(ctx)]
    assert (
        main(
            [
                "run",
                str(jobs),
                *args,
                "-o",
                str(single / "s.results.jsonl"),
                "--latency",
                str(single / "s.latency.jsonl"),
                "--summary",
                str(single / "s.summary.json"),
            ]
        )
        == 1
    )  # the bad line fails
    for k in range(3):
        assert _run_shard(jobs, ctx, k, 3) in (0, 1)
    out = tmp_path / "all.results.jsonl"
    parts = [str(tmp_path / f"jobs.shard-{k}-of-3.results.jsonl") for k in range(3)]
    assert main(["merge", str(out), *parts]) == 1  # as the single run: the bad line failed
    merged_ids = _ids(out)
    assert len(merged_ids) == len(set(merged_ids))
    assert set(merged_ids) == set(_ids(single / "s.results.jsonl"))
    summary = orjson.loads((tmp_path / "all.summary.json").read_bytes())
    one = orjson.loads((single / "s.summary.json").read_bytes())
    assert summary["jobs"]["total"] == one["jobs"]["total"] == len(merged_ids)
    assert summary["jobs"]["failed"] == one["jobs"]["failed"] == 1
    assert summary["tokens"]["prompt"] == one["tokens"]["prompt"]
    assert abs(summary["cache_hit_ratio"] - one["cache_hit_ratio"]) <= 0.01
    assert summary["shards"] == {
        "count": 3,
        "merged": [0, 1, 2],
        "missing": [],
        "unfinished": [],
        "from_state": [0, 1, 2],
    }
    assert len((tmp_path / "all.latency.jsonl").read_bytes().splitlines()) == len(merged_ids)

    # a merge again onto its own earlier output is allowed; onto a run's results it is not
    assert main(["merge", str(out), *parts]) == 1
    assert main(["merge", str(single / "s.results.jsonl"), *parts]) == 2
    assert len(_ids(single / "s.results.jsonl")) == len(merged_ids)  # untouched


def test_merge_reports_missing_and_unfinished_shards(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, ctx = _write_input(tmp_path)
    for k in (0, 2):
        _run_shard(jobs, ctx, k, 3)
    parts = [tmp_path / f"jobs.shard-{k}-of-3.results.jsonl" for k in (0, 2)]
    out = tmp_path / "m.results.jsonl"
    with pytest.raises(ConfigError, match=r"missing shard\(s\) 1 of 3"):
        merge(out, parts)
    assert not out.exists()
    # a shard whose summary is gone (killed) is unfinished
    (tmp_path / "jobs.shard-2-of-3.summary.json").unlink()
    with pytest.raises(ConfigError, match=r"shard\(s\) 2 not finished"):
        merge(out, parts)
    rep = merge(out, parts, partial=True)
    assert rep.missing == (1,) and rep.unfinished == (2,)
    assert main(["merge", str(tmp_path / "p2.results.jsonl"), *map(str, parts), "--partial"]) == 1
    assert "missing [1]" in capsys.readouterr().err


def test_merge_refuses_parts_of_different_runs(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    _run_shard(jobs, ctx, 0, 2)
    _run_shard(jobs, ctx, 1, 2)
    other = tmp_path / "other"
    other.mkdir()
    jobs2, ctx2 = _write_input(other, groups=2)
    main(["run", str(jobs2), "--contexts", str(ctx2), "--progress", "off", "--shard", "1/2"])
    with pytest.raises(ConfigError, match="input"):
        merge(
            tmp_path / "m.results.jsonl",
            [
                tmp_path / "jobs.shard-0-of-2.results.jsonl",
                other / "jobs.shard-1-of-2.results.jsonl",
            ],
        )
    _run_shard(jobs, ctx, 0, 3)
    with pytest.raises(ConfigError, match="shard count"):
        merge(
            tmp_path / "m.results.jsonl",
            [
                tmp_path / "jobs.shard-0-of-2.results.jsonl",
                tmp_path / "jobs.shard-0-of-3.results.jsonl",
            ],
        )
    with pytest.raises(ConfigError, match="shard 0 is also"):
        merge(tmp_path / "m.results.jsonl", [tmp_path / "jobs.shard-0-of-2.results.jsonl"] * 2)
    with pytest.raises(ConfigError, match="not a shard"):
        merge(tmp_path / "m.results.jsonl", [jobs])


def test_merge_refuses_an_id_in_two_parts(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    for k in range(2):
        _run_shard(jobs, ctx, k, 2)
    p0 = tmp_path / "jobs.shard-0-of-2.results.jsonl"
    p1 = tmp_path / "jobs.shard-1-of-2.results.jsonl"
    with open(p1, "ab") as fh:  # a line of shard 0 smuggled into shard 1
        fh.write(p0.read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(ConfigError, match="appears twice"):
        merge(tmp_path / "m.results.jsonl", [p0, p1])


def test_a_shard_resumes_on_its_own(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    assert _run_shard(jobs, ctx, 0, 2) in (0, 1)
    res = tmp_path / "jobs.shard-0-of-2.results.jsonl"
    lines = res.read_bytes().splitlines(keepends=True)
    res.write_bytes(b"".join(lines[: len(lines) // 2]))  # as if killed halfway
    _run_shard(jobs, ctx, 0, 2)
    summary = orjson.loads((tmp_path / "jobs.shard-0-of-2.summary.json").read_bytes())
    assert summary["jobs"]["skipped_resumed"] == len(lines) // 2
    assert sorted(_ids(res)) == sorted(_key(x) for x in lines)


def _fast_mock_config(d: Path) -> Path:
    """A config whose [mock] table is FAST_MOCK, for the runs in child processes."""
    path = d / "fast-mock.toml"
    path.write_text("[mock]\n" + "".join(f"{k} = {v}\n" for k, v in FAST_MOCK.items()))
    return path


def _workers(jobs: Path, ctx: Path, n: int, *extra: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx)]
    cmd += ["-c", str(_fast_mock_config(jobs.parent))]
    cmd += ["--progress", "off", "--workers", str(n), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, env=os.environ.copy())


def test_workers_run_shards_merge_and_resume_as_a_whole(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    r = _workers(jobs, ctx, 2, "--rpm", "60000")
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the one bad line
    ids = _ids(tmp_path / "jobs.results.jsonl")
    assert len(ids) == len(set(ids)) == 6 * 8 + 10 + 1
    summary = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    assert summary["shards"]["count"] == 2 and summary["jobs"]["total"] == len(ids)
    part = orjson.loads((tmp_path / "jobs.shard-0-of-2.summary.json").read_bytes())
    assert part["shared_limit"]["store"] == "file"  # one budget over the workers
    assert (tmp_path / "jobs.results.jsonl.limits.json").exists()
    # again: every shard resumes (nothing to send) and the merge is the same
    r = _workers(jobs, ctx, 2)
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    assert sorted(_ids(tmp_path / "jobs.results.jsonl")) == sorted(ids)
    part = orjson.loads((tmp_path / "jobs.shard-1-of-2.summary.json").read_bytes())
    assert part["jobs"]["skipped_resumed"] == part["jobs"]["total"]


def test_workers_refuse_to_merge_over_a_plain_runs_results(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    main(["run", str(jobs), "--contexts", str(ctx), "--progress", "off"])
    before = (tmp_path / "jobs.results.jsonl").read_bytes()
    r = _workers(jobs, ctx, 2)
    assert r.returncode == 2 and b"without --workers" in r.stderr
    assert (tmp_path / "jobs.results.jsonl").read_bytes() == before


def test_a_bad_redis_url_is_refused_before_any_output_is_touched(tmp_path: Path) -> None:
    jobs, ctx = _write_input(tmp_path)
    args = ["run", str(jobs), "--contexts", str(ctx), "--progress", "off"]
    assert main([*args, "--redis-url", "http://nope"]) == 2
    assert main([*args, "--redis-policy", "fail_closed", "--lease-s", "0"]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctx.jsonl", "jobs.jsonl"]


def test_workers_honour_summary_stdout_custom_paths_and_json_logs(tmp_path: Path) -> None:
    # Found by QA: `--summary -` left files named `-.shard-K-of-N` in the working directory and
    # printed nothing; a custom --latency/--summary was ignored by the merge; JSON logs got the
    # merged text table among them; every worker printed a table of its own.
    jobs, ctx = _write_input(tmp_path)
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx)]
    cmd += ["-c", str(_fast_mock_config(tmp_path))]
    cmd += ["--progress", "off", "--workers", "2", "-o", str(tmp_path / "out/r.results.jsonl")]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [*cmd, "--summary", "-", "--latency", str(tmp_path / "lat.jsonl")],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the one bad line
    summary = orjson.loads(r.stdout)
    assert summary["shards"]["count"] == 2 and summary["jobs"]["total"] == 6 * 8 + 10 + 1
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("-")]
    assert len((tmp_path / "lat.jsonl").read_bytes().splitlines()) == summary["jobs"]["total"]
    assert r.stderr.count(b"run summary") == 1  # the merged table only
    cmd[cmd.index("-o") + 1] = str(tmp_path / "out2/r.results.jsonl")
    r = subprocess.run(
        [*cmd, "--log-format", "json", "--summary", str(tmp_path / "s.json")],
        cwd=tmp_path,
        capture_output=True,
        timeout=120,
        env=env,
    )
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    lines = r.stderr.decode().splitlines()
    assert lines and all(line.startswith("{") and orjson.loads(line) for line in lines), lines
    assert orjson.loads((tmp_path / "s.json").read_bytes())["shards"]["count"] == 2


def test_a_shard_with_summary_stdout_prints_it_and_keeps_its_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by QA: `--shard 0/2 --summary -` wrote a file named `-.shard-0-of-2` in the cwd.
    jobs, ctx = _write_input(tmp_path)
    monkeypatch.chdir(tmp_path)
    args = ["run", str(jobs), "--contexts", str(ctx), "--progress", "off", "--summary", "-"]
    assert main([*args, "--shard", "0/2"]) in (0, 1)
    printed = orjson.loads(capsys.readouterr().out)
    on_disk = orjson.loads((tmp_path / "jobs.shard-0-of-2.summary.json").read_bytes())
    assert printed["jobs"] == on_disk["jobs"] and printed["shard"] == on_disk["shard"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("-")]


def test_merge_and_workers_never_write_over_an_input_even_with_force(tmp_path: Path) -> None:
    # Found by QA: `runner merge --force JOBS.jsonl PARTS` overwrote the jobs file, and
    # `--workers 2 --latency CONTEXTS` (once the merge honoured --latency) would have.
    jobs, ctx = _write_input(tmp_path)
    for k in (0, 1):
        assert _run_shard(jobs, ctx, k, 2) in (0, 1)
    before = {p: p.read_bytes() for p in tmp_path.iterdir()}
    parts = str(tmp_path / "jobs.shard-*-of-2.results.jsonl")
    for out in (jobs, tmp_path / "jobs.shard-0-of-2.latency.jsonl"):
        assert main(["merge", "--force", str(out), parts]) == 2
    args = ["run", str(jobs), "--contexts", str(ctx), "--progress", "off", "--workers", "2"]
    assert main([*args, "--latency", str(ctx), "-o", str(tmp_path / "w.results.jsonl")]) == 2
    assert {p: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_merge_without_a_config_keeps_the_parts_cost(tmp_path: Path) -> None:
    # Found by QA: the README's `runner merge OUT PARTS` (no -c) gave a summary with no cost.
    jobs, ctx = _write_input(tmp_path)
    cfg = tmp_path / "p.toml"
    cfg.write_text('[prices."mock-1"]\ninput = 1.0\ncached_input = 0.1\noutput = 4.0\n')
    costs = []
    for k in (0, 1):
        assert _run_shard(jobs, ctx, k, 2, "-c", str(cfg)) in (0, 1)
        part = orjson.loads((tmp_path / f"jobs.shard-{k}-of-2.summary.json").read_bytes())
        costs.append(part["cost"])
    out = tmp_path / "m.results.jsonl"
    assert (
        main(["merge", str(out), str(tmp_path / "jobs.shard-*-of-2.results.jsonl")]) == 1
    )  # the bad line failed
    cost = orjson.loads((tmp_path / "m.summary.json").read_bytes())["cost"]
    assert cost["billed"] == pytest.approx(sum(c["billed"] for c in costs)) and cost["billed"] > 0
    assert cost["uncached"] == pytest.approx(sum(c["uncached"] for c in costs))


@pytest.mark.parametrize("textfile", [True, False])
def test_workers_refuse_metrics_exports_that_would_hold_one_shard(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], textfile: bool
) -> None:
    # Found by QA: with --workers 2 --metrics-textfile, the file held one worker's 204 of 306
    # jobs (each worker wrote it, the last one won).
    jobs, ctx = _write_input(tmp_path)
    args = ["run", str(jobs), "--contexts", str(ctx), "--progress", "off", "--workers", "2"]
    prom = tmp_path / "m.prom"
    flag = (
        ["--metrics-textfile", str(prom)] if textfile else ["--pushgateway", "http://127.0.0.1:9"]
    )
    before = sorted(tmp_path.iterdir())
    assert main([*args, *flag]) == 2
    assert "not with --workers" in capsys.readouterr().err
    # no worker ran; the refusal's end gauges alone (exit 2) are the textfile (runner/refusal.py)
    assert sorted(p for p in tmp_path.iterdir() if p != prom) == before
    if textfile:
        assert 'runner_exit_code{job_name="runner"} 2.0' in prom.read_text()
        assert "runner_jobs" not in prom.read_text()


def test_merge_keeps_the_parts_explicit_cache_cost(tmp_path: Path) -> None:
    # Found by QA: merging Gemini shards (or --workers) dropped cache_create/storage, so the
    # merged billed_total understated what the run cost.
    jobs, ctx = _write_input(tmp_path)
    cfg = tmp_path / "p.toml"
    cfg.write_text('[prices."mock-1"]\ninput = 1.0\ncached_input = 0.1\noutput = 4.0\n')
    for k in (0, 1):
        assert _run_shard(jobs, ctx, k, 2, "-c", str(cfg)) in (0, 1)
        path = tmp_path / f"jobs.shard-{k}-of-2.summary.json"
        part = orjson.loads(path.read_bytes())  # as a run with explicit caches writes it
        part["cost"].update(cache_create=0.25 * (k + 1), storage=0.001)
        path.write_bytes(orjson.dumps(part))
    out = tmp_path / "m.results.jsonl"
    parts = str(tmp_path / "jobs.shard-*-of-2.results.jsonl")
    assert main(["merge", str(out), parts, "-c", str(cfg)]) == 1  # the bad line failed
    cost = orjson.loads((tmp_path / "m.summary.json").read_bytes())["cost"]
    assert cost["cache_create"] == pytest.approx(0.75) and cost["storage"] == pytest.approx(0.002)
    assert cost["billed_total"] == pytest.approx(cost["billed"] + 0.752)
    assert cost["saving_net"] == pytest.approx(
        1 - cost["billed_total"] / cost["uncached"], abs=1e-6
    )
