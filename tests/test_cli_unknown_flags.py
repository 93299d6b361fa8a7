"""A mistyped flag is named by its own command, with a did-you-mean; exit 2, nothing opened.

argparse reported ``runner run jobs.jsonl --concurency 4`` with the top-level usage
(``runner [-h] [--version] {run,...}``) and no hint, though a mistyped config key or choice
has one.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, write_jobs


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--concurency", "4"], "--concurency 4; did you mean '--concurrency'?"),
        (["--concurency=4"], "--concurency=4; did you mean '--concurrency'?"),
        (["--dryrun"], "--dryrun; did you mean '--dry-run'?"),
    ],
)
def test_a_mistyped_run_flag_names_the_run_command_and_the_flag_meant(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), *args)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last == f"runner run: error: unrecognized arguments: {said}"
    assert "usage: runner run " in err and "{run,validate" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == [jobs.name]


def test_an_unknown_flag_with_nothing_close_gets_no_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli_run(capsys, "mock", "--bogus")
    assert code == 2
    assert err.strip().splitlines()[-1] == "runner mock: error: unrecognized arguments: --bogus"


def test_another_command_and_a_stray_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = cli_run(capsys, "merge", "a", "b", "--partal")
    assert code == 2
    assert err.strip().endswith("unrecognized arguments: --partal; did you mean '--partial'?")
    code, err = cli_run(capsys, "run", "x.jsonl", "y.jsonl")
    assert code == 2
    assert err.strip().splitlines()[-1] == "runner run: error: unrecognized arguments: y.jsonl"


def test_json_logs_get_the_hint_in_one_error_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), "--log-format", "json", "--concurency", "3")
    assert code == 2
    (line,) = err.strip().splitlines()
    event = orjson.loads(line)
    assert event["event"] == "error" and event["exit_code"] == 2
    said = "unrecognized arguments: --concurency 3; did you mean '--concurrency'?"
    assert event["message"] == said
