"""A jobs file of which no line is a job (a JSON array, CSV, UTF-16) says so after the table.

The run's table said only "0 ok, 2 failed (invalid_input 2)", exit 1, with the reasons inside
the results file; ``runner validate`` already said "this does not look like JSONL".
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config

_ARRAY = b'[{"id": "a", "query": "q"},\n {"id": "b", "query": "r"}]\n'


def test_a_json_array_file_gets_a_warning_naming_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "arr.jsonl"
    jobs.write_bytes(_ARRAY)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"runner: warning: no line of {jobs} is a valid job (2 invalid_input results): "
        f"runner validate {jobs} names the problem of each line (docs/FORMATS.md)"
    )


def test_json_logs_get_it_as_one_warning_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "arr.jsonl"
    jobs.write_bytes(_ARRAY)
    config = fast_config(tmp_path)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "--log-format", "json")
    assert code == 1
    events = [orjson.loads(line) for line in err.strip().splitlines()]
    said = [e for e in events if e["event"] == "warning" and "no line of" in e["message"]]
    assert len(said) == 1 and said[0]["message"].endswith(
        "names the problem of each line (docs/FORMATS.md)"
    )


def test_one_good_line_is_no_such_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "some.jsonl"
    jobs.write_bytes(b'{"id": "a", "query": "q"}\nnot json\n')
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 1 and "invalid_input 1" in err
    assert "no line of" not in err
