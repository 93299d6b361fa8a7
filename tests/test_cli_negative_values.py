"""A flag's value that starts with "-" and a digit is taken as the value: ``--shard -1/2`` was
argparse's "expected one argument" (it took "-1/2" for an option), where ``--shard=-1/2``
named the bad shard. No option of runner's starts with "-" and a digit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs


@pytest.mark.parametrize("value", ["-1/2", "-0/4", "-1"])
def test_a_negative_shard_gets_the_same_clear_error_either_way(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = fast_config(tmp_path)
    before = sorted(os.listdir(tmp_path))
    said = []
    for form in (["--shard", value], [f"--shard={value}"]):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *form)
        assert code == 2, err
        said.append(err.strip().splitlines()[-1])
    assert said[0] == said[1]
    assert "expected one argument" not in said[0]
    assert f"got {value!r}" in said[0]
    assert sorted(os.listdir(tmp_path)) == before


def test_negative_numbers_in_other_notations_are_values_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), "--max-cost", "-1e3")
    assert code == 2
    assert err.strip().splitlines()[-1] == "runner: error: max_cost must be > 0, got -1000.0"


def test_a_missing_value_before_another_flag_is_still_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only "-" and a digit is a value: ``--shard --workers 2`` still lacks the shard."""
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), "--shard", "--workers", "2")
    assert code == 2
    assert (
        err.strip().splitlines()[-1] == "runner run: error: argument --shard: expected one argument"
    )
    code, err = cli_run(capsys, "run", str(jobs), "--shard", "-q")
    assert code == 2
    assert "argument --shard: expected one argument" in err


def test_other_commands_take_such_values_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The subcommands' parsers are the same class: ``runner bench --requests -5``."""
    code, err = cli_run(capsys, "bench", "--requests", "-5e1")
    assert code == 2
    assert "expected one argument" not in err and "-5e1" in err
