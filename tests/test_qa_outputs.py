"""Found by QA: ``--metrics-textfile`` was left out of the output pre-flight check, so naming the
jobs file, the config or the results file there ran every job and then wrote the metrics over
that file (exit 0 with the jobs file replaced by Prometheus text). It is now checked like every
other output: exit 2 before anything is opened, every file untouched."""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs


def _snapshot(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}


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
    jobs = write_jobs(tmp_path, 5)
    config = fast_config(tmp_path)
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text('{"cache_id": "c", "system": "s"}\n')
    (tmp_path / "link.jsonl").symlink_to(jobs)
    before = _snapshot(tmp_path)
    args = [
        f.format(
            jobs=jobs, config=config, contexts=contexts, link=tmp_path / "link.jsonl", tmp=tmp_path
        )
        for f in flags
    ]
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(config), "--contexts", str(contexts), *args
    )
    assert code == 2, err
    assert "--metrics-textfile" in err
    assert "refusing to overwrite an input" in err or "are the same file" in err
    assert _snapshot(tmp_path) == before  # no input changed, no output created


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
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    contexts = tmp_path / "contexts.jsonl"
    contexts.write_text('{"cache_id": "c", "system": "s"}\n')
    (tmp_path / "link.jsonl").symlink_to(jobs)
    before = _snapshot(tmp_path)
    args = [
        f.format(
            jobs=jobs, config=config, contexts=contexts, link=tmp_path / "link.jsonl", tmp=tmp_path
        )
        for f in flags
    ]
    code, err = cli_run(
        capsys, "bench", "-c", str(config), "--jobs", str(jobs), "--contexts", str(contexts), *args
    )
    assert code == 2, err
    assert "refusing to overwrite an input" in err or "are the same file" in err
    assert _snapshot(tmp_path) == before
