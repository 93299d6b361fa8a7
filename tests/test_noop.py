"""runner.noop.keep_summary: the one rule by which a re-run that sent nothing leaves the summary
file as it is (a plain run, the merge of --workers and --via batch all ask it). The end-to-end
promises are in test_qa_ops_followup.py and test_qa_redteam4.py; these pin the rule's edges."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.noop import keep_summary


def _direct() -> dict[str, Any]:
    """A plain run's whole-output summary of a re-run that skipped every job."""
    return {
        "exit_code": 0,
        "model": "mock-1",
        "stopped": None,
        "not_sent": 0,
        "tokens": {"prompt": 30, "completion": 12},
        "cost": {"billed": 0.25, "uncached": 0.5},
        "jobs": {"total": 3, "ok": 3, "failed": 0, "by_error": {}},
        "this_run": {"ok": 0, "failed": 0, "skipped_resumed": 3},
    }


def _batch() -> dict[str, Any]:
    """A --via batch invocation's summary that found every job written."""
    return {
        "via": "batch",
        "stopped": None,
        "jobs": {"total": 3, "ok": 0, "failed": 0, "skipped_resumed": 3},
        "batch": {
            "provider": "openai",
            "batches_created": 0,
            "batches_recovered": 0,
            "batches_total": 1,
            "pending_jobs": 0,
        },
    }


def _earlier(path: Path, summary: dict[str, Any], **change: Any) -> bytes:
    old = {**copy.deepcopy(summary), **change}
    if "this_run" in old:
        old["this_run"] = {"ok": 3, "failed": 0, "skipped_resumed": 0}  # the run that did it
    if old.get("via") == "batch":
        old["jobs"] = {**old["jobs"], "ok": 3, "skipped_resumed": 0}
    path.write_bytes(orjson.dumps(old))
    return path.read_bytes()


def test_a_summary_that_describes_the_output_is_kept_and_said(tmp_path: Path) -> None:
    for summary in (_direct(), _batch()):
        path = tmp_path / "s.json"
        _earlier(path, summary)
        assert keep_summary(path, summary) is True
        assert summary["summary_kept"] == str(path)  # the table's "nothing sent" line


def test_the_summary_going_to_stdout_too_keeps_the_file_without_saying_it(tmp_path: Path) -> None:
    # --workers with --summary -: the merged file is kept, and the summary on stdout carries no
    # key that no summary file has.
    summary, path = _direct(), tmp_path / "s.json"
    _earlier(path, summary)
    assert keep_summary(path, summary, to_stdout=True) is True
    assert "summary_kept" not in summary


def test_stdout_alone_has_no_earlier_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # even beside a file named "-" that would describe the output
    for summary in (_direct(), _batch()):
        _earlier(tmp_path / "-", summary)
        assert keep_summary(Path("-"), summary) is False
        assert "summary_kept" not in summary


def test_a_summary_that_does_not_describe_the_output_is_written(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (_direct(), {}),  # no file at all (below: the file is removed)
        (_direct(), {"stopped": "signal"}),  # an interrupted run's
        (_direct(), {"exit_code": 1}),
        (_batch(), {"via": None}),  # a direct run's file under a batch re-run
        (_batch(), {"stopped": "signal"}),
    ]
    for i, (summary, change) in enumerate(cases):
        if i == 0:
            path.unlink(missing_ok=True)
        else:
            _earlier(path, summary, **change)
        assert keep_summary(path, summary) is False, change
        assert "summary_kept" not in summary
    # an invocation that sent something is written whatever the file says
    sent = _direct()
    _earlier(path, sent)
    sent["this_run"]["ok"] = 1
    assert keep_summary(path, sent) is False
    created = _batch()
    _earlier(path, created)
    created["batch"]["batches_created"] = 1
    assert keep_summary(path, created) is False
