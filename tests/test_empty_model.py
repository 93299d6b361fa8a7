"""An empty model is refused, naming where it came from: it is almost always an unset shell
variable (``--model "$MODEL"``), and it was accepted and sent to the provider as ``""``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, lines, write_jobs

from runner.config import RunConfig
from runner.errors import ConfigError

HINT = ' (an unset shell variable, as in --model "$MODEL"?)'


@pytest.mark.parametrize("command", ["run", "validate"])
@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_model_flag_is_exit_2_before_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, value: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path)
    before = sorted(os.listdir(tmp_path))
    code, err = cli_run(capsys, command, str(jobs), "-c", str(config), "--model", value)
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"runner {command}: error: argument --model: must not be empty, got {value!r}{HINT}"
    )
    assert sorted(os.listdir(tmp_path)) == before


def test_an_empty_model_in_the_config_file_is_exit_2_naming_the_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path, 'model = ""\n')
    before = sorted(os.listdir(tmp_path))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2
    assert err.strip() == f"runner: error: {config}: model must not be empty, got ''{HINT}"
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("command", ["bench", "report", "merge"])
def test_the_other_commands_model_flags_refuse_it_too(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
) -> None:
    args = {"bench": ["--requests", "1"], "report": ["x.jsonl"], "merge": ["x.jsonl"]}
    monkeypatch.chdir(tmp_path)
    code, err = cli_run(capsys, command, *args[command], "--model", "")
    assert code == 2
    assert f"argument --model: must not be empty, got ''{HINT}" in err
    assert os.listdir(tmp_path) == []


def test_with_overrides_refuses_an_empty_model() -> None:
    with pytest.raises(ConfigError, match="model must not be empty") as info:
        RunConfig().with_overrides(model="")
    assert info.value.exit_code == 2
    assert RunConfig().with_overrides(model=None).model == "mock-1"  # None: not given


@pytest.mark.parametrize("model", ["mock-1", "qwen2.5-7b-instruct-q4_k_m.gguf", "x"])
def test_any_non_empty_model_still_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """The mock and llama.cpp-style servers take any name: nothing else is checked."""
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "--model", model
    )
    assert code == 0, err
    results = lines(tmp_path / "jobs.results.jsonl")
    assert [r["response"]["body"]["model"] for r in results] == [model, model]
