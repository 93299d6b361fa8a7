"""A path ending in "/" means a directory, the same from a flag or the config file.

``output = "res/"`` in the config wrote the results to a FILE named ``res`` (``-o res/`` puts
``JOBS.results.jsonl`` in ``res/``), and ``--summary d1/`` ran the whole batch before failing
to write its summary (exit 1): a ``Path`` drops the trailing "/".
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs


def test_output_ending_in_slash_in_the_config_is_a_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path, 'output = "res/"\n')
    code, err = cli_run(capsys, "run", jobs.name, "-c", config.name)
    assert code == 0, err
    assert (tmp_path / "res").is_dir()
    assert (tmp_path / "res" / f"{jobs.stem}.results.jsonl").is_file()
    assert (tmp_path / "res" / f"{jobs.stem}.summary.json").is_file()
    # the flag still wins over the file
    code, err = cli_run(capsys, "run", jobs.name, "-c", config.name, "-o", "flag.jsonl")
    assert code == 0, err
    assert (tmp_path / "flag.jsonl").is_file()


@pytest.mark.parametrize("flag", ["--summary", "--latency", "--metrics-textfile"])
def test_an_output_file_flag_ending_in_slash_is_exit_2_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), flag, f"{tmp_path}/d1/")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"runner run: error: argument {flag}: {tmp_path}/d1/ ends in '/': "
        "give a file name, not a directory"
    )
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("key", ["summary", "latency", "metrics_textfile"])
def test_a_config_output_file_ending_in_slash_is_exit_2_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, key: str
) -> None:
    monkeypatch.chdir(tmp_path)  # "d1/" is relative to the working directory
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path, f'{key} = "d1/"\n')
    before = sorted(os.listdir(tmp_path))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2
    assert err.strip() == (
        f"runner: error: {config}: {key} = 'd1/' ends in '/': give a file name, not a directory"
    )
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("flag", ["--latency", "--summary"])
def test_bench_output_files_ending_in_slash_are_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, flag: str
) -> None:
    """``runner bench --latency x/`` ran the benchmark and wrote a file named x."""
    monkeypatch.chdir(tmp_path)
    code, err = cli_run(capsys, "bench", "--requests", "1", flag, "x/")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"runner bench: error: argument {flag}: x/ ends in '/': give a file name, not a directory"
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["latency", "summary", "metrics_textfile"])
def test_the_python_api_refuses_an_output_file_ending_in_slash(tmp_path: Path, name: str) -> None:
    # Found by a new-user pass: run_batch(..., latency="/tmp/af/") wrote a file named "af":
    # Path() drops the "/". These name one file each, so the API asks for the file's own name.
    from runner.config import RunConfig
    from runner.errors import ConfigError

    raw = str(tmp_path / "af") + "/"
    with pytest.raises(ConfigError, match="ends in '/'") as info:
        RunConfig().with_overrides(**{name: raw})
    assert info.value.exit_code == 2
    assert not (tmp_path / "af").exists()


def _run_api(jobs: Path, config: object) -> int:
    import asyncio

    from runner import RunConfig, run

    assert isinstance(config, RunConfig)
    return asyncio.run(run(jobs, config)).exit_code


def test_load_config_with_an_output_directory_then_run_puts_the_files_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``output = "res/"`` through the Python API: ``run()`` wrote a FILE named ``res`` (the
    CLI alone re-read the TOML to see the "/"); the config now remembers it names a directory."""
    from runner.config import load_config

    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 3)
    config = load_config(fast_config(tmp_path, 'output = "res/"\n'))
    assert config.output == Path("res") and config.output_is_dir
    assert _run_api(jobs, config) == 0
    assert (tmp_path / "res").is_dir()
    assert len((tmp_path / "res" / "jobs.results.jsonl").read_bytes().splitlines()) == 3
    assert (tmp_path / "res" / "jobs.summary.json").is_file()


def test_with_overrides_output_ending_in_slash_names_a_directory(tmp_path: Path) -> None:
    from runner.config import RunConfig

    jobs = write_jobs(tmp_path, 2)
    base = RunConfig(mock={"latency": "zero"}, progress="off")
    in_dir = base.with_overrides(output=f"{tmp_path}/d/")
    assert in_dir.output_is_dir
    assert _run_api(jobs, in_dir) == 0
    assert (tmp_path / "d" / "jobs.results.jsonl").is_file()
    # a new output without the "/" names a file again: the flag wins over output = "d/"
    to_file = in_dir.with_overrides(output=str(tmp_path / "e"))
    assert not to_file.output_is_dir
    assert _run_api(jobs, to_file) == 0
    assert (tmp_path / "e").is_file()
    # overriding something else keeps the directory
    assert in_dir.with_overrides(concurrency=3).output_is_dir


def test_output_is_dir_is_not_a_config_file_key(tmp_path: Path) -> None:
    from runner.config import load_config
    from runner.errors import ConfigError

    path = fast_config(tmp_path, 'output = "res"\noutput_is_dir = true\n')
    with pytest.raises(ConfigError, match="unknown key 'output_is_dir'"):
        load_config(path)


def test_a_shard_of_an_output_directory_writes_inside_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path, 'output = "res/"\n')
    code, err = cli_run(capsys, "run", jobs.name, "-c", config.name, "--shard", "0/2")
    assert code == 0, err
    assert (tmp_path / "res" / "jobs.shard-0-of-2.results.jsonl").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fast.toml", "jobs.jsonl", "res"]
