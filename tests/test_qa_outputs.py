"""Found by QA: ``--metrics-textfile`` was left out of the output pre-flight check, so naming the
jobs file, the config or the results file there ran every job and then wrote the metrics over
that file (exit 0 with the jobs file replaced by Prometheus text). It is now checked like every
other output: exit 2 before anything is opened, every file untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import refused_outputs


@pytest.mark.parametrize(
    "flags",
    [
        ["--metrics-textfile", "{jobs}"],
        ["--metrics-textfile", "{config}"],
        ["--metrics-textfile", "{contexts}"],
        ["--metrics-textfile", "{link}"],  # a symlink to the jobs file
        ["-o", "{tmp}/r.results.jsonl", "--metrics-textfile", "{tmp}/r.results.jsonl"],
        ["-o", "{tmp}/r.results.jsonl", "--metrics-textfile", "{tmp}/r.latency.jsonl"],
    ],
)
def test_a_metrics_textfile_naming_an_input_or_output_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    err = refused_outputs(tmp_path, capsys, "run", flags)
    assert "--metrics-textfile" in err


@pytest.mark.parametrize(
    "flags",
    [
        ["--latency", "{jobs}"],
        ["--summary", "{jobs}"],
        ["--latency", "{contexts}"],
        ["--summary", "{config}"],
        ["--latency", "{link}"],
        ["--latency", "{tmp}/same.json", "--summary", "{tmp}/same.json"],
    ],
)
def test_bench_outputs_naming_an_input_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """Also found by QA: ``runner bench --jobs J --latency J`` replaced the jobs file it replays
    with latency records (exit 0)."""
    refused_outputs(tmp_path, capsys, "bench", flags)
