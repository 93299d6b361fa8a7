"""Shared helpers of the tests that hold the README's Reliability promises (issue 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from runner import cli

FAST = '[mock]\nlatency = "zero"\n'


def write_jobs(tmp: Path, n: int, *, name: str = "jobs.jsonl", pad: int = 0) -> Path:
    path = tmp / name
    with path.open("wb") as fh:
        for i in range(n):
            job = {"id": f"q{i}", "query": f"q {i} " + "x" * pad, "params": {"max_tokens": 4}}
            fh.write(orjson.dumps(job) + b"\n")
    return path


def fast_config(tmp: Path, extra: str = "") -> Path:
    """A config for the built-in mock answering at once (no provider named)."""
    path = tmp / "fast.toml"
    path.write_text('progress = "off"\n' + extra + FAST)
    return path


def cli_run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``runner ARGS`` in this process: (exit code, stderr)."""
    capsys.readouterr()
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def run_fast(capsys: pytest.CaptureFixture[str], jobs: Path, *flags: str) -> tuple[int, str]:
    """``runner run JOBS -c FAST FLAGS`` in this process, FAST being :func:`fast_config` beside
    the jobs file: (exit code, stderr)."""
    return cli_run(capsys, "run", str(jobs), "-c", str(fast_config(jobs.parent)), *flags)


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in path.read_bytes().splitlines()]


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def refused_outputs(
    tmp: Path, capsys: pytest.CaptureFixture[str], command: str, flags: list[str]
) -> str:
    """Run ``command`` (``run`` or ``bench``) over a jobs file, a config and a contexts file in
    ``tmp`` with ``flags`` (``{jobs}``, ``{config}``, ``{contexts}``, ``{link}``: a symlink to the
    jobs file, ``{tmp}``), assert it is refused (exit 2, an output naming an input or two outputs
    on one file) with every file in ``tmp`` untouched and none created; return stderr."""
    jobs = write_jobs(tmp, 5)
    config = fast_config(tmp)
    contexts = tmp / "contexts.jsonl"
    contexts.write_text('{"cache_id": "c", "system": "s"}\n')
    link = tmp / "link.jsonl"
    link.symlink_to(jobs)

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}

    before = snapshot()
    args = [
        f.format(jobs=jobs, config=config, contexts=contexts, link=link, tmp=tmp) for f in flags
    ]
    head = ["run", str(jobs)] if command == "run" else ["bench", "--jobs", str(jobs)]
    code, err = cli_run(capsys, *head, "-c", str(config), "--contexts", str(contexts), *args)
    assert code == 2, err
    assert "refusing to overwrite an input" in err or "are the same file" in err
    assert snapshot() == before  # no input changed, no output created
    return err
