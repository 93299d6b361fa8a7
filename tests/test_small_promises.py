"""Small promises users of similar tools expect (issue 9): each one a behaviour, each one a test.

Negative usage, a stop with only limiter-parked jobs, Ctrl-C during start-up, the SDKs' default
key variables, timestamped log lines, per-job metadata, the in-memory ``batch`` API and
``Job.from_dict``, a quiet ``run()`` as a library, and the README's API example.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_pipeline import FakeBackend, MemorySink, job

import runner
from runner.cli import main
from runner.config import Provider, RunConfig
from runner.errors import InputError
from runner.models import Attempt, Job
from runner.pipeline import Engine, LiveStats
from runner.progress import ProgressDisplay
from runner.providers import anthropic, openai

REPO = Path(__file__).resolve().parents[1]


# -- numbers that are not counts ---------------------------------------------------------------


def test_negative_usage_numbers_count_as_unknown_never_negative() -> None:
    o = openai.parse_usage(
        {
            "prompt_tokens": -5,
            "completion_tokens": -1,
            "prompt_tokens_details": {"cached_tokens": -3, "cache_write_tokens": -2},
        }
    )
    a = anthropic.parse_usage(
        {
            "input_tokens": -10,
            "output_tokens": -4,
            "cache_read_input_tokens": -7,
            "cache_creation_input_tokens": -1,
        }
    )
    for u in (o, a):
        assert u is not None
        assert u.prompt_tokens >= 0 and u.completion_tokens >= 0 and u.cache_write_tokens >= 0
        assert (u.cached_tokens or 0) >= 0


# -- a stop while jobs wait in the limiter -----------------------------------------------------


class ParkedLimiter:
    """A limiter in a long 429 pause: nobody gets a slot."""

    def __init__(self, expect: int) -> None:
        self.waiting = 0
        self.expect = expect
        self.all_parked = asyncio.Event()

    async def acquire(self, est_tokens: int) -> float:
        self.waiting += 1
        if self.waiting >= self.expect:
            self.all_parked.set()
        await asyncio.Event().wait()
        return 0.0

    def release(self, est_tokens: int, attempt: Attempt) -> None:
        pass


async def test_stop_with_only_limiter_parked_jobs_is_immediate() -> None:
    sink, be, limiter = MemorySink(), FakeBackend(), ParkedLimiter(expect=4)
    config = RunConfig(concurrency=4, progress="off", drain_s=30.0)
    eng = Engine(config, backend=be, sink=sink, limiter=limiter)
    task = asyncio.create_task(eng.run([job(i) for i in range(20)]))
    await asyncio.wait_for(limiter.all_parked.wait(), 5)
    t0 = time.perf_counter()
    eng.request_stop("signal", 143)  # SIGTERM: drain what is on the wire, nothing is
    out = await asyncio.wait_for(task, 5)
    assert time.perf_counter() - t0 < 2, "waited for the drain deadline"
    assert out.exit_code == 143 and be.sent == [] and sink.results == []  # all left for resume


# -- Ctrl-C during start-up --------------------------------------------------------------------


def test_ctrl_c_while_the_command_loads_exits_130_quietly(tmp_path: Path) -> None:
    # An import hook raises KeyboardInterrupt where a Ctrl-C would land while `python -m
    # runner` imports its modules: deterministic, unlike a timed signal.
    code = textwrap.dedent(
        """
        import runpy, sys
        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "runner.config":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, Interrupt())
        sys.argv = ["runner", "run", "jobs.jsonl"]
        runpy.run_module("runner", run_name="__main__", alter_sys=True)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert r.returncode == 130 and "Traceback" not in r.stderr, r.stderr


def test_ctrl_c_while_the_parser_is_built_exits_130_quietly(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*_: object, **__: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("runner.cli.build_parser", interrupted)
    assert main(["run", "x.jsonl"]) == 130
    assert "Traceback" not in capsys.readouterr().err


# -- the SDKs' default key variables -----------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "var"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")]
)
def test_provider_reads_the_sdk_key_variable_by_default(
    monkeypatch: pytest.MonkeyPatch, provider: Provider, var: str
) -> None:
    config = RunConfig(provider=provider, base_url="http://h/v1")
    monkeypatch.delenv(var, raising=False)
    assert config.api_key() is None  # a local server needs none
    monkeypatch.setenv(var, "sk-from-the-environment")
    assert config.api_key() == "sk-from-the-environment"
    monkeypatch.setenv("OTHER_KEY", "sk-other")
    assert RunConfig(provider=provider, base_url="http://h/v1", api_key_env="OTHER_KEY").api_key()
    assert RunConfig().api_key() is None  # the simulated provider never gets a key


# -- timestamped log lines ---------------------------------------------------------------------


def test_progress_log_lines_start_with_a_utc_timestamp() -> None:
    out = io.StringIO()
    clock = iter([0.0, 5.0])
    display = ProgressDisplay("log", out, clock=lambda: next(clock))
    display.tick(LiveStats(total=10, done=3))
    line = out.getvalue().splitlines()[0]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \[runner\] 3/10 done", line), line


# -- metadata, Job.from_dict and the in-memory batch API ---------------------------------------


