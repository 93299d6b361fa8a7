"""The CLI keeps the cyclic collector off while start-up loads modules, and only then."""

from __future__ import annotations

import argparse
import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner import cli, gcpolicy


@pytest.fixture(autouse=True)
def _gc_as_it_was() -> Iterator[None]:
    was_on, threshold = gc.isenabled(), gc.get_threshold()
    yield
    gc.set_threshold(*threshold)
    if was_on:
        gc.enable()
    else:
        gc.disable()


def test_a_run_loads_its_modules_with_the_collector_off_and_runs_with_it_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    states: list[tuple[str, bool]] = []
    tune = cli._tune_gc

    def spy(concurrency: int) -> None:
        states.append(("tune", gc.isenabled()))
        tune(concurrency)
        states.append(("tuned", gc.isenabled()))

    monkeypatch.setattr(cli, "_tune_gc", spy)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "a", "query": "hi"}\n')
    gc.enable()
    assert cli.main(["run", str(jobs), "--progress", "off", "--quiet", "--concurrency", "300"]) == 0
    # off through start-up (engine and aiohttp imported), on for the run, on after main()
    assert states == [("tune", False), ("tuned", True)]
    assert gc.isenabled()
    assert gc.get_threshold()[0] == gcpolicy.gen0_threshold(300) == 300 * gcpolicy.GEN0_PER_SLOT


def test_other_commands_run_with_the_collector_on_and_errors_restore_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[bool] = []

    def validate(ns: argparse.Namespace) -> int:
        seen.append(gc.isenabled())
        return 0

    monkeypatch.setattr(cli, "_cmd_validate", validate)
    gc.enable()
    assert cli.main(["validate", str(tmp_path / "jobs.jsonl")]) == 0
    assert seen == [True] and gc.isenabled()
    # a command line that fails before the command starts gives the collector back
    with pytest.raises(SystemExit):
        cli.main(["run", str(tmp_path / "jobs.jsonl"), "--concurrency", "many"])
    assert gc.isenabled()
    # a caller that keeps the collector off keeps it off
    gc.disable()
    assert cli.main(["validate", str(tmp_path / "jobs.jsonl")]) == 0
    assert seen == [True, False] and not gc.isenabled()
