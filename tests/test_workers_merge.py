"""`--workers` and `runner merge`: per-model prices, malformed parts, forked or spawned workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from helpers import mock_process

import runner.workers
from runner.cli import main
from runner.errors import ConfigError, InputError
from runner.merge import merge

ROOT = Path(__file__).resolve().parent.parent
PRICES = {"cheap-1": (1.0, 2.0), "dear-1": (30.0, 60.0)}  # USD per million in, out


def _inputs(d: Path) -> tuple[Path, Path]:
    jobs = d / "jobs.jsonl"
    with open(jobs, "wb") as fh:
        for i in range(40):
            model = "dear-1" if i % 3 == 0 else "cheap-1"
            fh.write(orjson.dumps({"id": f"q{i}", "model": model, "query": f"q {i}?"}) + b"\n")
    cfg = d / "prices.toml"
    cfg.write_text(
        'model = "cheap-1"\n'
        + "".join(f'[prices."{m}"]\ninput = {i}\noutput = {o}\n' for m, (i, o) in PRICES.items())
    )
    return jobs, cfg


def _two_shards(d: Path) -> list[Path]:
    """Run the 40 jobs of :func:`_inputs` as shards 0/2 and 1/2; their results files."""
    jobs, cfg = _inputs(d)
    for k in range(2):
        args = ["run", str(jobs), "-c", str(cfg), "--progress", "off", "--shard", f"{k}/2"]
        assert main(args) == 0
    return [d / f"jobs.shard-{k}-of-2.results.jsonl" for k in range(2)]


def _cost_of_records(latency: Path) -> float:
    """What the records cost, each at its own model's price (computed here, independently)."""
    total = 0.0
    for raw in latency.read_bytes().splitlines():
        rec = orjson.loads(raw)
        inp, out = PRICES[rec["model"]]
        total += (rec["prompt_tokens"] * inp + rec["completion_tokens"] * out) / 1e6
    return total


def test_workers_merge_prices_each_job_by_its_model(tmp_path: Path) -> None:
    jobs, cfg = _inputs(tmp_path)
    single = tmp_path / "single.results.jsonl"
    args = ["run", str(jobs), "-c", str(cfg), "--progress", "off"]
    assert main([*args, "-o", str(single)]) == 0
    one = orjson.loads((tmp_path / "single.summary.json").read_bytes())["cost"]
    cmd = [sys.executable, "-m", "runner", *args, "--workers", "2"]
    cmd += ["-o", str(tmp_path / "w.results.jsonl")]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120, env=os.environ.copy())
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    merged = orjson.loads((tmp_path / "w.summary.json").read_bytes())
    expect = _cost_of_records(tmp_path / "w.latency.jsonl")
    assert merged["cost"]["billed"] == pytest.approx(expect, rel=1e-6)
    assert one["billed"] == pytest.approx(_cost_of_records(tmp_path / "single.latency.jsonl"))
    # the old merge priced every token at the run's model's price: far below this
    cheap = sum(
        (rec["prompt_tokens"] * 1.0 + rec["completion_tokens"] * 2.0) / 1e6
        for rec in map(orjson.loads, (tmp_path / "w.latency.jsonl").read_bytes().splitlines())
    )
    assert merged["cost"]["billed"] > 5 * cheap
    assert merged["workers"]["processes"] == 2 and merged["workers"]["forked"]
    cpu = merged["workers"]["cpu_s"]
    assert len(cpu["workers"]) == 2 and all(x > 0 for x in cpu["workers"])

    # runner merge -c prices the same way
    parts = str(tmp_path / "w.shard-*-of-2.results.jsonl")
    out = tmp_path / "m.results.jsonl"
    assert main(["merge", str(out), parts, "-c", str(cfg)]) == 0
    again = orjson.loads((tmp_path / "m.summary.json").read_bytes())["cost"]
    assert again["billed"] == pytest.approx(expect, rel=1e-6)


def test_merge_names_a_malformed_line(tmp_path: Path) -> None:
    parts = _two_shards(tmp_path)
    lat = tmp_path / "jobs.shard-1-of-2.latency.jsonl"
    lines = lat.read_bytes().splitlines(keepends=True)
    lat.write_bytes(b"".join([*lines[:2], b"[1]\n", *lines[3:]]))
    with pytest.raises(InputError, match=r"shard-1-of-2\.latency\.jsonl:3: not a latency record"):
        merge(tmp_path / "m.results.jsonl", parts)
    lat.write_bytes(b"".join(lines))
    res = parts[0].read_bytes().splitlines(keepends=True)
    parts[0].write_bytes(b"".join([res[0], b"{oops\n", *res[2:]]))
    with pytest.raises(InputError, match=r"shard-0-of-2\.results\.jsonl:2: not a result line"):
        merge(tmp_path / "m.results.jsonl", parts, partial=True)  # the edit made it "newer"
    parts[0].write_bytes(b"".join([res[0], b'{"id":"b","custom_id":null}\n', *res[2:]]))
    with pytest.raises(InputError, match=r"results\.jsonl:2: not a result line \(no custom_id"):
        merge(tmp_path / "m.results.jsonl", parts, partial=True)
    assert not (tmp_path / "m.results.jsonl").exists()