def test_job_from_dict_takes_either_shape_and_names_a_bad_field() -> None:
    j = Job.from_dict({"id": "q1", "query": "Hi", "metadata": {"user": 7}})
    assert (j.custom_id, j.messages[-1]["content"], j.metadata) == ("q1", "Hi", {"user": 7})
    b = Job.from_dict(
        {"custom_id": "b1", "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}
    )
    assert b.model == "m" and b.messages[0]["content"] == "x"
    with pytest.raises(InputError, match=r"job:1: query: must be a string"):
        Job.from_dict({"id": "q", "query": 5})
    with pytest.raises(InputError, match=r"metadata: must be an object"):
        Job.from_dict({"id": "q", "query": "x", "metadata": [1]})


async def test_batch_runs_in_memory_with_metadata_and_latency_records(tmp_path: Path) -> None:
    config = RunConfig(progress="auto", mock={"latency": "zero"})
    jobs: list[Any] = [
        {"id": f"q{i}", "query": f"question {i}", "metadata": {"row": i}} for i in range(30)
    ]
    jobs.insert(5, {"id": "bad", "query": 3})
    jobs.append(Job.from_dict({"id": "obj", "query": "given as a Job"}))
    before = set(os.listdir(tmp_path))
    results = await runner.batch(jobs, config)
    assert [r.custom_id for r in results] == [
        *(f"q{i}" for i in range(5)), "bad", *(f"q{i}" for i in range(5, 30)), "obj"
    ]  # fmt: skip
    assert results[5].result["error"]["code"] == "invalid_input" and not results[5].ok
    ok = [r for r in results if r.ok]
    assert len(ok) == 31
    assert all(r.record.latency_ms is not None and r.record.custom_id == r.custom_id for r in ok)
    assert results[7].result["metadata"] == {"row": 6}
    assert isinstance(results[0].body["choices"][0]["message"]["content"], str)
    assert set(os.listdir(tmp_path)) == before


def test_metadata_is_copied_into_the_result_line(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(
        orjson.dumps({"id": "a", "query": "q", "metadata": {"tenant": "x", "n": [1, 2]}})
        + b"\n"
        + orjson.dumps({"id": "b", "query": "q"})
        + b"\n"
    )
    assert main(["run", str(jobs), "--progress", "off"]) == 0
    rows = {
        r["custom_id"]: r
        for r in map(orjson.loads, (tmp_path / "jobs.results.jsonl").read_bytes().splitlines())
    }
    assert rows["a"]["metadata"] == {"tenant": "x", "n": [1, 2]}
    assert "metadata" not in rows["b"]


async def test_run_as_a_library_shows_no_progress_unless_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "a", "query": "q"}\n')
    slow = {"base_ms": 600.0, "jitter": 0.0}  # lasts a few 0.2 s ticks
    often = RunConfig(mock=slow, log_interval_s=0.001)  # a line on every tick
    await runner.run(jobs, replace(often, output=tmp_path / "a.jsonl"))  # "auto"
    assert capsys.readouterr().err == ""
    await runner.run(jobs, replace(often, output=tmp_path / "b.jsonl", progress="log"))
    assert "[runner]" in capsys.readouterr().err  # asked for: shown


def test_readme_api_example_runs_and_leaves_no_stray_file() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Python API", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks
    before = set(os.listdir(REPO / "examples"))
    for code in blocks:
        r = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120
        )
        assert r.returncode == 0, r.stderr
    assert set(os.listdir(REPO / "examples")) == before


def test_readme_sample_output_has_the_rows_make_demo_prints(tmp_path: Path) -> None:
    from runner.config import load_config
    from runner.report import render_summary

    readme = (REPO / "README.md").read_text()
    sample = readme.split("```\n$ make demo", 1)[1].split("```", 1)[0].splitlines()[1:]
    jobs = tmp_path / "jobs.jsonl"  # the demo's first jobs, contexts and config
    head = (REPO / "examples" / "jobs.jsonl").read_bytes().splitlines(keepends=True)[:40]
    jobs.write_bytes(b"".join(head))
    config = load_config(REPO / "configs" / "mock.toml").with_overrides(
        mock={"latency": "zero"}, progress="off", contexts=REPO / "examples" / "contexts.jsonl"
    )
    table = render_summary(asyncio.run(runner.run(jobs, config)).summary).splitlines()

    def words(lines: list[str]) -> list[str]:
        """Each row with its figures blanked: the labels and wording must match exactly."""
        blank = (re.sub(r"[-\d,.$%]+", "#", line) for line in lines if line.strip())
        return [" ".join(line.split()) for line in blank]

    assert words(sample) == words(table)


# -- help, version and the docs agree ----------------------------------------------------------


def _options(sub: str) -> dict[str, str]:
    """Option -> help text of one subcommand, from the parser the CLI uses."""
    import argparse

    from runner.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        a.option_strings[-1]: a.help or ""
        for a in subs.choices[sub]._actions
        if a.option_strings
        and a.option_strings[-1] != "--help"
        and a.help != argparse.SUPPRESS  # internal flags (set by --workers) are not shown
    }


def test_every_run_flag_has_help_with_its_default() -> None:
    missing = {flag: text for flag, text in _options("run").items() if "default" not in text}
    assert missing == {}


def test_validate_help_lists_only_what_validate_uses() -> None:
    # --via batch makes validate estimate the batch cost next to the direct one (docs/BATCH.md)
    assert set(_options("validate")) == {"--config", "--contexts", "--model", "--via"}


def test_version_and_the_mock_429_delay_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"runner {runner.__version__}"
    text = _options("mock")["--fault-429-retry-ms"]
    assert "delay" in text and "rate" not in text


def test_code_and_docs_cite_only_files_in_the_repository() -> None:
    cited = re.compile(r"SPEC section|SPEC\.md|(?<![\w/])PROVIDERS\.md")
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "runner").rglob("*.py")]
    hits = [
        f"{path.relative_to(REPO)}:{n}"
        for path in files
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if cited.search(line) and "docs/PROVIDERS.md" not in line and "(PROVIDERS.md)" not in line
    ]
    assert hits == []
    assert (REPO / "docs" / "FORMATS.md").is_file() and (REPO / "docs" / "PROVIDERS.md").is_file()
