"""Redis refusing runner is a pre-flight error: exit 2 with every output untouched.

Found walking the README's Indexed Job as a newcomer: a pod with a wrong
``RUNNER_REDIS_PASSWORD`` and ``--no-resume`` (a fresh night's run) truncated the last run's
results and latency records to zero lines, then stopped with exit 2 ("Redis refused runner"):
the credential check ran after the outputs were opened. A new output got empty files and a
meta file, so ``runner status`` called a run that never started "not done".
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from scaleout import redis_with_users

PASSWORD = "right-Redis-PW-5c1d"
FAST = 'progress = "off"\n[mock]\nlatency = "zero"\n'


@pytest.fixture(scope="module")
def redis_port() -> Iterator[int]:
    with redis_with_users(("runner", "on", f">{PASSWORD}", "~*", "+@all")) as port:
        yield port


def _run(tmp_path: Path, port: int, password: str, out: Path, *flags: str) -> tuple[int, str]:
    jobs = tmp_path / "jobs.jsonl"
    if not jobs.exists():
        jobs.write_text("".join(f'{{"id": "j{i}", "query": "q{i}"}}\n' for i in range(4)))
    config = tmp_path / "fast.toml"
    config.write_text(FAST)
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(config),
         "--redis-url", f"redis://runner@127.0.0.1:{port}/0", "-o", str(out), *flags],
        env={"PATH": "/usr/bin:/bin", "RUNNER_REDIS_PASSWORD": password},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    return done.returncode, done.stderr


def test_a_wrong_redis_password_with_no_resume_keeps_the_last_results(
    tmp_path: Path, redis_port: int
) -> None:
    out = tmp_path / "r.results.jsonl"
    code, said = _run(tmp_path, redis_port, PASSWORD, out)
    assert code == 0, said
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("r.")}
    assert out.read_bytes().count(b"\n") == 4
    code, said = _run(tmp_path, redis_port, "wrong-PW", out, "--no-resume")
    assert code == 2, said
    assert "Redis refused runner" in said
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("r.")}
    assert after == before  # the last run's results, latency, summary and meta as they were


def test_a_wrong_redis_password_creates_no_output(tmp_path: Path, redis_port: int) -> None:
    out = tmp_path / "new" / "r.results.jsonl"
    code, said = _run(tmp_path, redis_port, "wrong-PW", out, "--shard", "0/2")
    assert code == 2 and "Redis refused runner" in said, said
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())