def test_workers_spawn_interpreters_where_they_do_not_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner.workers, "_FORK", False)
    jobs, cfg = _inputs(tmp_path)
    args = ["run", str(jobs), "-c", str(cfg), "--progress", "off", "--workers", "2", "--quiet"]
    assert main(args) == 0
    merged = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    assert merged["workers"]["forked"] is False and merged["jobs"]["ok"] == 40
    ids = [
        orjson.loads(x)["custom_id"]
        for x in (tmp_path / "jobs.results.jsonl").read_bytes().splitlines()
    ]
    assert sorted(ids) == sorted(f"q{i}" for i in range(40))


def test_sigterm_reaches_the_forked_workers_and_a_rerun_completes_once(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "query": f"q {i}"}) + b"\n" for i in range(200))
    )
    with mock_process("--base-ms", "30", "--decode-ms-per-token", "1", "--jitter", "0") as url:
        cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--provider", "openai"]
        cmd += ["--base-url", url, "--concurrency", "2", "--progress", "off", "--workers", "2"]
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE)
        part = tmp_path / "jobs.shard-1-of-2.results.jsonl"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            not part.exists() or part.read_bytes().count(b"\n") < 10
        ):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode not in (0, 1), err.decode()[-2000:]
        assert b"not merging" in err and b"resume" in err
        assert not (tmp_path / "jobs.results.jsonl").exists()  # nothing merged
        done = sum(
            (tmp_path / f"jobs.shard-{k}-of-2.results.jsonl").read_bytes().count(b"\n")
            for k in range(2)
        )
        assert 0 < done < 200  # both workers stopped early
    # The re-run sends the rest to an instant mock, not at one request per 30 ms per worker (a
    # resume checks the jobs file, not the URL).
    with mock_process("--latency", "zero") as fast:
        cmd[cmd.index(url)] = fast
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()[-2000:]
    ids = [
        orjson.loads(x)["custom_id"]
        for x in (tmp_path / "jobs.results.jsonl").read_bytes().splitlines()
    ]
    assert sorted(ids) == sorted(f"q{i}" for i in range(200))  # each exactly once
    summary = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    # as a single-process resume: totals over the whole output, this invocation beside them
    assert summary["jobs"]["ok"] == 200
    this_run = summary["this_run"]
    assert this_run["ok"] + this_run["skipped_resumed"] == 200
    assert summary["jobs"]["skipped_resumed"] == this_run["skipped_resumed"] == done


def _most_in_flight(latency: Path) -> int:
    """The most requests on the wire at once, from the records' send and end times (a slot is
    taken before a request is sent and given back after its answer ends)."""
    events = []
    for raw in latency.read_bytes().splitlines():
        rec = orjson.loads(raw)
        events += [(rec["started_at"], 1), (rec["ended_at"], -1)]
    most = now = 0
    for _, step in sorted(events):  # at a tie an end (-1) sorts before a start
        now += step
        most = max(most, now)
    return most


def test_workers_share_the_concurrency_so_the_run_never_exceeds_it(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        b"".join(orjson.dumps({"id": f"q{i}", "query": f"q {i}"}) + b"\n" for i in range(80))
    )
    with mock_process("--base-ms", "40", "--decode-ms-per-token", "0", "--jitter", "0") as url:
        cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--provider", "openai"]
        cmd += ["--base-url", url, "--progress", "off", "--workers", "2"]
        r = subprocess.run([*cmd, "--concurrency", "5"], cwd=ROOT, capture_output=True, timeout=120)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        # 5 in flight over both workers (3 + 2), not 5 each: the requests overlap at most 5
        assert _most_in_flight(tmp_path / "jobs.latency.jsonl") <= 5
        shares = [
            orjson.loads((tmp_path / f"jobs.shard-{k}-of-2.summary.json").read_bytes())
            for k in range(2)
        ]
        assert all(s["jobs"]["ok"] for s in shares)
        # fewer slots than workers cannot be shared: refused before anything is written
        r = subprocess.run([*cmd, "--concurrency", "1", "-o", str(tmp_path / "x.results.jsonl")],
                           cwd=ROOT, capture_output=True, timeout=60)  # fmt: skip
        assert r.returncode == 2 and b"--concurrency >= 2" in r.stderr, r.stderr.decode()
        assert not list(tmp_path.glob("x.*"))


