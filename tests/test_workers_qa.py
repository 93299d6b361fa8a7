"""`--workers` and `runner merge` defects found by a new-user QA pass (issue 13)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from runner.cli import main
from runner.sinks import acquire_lock, release_lock

ROOT = Path(__file__).resolve().parent.parent
FAST = {"base_ms": 15.0, "prefill_ms_per_token": 0.005, "decode_ms_per_token": 1.0}


def _config(d: Path, *, base_ms: float = 15.0) -> Path:
    path = d / "cfg.toml"
    mock = {**FAST, "base_ms": base_ms}
    path.write_text(
        'model = "m-1"\n[prices."m-1"]\ninput = 1000.0\noutput = 2000.0\n'
        "[mock]\n" + "".join(f"{k} = {v}\n" for k, v in mock.items())
    )
    return path


def _jobs(d: Path, n: int, *, bad: bool = False) -> Path:
    jobs = d / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"j{i}", "query": f"question {i}?"}) + b"\n")
        if bad:
            fh.write(b"{not json}\n")
    return jobs


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    cmd = [sys.executable, "-m", "runner", "run", *args, "--progress", "off"]
    return subprocess.run(
        cmd, cwd=ROOT, capture_output=True, timeout=timeout, env=os.environ.copy()
    )


def _billed(path: Path) -> float:
    return float(orjson.loads(path.read_bytes())["cost"]["billed"])


def _ids(path: Path) -> list[str]:
    return [orjson.loads(raw)["custom_id"] for raw in path.read_bytes().splitlines()]


def test_max_cost_holds_over_all_workers_and_a_rerun_resumes_as_a_whole(tmp_path: Path) -> None:
    # Found by QA: --workers 2 --max-cost 0.1 spent $0.0745 + $0.0972, each worker its own 0.1.
    jobs, cfg = _jobs(tmp_path, 40), _config(tmp_path)
    full = _run(str(jobs), "-c", str(cfg), "-o", str(tmp_path / "one.results.jsonl"))
    assert full.returncode == 0, full.stderr.decode()[-2000:]
    cost = _billed(tmp_path / "one.summary.json")
    budget = cost / 3  # one worker alone could spend it: two must share it
    args = [str(jobs), "-c", str(cfg), "--workers", "2", "--max-cost", f"{budget:.6f}"]
    r = _run(*args)
    assert r.returncode == 3, r.stderr.decode()[-2000:]
    parts = [tmp_path / f"jobs.shard-{k}-of-2.summary.json" for k in range(2)]
    spent = sum(_billed(p) for p in parts)
    assert 0 < spent <= budget * (1 + 1e-6)
    sent = sum(len(_ids(tmp_path / f"jobs.shard-{k}-of-2.results.jsonl")) for k in range(2))
    # the same command again resumes every shard (with the budget again, per invocation)...
    r = _run(*args)
    assert r.returncode == 3, r.stderr.decode()[-2000:]
    again = sum(len(_ids(tmp_path / f"jobs.shard-{k}-of-2.results.jsonl")) for k in range(2))
    assert again > sent
    assert sum(_billed(p) for p in parts) <= 2 * budget * (1 + 1e-6)
    # ...and without the budget finishes and merges: every job once
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    ids = _ids(tmp_path / "jobs.results.jsonl")
    assert sorted(ids) == sorted(f"j{i}" for i in range(40))


def test_workers_refused_while_a_plain_run_holds_the_output(tmp_path: Path) -> None:
    jobs, cfg = _jobs(tmp_path, 4), _config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    lock = results.with_name(results.name + ".lock")
    fd = acquire_lock(lock, results)  # as a plain run on this output holds it
    try:
        r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    finally:
        release_lock(lock, fd)
    assert r.returncode == 2, r.stderr.decode()[-2000:]
    assert b"another runner" in r.stderr or b"locked" in r.stderr, r.stderr
    assert not list(tmp_path.glob("jobs.shard-*")), "no worker may start"


def test_a_plain_run_refused_while_workers_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: a plain run on the output of a running --workers re-sent every job (exit 0),
    # then the workers' merge failed.
    jobs, cfg = _jobs(tmp_path, 4), _config(tmp_path, base_ms=3000.0)
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(cfg), "--progress", "off"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], cwd=ROOT, stderr=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "jobs.shard-1-of-2.results.jsonl").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        code = main(["run", str(jobs), "-c", str(cfg), "--progress", "off"])
        assert code == 2
        assert "jobs.results.jsonl" in capsys.readouterr().err
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.stderr is not None
        proc.stderr.close()


def test_appended_jobs_resume_with_workers_and_merge_again(tmp_path: Path) -> None:
    # Found by QA: after appending a job, every --workers run failed its merge with "exists and
    # is not an earlier merge of this input" (exit 2), for ever.
    jobs, cfg = _jobs(tmp_path, 6), _config(tmp_path)
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    single = tmp_path / "one.results.jsonl"
    r = _run(str(jobs), "-c", str(cfg), "-o", str(single))
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    gap = 2.0
    time.sleep(gap)  # idle between the runs: not part of the resume's wall time
    with open(jobs, "ab") as fh:
        fh.write(b'{"id":"new","query":"z"}\n')
    one = _run(str(jobs), "-c", str(cfg), "-o", str(single))
    assert one.returncode == 0, one.stderr.decode()[-2000:]
    want = orjson.loads((tmp_path / "one.summary.json").read_bytes())
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    ids = _ids(tmp_path / "jobs.results.jsonl")
    assert sorted(ids) == sorted([*(f"j{i}" for i in range(6)), "new"])
    # the merged summary reports the resume as a single-process resume does
    got = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    assert got["jobs"]["ok"] == want["jobs"]["ok"] == 7
    assert got["jobs"]["skipped_resumed"] == 6 and want["jobs"]["skipped_resumed"] == 6
    assert set(got["this_run"]) == set(want["this_run"])
    assert got["this_run"]["ok"] == 1 and got["this_run"]["skipped_resumed"] == 6
    assert got["this_run"]["tokens"]["completion"] == want["this_run"]["tokens"]["completion"]
    assert got["wall_s"] < gap and got["wall_s"] == got["this_run"]["wall_s"]
    # this invocation's one job over its own wall time, not the whole output's span
    rate = round(1 / got["this_run"]["wall_s"], 3)
    assert got["requests_per_s"] == got["throughput"]["requests_ok_per_s"] == rate
    # once more: nothing to send, and the summary of the run that sent the job is kept
    kept = (tmp_path / "jobs.summary.json").read_bytes()
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert sorted(_ids(tmp_path / "jobs.results.jsonl")) == sorted(ids)
    assert (tmp_path / "jobs.summary.json").read_bytes() == kept


def test_an_edited_input_is_refused_once_before_any_worker_starts(tmp_path: Path) -> None:
    # Found by the red team: each worker refused its shard, so the same error came N times.
    jobs, cfg = _jobs(tmp_path, 6), _config(tmp_path)
    r = _run(str(jobs), "-c", str(cfg), "--workers", "3")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    jobs.write_bytes(jobs.read_bytes().replace(b"question 1?", b"question one?"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    r = _run(str(jobs), "-c", str(cfg), "--workers", "3")
    err = r.stderr.decode()
    assert r.returncode == 2, err[-2000:]
    assert err.count("cannot resume") == 1, err
    assert "lines were edited" in err
    # nothing touched: no worker started
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_workers_never_replace_a_foreign_file_with_a_merge(tmp_path: Path) -> None:
    jobs, cfg = _jobs(tmp_path, 4), _config(tmp_path)
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    out = tmp_path / "jobs.results.jsonl"
    marker = out.with_name(out.name + ".merged.json")
    marker.unlink()  # not (or no longer) provably an earlier merge
    out.write_bytes(b"precious\n")
    r = _run(str(jobs), "-c", str(cfg), "--workers", "2")
    assert r.returncode == 2
    assert out.read_bytes() == b"precious\n"


def _shards(tmp_path: Path, jobs: Path, cfg: Path) -> str:
    for k in range(2):
        args = ["run", str(jobs), "-c", str(cfg), "--progress", "off", "--shard", f"{k}/2"]
        assert main(args) in (0, 1)
    return str(tmp_path / "jobs.shard-*-of-2.results.jsonl")


def test_merge_by_hand_exits_like_a_run_with_failed_jobs(tmp_path: Path) -> None:
    jobs, cfg = _jobs(tmp_path, 6, bad=True), _config(tmp_path)
    parts = _shards(tmp_path, jobs, cfg)
    out = tmp_path / "m.results.jsonl"
    assert main(["merge", str(out), parts, "-c", str(cfg)]) == 1  # as the run itself exits
    summary = orjson.loads((tmp_path / "m.summary.json").read_bytes())
    assert summary["jobs"]["failed"] == 1 and summary["exit_code"] == 1
    # without failures: 0, recorded too
    (tmp_path / "ok").mkdir()
    jobs2 = _jobs(tmp_path / "ok", 4)
    parts2 = _shards(tmp_path / "ok", jobs2, cfg)
    out2 = tmp_path / "ok" / "m.results.jsonl"
    assert main(["merge", str(out2), parts2, "-c", str(cfg)]) == 0
    assert orjson.loads((tmp_path / "ok" / "m.summary.json").read_bytes())["exit_code"] == 0


@pytest.mark.parametrize("what", ["contexts", "config", "contexts-link", "jobs-link"])
def test_merge_refuses_an_output_naming_an_input_even_with_force(
    tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: `runner merge CONTEXTS 'parts' --force` wrote over the contexts file.
    ctx = tmp_path / "ctx.jsonl"
    ctx.write_bytes(orjson.dumps({"cache_id": "c", "system": "be brief " * 50}) + b"\n")
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id":"a","cache_id":"c","query":"x"}\n{"id":"b","query":"y"}\n')
    cfg = _config(tmp_path)
    for k in range(2):
        args = ["run", str(jobs), "-c", str(cfg), "--contexts", str(ctx), "--progress", "off"]
        assert main([*args, "--shard", f"{k}/2"]) == 0
    parts = str(tmp_path / "jobs.shard-*-of-2.results.jsonl")
    target = {"contexts": ctx, "config": cfg, "contexts-link": ctx, "jobs-link": jobs}[what]
    out = target
    if what.endswith("-link"):
        out = tmp_path / "link.results.jsonl"
        out.symlink_to(target)
    before = {p: p.read_bytes() for p in (ctx, cfg, jobs)}
    capsys.readouterr()
    for force in ([], ["--force"]):
        assert main(["merge", str(out), parts, "-c", str(cfg), *force]) == 2
        assert "choose another output" in capsys.readouterr().err
        assert {p: p.read_bytes() for p in (ctx, cfg, jobs)} == before


def test_workers_honour_quiet_and_json_logs(tmp_path: Path) -> None:
    # Found by QA: -q still printed the parent's progress lines, and --log-format json put a
    # plain-text progress line among the JSON events and had no run_end for the whole run.
    jobs, cfg = _jobs(tmp_path, 6), _config(tmp_path, base_ms=400.0)
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(cfg), "--workers", "2"]
    env = os.environ.copy()
    r = subprocess.run([*cmd, "-q", "--progress", "log"], cwd=ROOT, capture_output=True, env=env)
    assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()[-2000:]
    # (the progress log writes a line every --log-interval: see the in-process test below)
    json_cmd = [*cmd, "--log-format", "json", "--progress", "log", "--no-resume"]
    r = subprocess.run(json_cmd, cwd=ROOT, capture_output=True, env=env)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    events = [orjson.loads(line) for line in r.stderr.splitlines()]  # every line is JSON
    ends = [e for e in events if e.get("event") == "run_end" and e.get("workers") == 2]
    assert len(ends) == 1 and ends[0]["exit_code"] == 0 and ends[0]["jobs"]["ok"] == 6


@pytest.mark.parametrize("flags", [["-q"], ["--log-format", "json"]])
def test_the_parents_progress_log_follows_quiet_and_json(
    tmp_path: Path,
    flags: list[str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    jobs, cfg = _jobs(tmp_path, 4), _config(tmp_path, base_ms=600.0)
    args = ["run", str(jobs), "-c", str(cfg), "--workers", "2", "--progress", "log", *flags]
    args += ["--log-interval", "0.001"]  # a line on every poll
    assert main(args) == 0
    err = capfd.readouterr().err
    assert "[runner]" not in err and " done, " not in err, err[-2000:]


def test_the_parents_progress_shows_tokens_and_errors(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: the parent's progress line said "0 tok/s, cache hit 0.0%, 0 errors" always.
    jobs, cfg = _jobs(tmp_path, 4, bad=True), _config(tmp_path, base_ms=600.0)
    args = ["run", str(jobs), "-c", str(cfg), "--workers", "2", "--progress", "log"]
    args += ["--log-interval", "0.001"]  # a line on every poll
    assert main(args) == 1
    lines = [x for x in capfd.readouterr().err.splitlines() if "[runner]" in x]
    assert any(" 1 errors" in x for x in lines), lines[-3:]
    assert any(" 0 tok/s" not in x for x in lines), lines[-3:]
    # the parent counts worker processes, not requests: it does not call them "in flight"
    assert any("2 workers running" in x for x in lines) and not any("in flight" in x for x in lines)
    assert "0 workers running" in lines[-1], lines[-1]  # the last line: all have ended


@pytest.mark.parametrize("quiet", [False, True])
def test_a_stop_signal_to_workers_is_said_once(tmp_path: Path, quiet: bool) -> None:
    # Found by the scheduled-jobs pass: with --workers, Ctrl-C printed nothing until the end
    # (the workers run with -q in text mode); a plain run says "stopping" at once.
    jobs, cfg = _jobs(tmp_path, 8), _config(tmp_path, base_ms=3000.0)
    cmd = [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(cfg), "--progress", "off"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", *(["-q"] if quiet else [])],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "jobs.shard-1-of-2.results.jsonl").exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    said = err.decode().count("runner: stopping after SIGINT: the workers finish their requests")
    assert said == (0 if quiet else 1), err.decode()[-2000:]
    assert proc.returncode == 130
