"""``.`` or a directory where a command wants a runner output file is exit 2 naming it.

``runner merge OUT .``, ``runner merge . PARTS``, ``runner status .`` and ``runner caches .``
were a ``ValueError: PosixPath('.') has an empty name`` traceback (exit 1).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["merge", "out.results.jsonl", "."], ".: is a directory, not a shard's results file"),
        (["merge", ".", "part.results.jsonl"], ".: is a directory, not a results file (OUT)"),
        (["merge", "sub", "part.results.jsonl"], "sub: is a directory, not a results file (OUT)"),
        (["status", "."], ".: is a directory, not a results file"),
        (["status", ".."], "..: is a directory, not a results file"),
        (["caches", ".", "--provider", "gemini", "--base-url", "http://127.0.0.1:9/v1beta"],
         ".: is a directory, not a results file"),
    ],
)  # fmt: skip
def test_a_directory_for_an_output_file_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    said: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = cli_run(capsys, *args)
    assert code == 2, err
    assert err.strip() == f"runner: error: {said}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_merge_with_a_config_still_reaches_its_own_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = fast_config(tmp_path)
    code, err = cli_run(
        capsys, "merge", "out.results.jsonl", "missing.results.jsonl", "-c", str(config)
    )
    assert code == 2 and "Traceback" not in err and "is a directory" not in err