def test_workers_share_max_active_groups_so_the_provider_cache_holds_no_more(
    tmp_path: Path,
) -> None:
    jobs, ctx = tmp_path / "jobs.jsonl", tmp_path / "contexts.jsonl"
    with open(ctx, "wb") as fh:
        for g in range(8):
            fh.write(orjson.dumps({"cache_id": f"c{g}", "system": f"Document {g}. " * 800}) + b"\n")
    with open(jobs, "wb") as fh:
        for i in range(48):
            fh.write(orjson.dumps({"id": f"q{i}", "cache_id": f"c{i % 8}", "query": f"q {i}?"}))
            fh.write(b"\n")
    with mock_process("--base-ms", "5", "--decode-ms-per-token", "0", "--jitter", "0") as url:
        cmd = [sys.executable, "-m", "runner", "run", str(jobs), "--contexts", str(ctx)]
        cmd += ["--provider", "openai", "--base-url", url, "--progress", "off", "--workers", "2"]
        cmd += ["--concurrency", "8", "--no-cache-adapt", "--max-active-groups", "2"]
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode()[-2000:]
    assert len((tmp_path / "jobs.latency.jsonl").read_bytes().splitlines()) == 48
    # 2 groups open at once over both workers (1 + 1), not 2 each
    for k in range(2):
        part = orjson.loads((tmp_path / f"jobs.shard-{k}-of-2.summary.json").read_bytes())
        assert part["cache_control"]["active_groups"] == 1
    assert runner.workers.group_shares(8, 3) == [3, 3, 2]
    assert runner.workers.group_shares(1, 2) == [1, 1]  # each worker opens at least one


def test_merge_finds_an_id_twice_whether_its_lines_are_read_fast_or_parsed(
    tmp_path: Path,
) -> None:
    # Result lines as the runner writes them are keyed from their bytes, a block at a time;
    # any other line is parsed. Both ways must give the same key, or a job paid twice slips by.
    parts = _two_shards(tmp_path)
    clean = [p.read_bytes() for p in parts]
    first = clean[0].splitlines(keepends=True)[0]
    cid = orjson.loads(first)["custom_id"]
    assert first.startswith(b'{"id":"') and f',"custom_id":"{cid}",'.encode() in first
    out = tmp_path / "m.results.jsonl"
    # the same line in both parts: every block of both is read from the bytes
    parts[1].write_bytes(clean[1] + first)
    with pytest.raises(ConfigError, match=f"id '{cid}' appears twice"):
        merge(out, parts, partial=True)  # the edits made the parts "newer"
    # the copy spells its id with an escape: that block is parsed, the key is the same
    escaped = "".join(f"\\u{ord(c):04x}" for c in cid).encode()
    parts[1].write_bytes(clean[1] + first.replace(f'"{cid}"'.encode(), b'"' + escaped + b'"', 1))
    with pytest.raises(ConfigError, match=f"id '{cid}' appears twice"):
        merge(out, parts, partial=True)  # the edits made the parts "newer"
    parts[1].write_bytes(clean[1])
    assert merge(out, parts, partial=True).summary["jobs"]["ok"] == 40


def test_merge_of_distinct_parts_copies_them_unread_yet_whole_lines_and_counted(
    tmp_path: Path,
) -> None:
    # --workers merges its own shards with distinct_ids=True: the bytes are copied without
    # reading ids, and must come out exactly as the checked merge writes them; a crashed
    # write's partial last line is still left out, and the lines are still counted against
    # the latency records.
    parts = _two_shards(tmp_path)
    checked, fast = tmp_path / "a.results.jsonl", tmp_path / "b.results.jsonl"
    merge(checked, parts)
    assert merge(fast, parts, distinct_ids=True).summary["jobs"]["ok"] == 40
    assert fast.read_bytes() == checked.read_bytes()
    assert len(fast.read_bytes().splitlines()) == 40
    whole = parts[0].read_bytes()
    parts[0].write_bytes(whole + b'{"id":"half a li')  # a write cut short by a crash
    merge(fast, parts, partial=True, distinct_ids=True)
    assert fast.read_bytes() == checked.read_bytes()
    parts[0].write_bytes(whole + whole.splitlines(keepends=True)[0])  # one line too many
    with pytest.raises(ConfigError, match="41 results but 40 latency records"):
        merge(fast, parts, partial=True, distinct_ids=True)


def test_unread_copy_finds_the_last_whole_line_across_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The end of the last whole line is found from the back, block by block: a partial line
    # longer than a block must not cut the file inside it.
    import io

    import runner.merge as merge_mod
    import runner.sinks

    monkeypatch.setattr(merge_mod, "_BLOCK", 8)  # the copy
    monkeypatch.setattr(runner.sinks, "_CHUNK", 8)  # the search back for the last newline
    part = tmp_path / "r.jsonl"
    for data in [b"", b"no newline", b"a\n" + b"b" * 30, b"x\n" * 9 + b"y" * 25, b"z" * 20 + b"\n"]:
        part.write_bytes(data)
        out = io.BytesIO()
        n = merge_mod._copy_whole_lines(out, [merge_mod._Part(0, part, part, part, {})])  # type: ignore[arg-type]
        whole = data[: data.rfind(b"\n") + 1]
        assert (out.getvalue(), n) == (whole, whole.count(b"\n"))
