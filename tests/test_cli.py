"""The ``runner`` command as a user runs it: exit codes, signals, kill -9 and resume, rate limits.

Each test starts its own simulated provider on 127.0.0.1 (``python -m runner.mock``) and stops
it by pid.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from helpers import mock_process, runner

PY = sys.executable


@pytest.fixture
def mock_url(request: pytest.FixtureRequest) -> Iterator[str]:
    with mock_process(*getattr(request, "param", ["--latency", "zero"])) as url:
        yield url


def jobs_file(tmp: Path, n: int, bad: bool = False) -> Path:
    path = tmp / "jobs.jsonl"
    with path.open("wb") as fh:
        for i in range(n):
            fh.write(orjson.dumps({"id": f"q{i}", "query": f"q {i}", "params": {"max_tokens": 4}}))
            fh.write(b"\n")
        if bad:
            fh.write(b'{"id": "broken", "query": 5}\n')
    return path


def run_args(url: str, jobs: Path, *extra: str) -> list[str]:
    return [
        "run", str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
        "--progress", "log", *extra,
    ]  # fmt: skip


def result_ids(tmp: Path) -> Counter[str]:
    path = tmp / "jobs.results.jsonl"
    if not path.exists():
        return Counter()  # killed before the pre-flight checks passed: nothing was created
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), "partial last line"
    return Counter(orjson.loads(line)["custom_id"] for line in raw.splitlines())


def test_missing_file_and_bad_config_exit_2(tmp_path: Path) -> None:
    r = runner("run", str(tmp_path / "nope.jsonl"))
    assert r.returncode == 2 and "nope.jsonl" in r.stderr
    cfg = tmp_path / "bad.toml"
    cfg.write_text('concurrency = "many"\nbogus = 1\n')
    r = runner("run", str(jobs_file(tmp_path, 1)), "-c", str(cfg))
    assert r.returncode == 2 and "bogus" in r.stderr


def test_default_run_on_builtin_mock_exits_0(tmp_path: Path) -> None:
    jobs = jobs_file(tmp_path, 30)
    r = runner("run", str(jobs), "--progress", "off")
    assert r.returncode == 0, r.stderr
    assert set(result_ids(tmp_path).values()) == {1} and len(result_ids(tmp_path)) == 30
    summary = orjson.loads((tmp_path / "jobs.summary.json").read_bytes())
    assert summary["jobs"]["ok"] == 30
    assert "30 ok" in r.stderr  # the summary table


def test_bad_line_exits_1_and_validate_names_it(tmp_path: Path, mock_url: str) -> None:
    jobs = jobs_file(tmp_path, 5, bad=True)
    r = runner(*run_args(mock_url, jobs))
    assert r.returncode == 1
    rs = [orjson.loads(x) for x in (tmp_path / "jobs.results.jsonl").read_bytes().splitlines()]
    err = [x for x in rs if x["error"]]
    assert len(rs) == 6 and len(err) == 1
    assert "jobs.jsonl:6" in err[0]["error"]["message"] and "query" in err[0]["error"]["message"]
    v = runner("validate", str(jobs))
    assert v.returncode == 1 and "jobs.jsonl:6" in v.stdout


def test_second_run_on_the_same_output_is_refused(tmp_path: Path, mock_url: str) -> None:
    jobs = jobs_file(tmp_path, 5)
    lock = tmp_path / "jobs.results.jsonl.lock"
    holder = subprocess.Popen(
        [PY, "-c", (
            "import fcntl, os, sys, time\n"
            f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_RDWR)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(30)\n"
        )],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"held"
        r = runner(*run_args(mock_url, jobs))
        assert r.returncode == 2 and "another runner" in r.stderr
    finally:
        holder.kill()
        holder.wait()
        if holder.stdout is not None:
            holder.stdout.close()


@pytest.mark.parametrize(
    "mock_url", [["--base-ms", "300", "--decode-ms-per-token", "0"]], indirect=True
)
def test_sigint_drains_exits_130_and_resume_completes(tmp_path: Path, mock_url: str) -> None:
    jobs = jobs_file(tmp_path, 400)
    proc = subprocess.Popen(
        [PY, "-m", "runner", *run_args(mock_url, jobs, "--concurrency", "20")],
        stderr=subprocess.PIPE,
    )
    results = tmp_path / "jobs.results.jsonl"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not results.exists() or results.stat().st_size == 0):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    first = result_ids(tmp_path)
    assert 0 < len(first) < 400
    r = runner(*run_args(mock_url, jobs))
    assert r.returncode == 0, r.stderr
    ids = result_ids(tmp_path)
    assert len(ids) == 400 and set(ids.values()) == {1}


def complete_ids(path: Path) -> tuple[Counter[str], bytes]:
    """Ids of the complete lines, and the partial last line a kill -9 may leave (README)."""
    raw = path.read_bytes() if path.exists() else b""
    body, _, torn = raw.rpartition(b"\n")
    if not body and not raw.endswith(b"\n"):
        body, torn = b"", raw
    return Counter(orjson.loads(line)["custom_id"] for line in body.splitlines()), torn


def newlines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


@pytest.mark.parametrize(
    "mock_url", [["--base-ms", "30", "--decode-ms-per-token", "0"]], indirect=True
)
@pytest.mark.timeout(120)
def test_kill_9_at_random_moments_then_resume_gives_every_job_once(
    tmp_path: Path, mock_url: str
) -> None:
    """The README's promise, exactly: a kill -9 keeps every written line, may leave one
    partial last line, and the next run cuts it off and ends with every job once.

    Each kill lands once the results file has grown by a seeded number of lines (not after a
    sleep), so the sequence of kills is the same on a fast or a loaded machine; whatever the
    moment, the assertions hold, so the test is deterministic.
    """
    n = 600
    jobs = jobs_file(tmp_path, n)
    out = tmp_path / "jobs.results.jsonl"
    rng = random.Random(20261126)
    for _trial in range(12):
        before = complete_ids(out)[0]
        start = newlines(out)
        proc = subprocess.Popen(
            [PY, "-m", "runner", *run_args(mock_url, jobs, "--concurrency", "16")],
            stderr=subprocess.DEVNULL,
        )
        grow = rng.randint(0, 40)  # 0: kill during start-up, before any line is written
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if newlines(out) >= start + grow:
                break
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        ids, _torn = complete_ids(out)  # a partial last line is allowed, and left for resume
        assert set(ids.values()) <= {1}, "a job written twice"
        assert before.keys() <= ids.keys(), "a written line was lost"
    # One more torn tail, made on purpose, so the repair is exercised on every run of the test.
    with out.open("ab") as fh:
        fh.write(b'{"id": "batch_req_torn", "custom_id": "q')
    r = runner(*run_args(mock_url, jobs))
    assert r.returncode == 0, r.stderr
    ids = result_ids(tmp_path)  # asserts: no partial last line any more
    assert len(ids) == n and set(ids.values()) == {1}
    lat = (tmp_path / "jobs.latency.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(x)["custom_id"] for x in lat) == sorted(ids)


@pytest.mark.parametrize("mock_url", [["--latency", "zero", "--rpm", "3000"]], indirect=True)
@pytest.mark.timeout(120)
def test_rate_limit_learned_from_headers(tmp_path: Path, mock_url: str) -> None:
    """Server at 3,000 RPM, runner told 30,000: no lost jobs, paced within 10% of the limit.

    The server's bucket starts with a minute's allowance, more than the whole file, so only
    the limit learned from the response headers keeps the runner from sending at 30,000 RPM.
    """
    n = 600  # paced at 50/s once the limit is learned from the first responses
    jobs = jobs_file(tmp_path, n)
    root = mock_url.rsplit("/v1", 1)[0]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [PY, "-m", "runner", *run_args(mock_url, jobs, "--rpm", "30000", "--concurrency", "64")],
        stderr=subprocess.PIPE,
    )
    time.sleep(max(0.0, 3.0 - (time.monotonic() - t0)))  # count 429s after the learning phase
    urllib.request.urlopen(urllib.request.Request(root + "/stats/reset", method="POST"))
    _, err = proc.communicate(timeout=100)
    stats = orjson.loads(urllib.request.urlopen(root + "/stats").read())
    assert proc.returncode == 0, err
    ids = result_ids(tmp_path)
    assert len(ids) == n and set(ids.values()) == {1}
    recs = [orjson.loads(x) for x in (tmp_path / "jobs.latency.jsonl").read_bytes().splitlines()]
    ends = sorted(r["ended_at"] for r in recs)
    # 50/s after a one-second burst: about 11 s in all; unpaced, it takes well under one.
    assert ends[-1] - ends[0] >= 0.8 * (n - 50) / 50, "sent faster than the server's limit"
    steady = [e for e in ends if e >= ends[0] + 2.0]
    rate_per_min = (len(steady) - 1) / (steady[-1] - steady[0]) * 60.0
    assert 0.9 * 3000 <= rate_per_min <= 1.1 * 3000, rate_per_min
    assert stats["rate_limited"] < 0.05 * stats["requests"], stats
