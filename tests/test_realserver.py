"""Against a real inference server no one here wrote: llama.cpp's ``llama-server``.

Built by ``make realserver`` (see docs/REALSERVER.md) into ``~/.cache/runner-realserver`` (or
``$RUNNER_REALSERVER``): the binary from the llama.cpp sources vendored in the PyPI sdist of
``llama-cpp-python`` and a tiny random-weight GGUF model made locally. Skipped when not built.
The server runs on a free loopback port with one thread and is stopped by its pid.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from runner.api import run
from runner.config import RunConfig

HOME = Path(
    os.environ.get("RUNNER_REALSERVER")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runner-realserver"
)
BINARY = HOME / "bin" / "llama-server"
MODEL = HOME / "tiny.gguf"
SLOTS = 8

pytestmark = pytest.mark.skipif(
    not (BINARY.is_file() and MODEL.is_file()),
    reason=f"llama-server is not built ({BINARY} missing): run `make realserver` (~10 min)",
)

# One token each in the test model's vocabulary (tools/realserver/make_model.py).
WORDS = (
    "the of and to in is it you that he was for on are with as his they be at one have this "
    "from or had by not word but what some we can out other were all there when up use your"
).split()


@pytest.fixture
def llama_url(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "llama-server.log").open("wb")
    proc = subprocess.Popen(
        [
            str(BINARY), "-m", str(MODEL), "--alias", "tiny", "--host", "127.0.0.1",
            "--port", str(port), "-c", str(4096 * SLOTS), "-np", str(SLOTS), "--kv-unified",
            "-t", "1", "-tb", "1", "-b", "512", "-ub", "512", "--cache-reuse", "256",
            "--cache-ram", "1024", "--no-webui",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "llama-server.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, "llama-server not ready after 60 s"
                time.sleep(0.1)
        yield url + "/v1"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def write_jobs(tmp: Path, groups: int, questions: int, words: int) -> Path:
    rng = random.Random(11)
    with (tmp / "contexts.jsonl").open("wb") as fh:
        for c in range(groups):
            text = " ".join([f"{WORDS[c]} {c}.", *(rng.choice(WORDS) for _ in range(words))])
            fh.write(orjson.dumps({"cache_id": f"doc{c}", "system": text}) + b"\n")
    jobs = [(c, q) for c in range(groups) for q in range(questions)]
    rng.shuffle(jobs)
    path = tmp / "jobs.jsonl"
    with path.open("wb") as fh:
        for c, q in jobs:
            line = {
                "id": f"c{c}-q{q}",
                "cache_id": f"doc{c}",
                "query": f"{q} {rng.choice(WORDS)} {rng.choice(WORDS)}?",
                "params": {"max_tokens": 4},
            }
            fh.write(orjson.dumps(line) + b"\n")
    return path


def config(tmp: Path, url: str, **kw: object) -> RunConfig:
    base: dict[str, object] = {
        "provider": "openai",
        "base_url": url,
        "model": "tiny",
        "concurrency": SLOTS,
        "progress": "off",
        "min_cacheable_tokens": 256,
        "output": tmp / "r.jsonl",
        "latency": tmp / "l.jsonl",
        "summary": tmp / "s.json",
        "contexts": tmp / "contexts.jsonl",
        "resume": False,
    }
    base.update(kw)
    return RunConfig(**base)  # type: ignore[arg-type]


@pytest.mark.timeout(120)
async def test_llama_server_reports_cached_tokens(tmp_path: Path, llama_url: str) -> None:
    jobs = write_jobs(tmp_path, groups=1, questions=3, words=600)
    out = await run(jobs, config(tmp_path, llama_url, concurrency=1))
    assert out.exit_code == 0
    recs = [orjson.loads(x) for x in (tmp_path / "l.jsonl").read_bytes().splitlines()]
    assert len(recs) == 3
    first, *rest = sorted(recs, key=lambda r: r["started_at"])
    assert first["prompt_tokens"] > 600
    # One request at a time on one group: every later one reuses the prefix in its slot.
    assert all(r["cached_tokens"] >= 600 for r in rest)


@pytest.mark.timeout(300)
async def test_warm_learns_one_group_per_slot(tmp_path: Path, llama_url: str) -> None:
    """8 slots x 8 groups x 16 questions, shuffled: at least 0.85 of prompt tokens cached
    (before the controller: 0.485), with one request per group in flight."""
    jobs = write_jobs(tmp_path, groups=8, questions=16, words=900)
    out = await run(jobs, config(tmp_path, llama_url))
    assert out.exit_code == 0
    assert out.summary["cache_hit_ratio"] >= 0.85, out.summary["cache_control"]
    # One request per group in flight (the tail, with slots to spare, may probe one more).
    assert out.summary["cache_control"]["group_concurrency"] <= 2


@pytest.mark.timeout(120)
def test_a_streamed_closed_loop_against_llama_server_loses_no_request_to_its_closes(
    tmp_path: Path, llama_url: str
) -> None:
    """llama-server closes the connection after each streamed answer, unannounced: a request
    put on that pooled connection failed at once (10-11 of these 24 before the client sent a
    request it could not write again at once, tests/providers/test_wire_closed_keepalive.py).
    One the server read and then dropped stays a failure here (it may have been applied), so
    a few are allowed: 0 / 1 / 0 / 2 of 24 in four runs here, 10-11 each before."""
    import sys

    failed = []
    for _ in range(2):
        out = tmp_path / "b.jsonl"
        r = subprocess.run(
            [sys.executable, "-m", "runner", "bench", "--provider", "openai", "--base-url",
             llama_url, "--model", "tiny", "--requests", "24", "--concurrency", "4",
             "--stream", "--prompt-tokens", "64", "--output-tokens", "8", "--latency", str(out)],
            capture_output=True, text=True, timeout=100,
        )  # fmt: skip
        assert r.returncode in (0, 1), r.stderr[-2000:]
        recs = [orjson.loads(x) for x in out.read_bytes().splitlines()]
        assert len(recs) == 24
        failed.append(sum(1 for x in recs if x["error_code"] is not None))
    assert sum(failed) <= 8, failed  # of 48; 20-22 before the resend
