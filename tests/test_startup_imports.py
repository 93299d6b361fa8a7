"""Start-up stays lean: a plain run imports only what its first request needs.

Every module a run loads before its first request is CPU the user pays on each invocation
(benchmarks/bench_startup.py measures it), so the parts a plain OpenAI run never uses load where
they are used: explicit caches (a provider with a cache store), shards (``--shard``), the
report, the mock, bench, validate and rich. A child process records ``sys.modules`` at its first
chat request; the ``--shard`` run shows that the probe does see a module imported late.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import PY, mock_process

from runner import cli

# Records the runner and rich modules loaded when the first POST leaves, then runs the CLI.
_CHILD = """
import json, sys
import aiohttp
from runner.cli import main

send = aiohttp.ClientSession._request
seen = []

async def first_post(self, method, url, *args, **kwargs):
    if method == "POST" and not seen:
        seen.append(sorted(m for m in sys.modules if m.split(".")[0] in ("runner", "rich")))
        with open(sys.argv[1], "w") as fh:
            json.dump(seen[0], fh)
    return await send(self, method, url, *args, **kwargs)

aiohttp.ClientSession._request = first_post
sys.exit(main(sys.argv[2:]))
"""

# Loaded only for the commands, flags or providers that need them.
_LATE = (
    "rich",
    "runner.bench",
    "runner.explicit_cache",
    "runner.mock",
    "runner.report",
    "runner.shards",
    "runner.validate",
)


def _modules_at_first_request(tmp_path: Path, url: str, *extra: str) -> set[str]:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "q1", "query": "hi"}\n')
    seen = tmp_path / "modules.json"
    argv = [
        "run", str(jobs), "--provider", "openai", "--base-url", url, "--model", "mock-1",
        "--progress", "off", "--quiet", *extra,
    ]  # fmt: skip
    r = subprocess.run(
        [PY, "-c", _CHILD, str(seen), *argv], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    modules = set(json.loads(seen.read_text()))
    assert "runner.pipeline" in modules  # the probe ran at the request, not before the engine
    return modules


@pytest.fixture(scope="module")
def mock_url() -> Iterator[str]:
    with mock_process("--latency", "zero") as url:
        yield url


def test_a_plain_openai_run_loads_no_optional_part_before_its_first_request(
    tmp_path: Path, mock_url: str
) -> None:
    modules = _modules_at_first_request(tmp_path, mock_url)  # cache "warm", the default
    assert sorted(modules.intersection(_LATE)) == []


def test_a_sharded_run_loads_runner_shards(tmp_path: Path, mock_url: str) -> None:
    modules = _modules_at_first_request(tmp_path, mock_url, "--shard", "0/1")
    assert "runner.shards" in modules
    assert "runner.explicit_cache" not in modules


def test_a_run_makes_only_its_own_subparser_and_its_usage_still_names_every_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    parser = cli.build_parser("run", alone=True)
    with pytest.raises(SystemExit):
        parser.parse_args(["validate", "jobs.jsonl"])  # not made: an invalid choice here
    assert "invalid choice: 'validate'" in capsys.readouterr().err
    assert "{run,validate,status,mock,bench,caches,merge,report}" in parser.format_usage()
    with pytest.raises(SystemExit):
        cli.main(["run", "jobs.jsonl", "--bogus"])
    err = capsys.readouterr().err  # an unknown flag is named by run's own parser
    assert "usage: runner run " in err
    assert "runner run: error: unrecognized arguments: --bogus" in err
