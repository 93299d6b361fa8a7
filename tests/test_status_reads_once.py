"""``runner status`` reads the input and the results once, for its text and its exit code.

Found in the final review: the "input:" line counted the jobs file and the results, and the
exit code (``runstatus.status_code``: jobs of the input without a result are not done)
counted both again: on a multi-million-line input, twice the reading for one status."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner import jobs as jobs_module
from runner import runstatus


def test_status_counts_the_input_and_the_results_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = write_jobs(tmp_path, 7)
    results = tmp_path / "r.jsonl"
    run = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "-o", str(results))
    assert run[0] == 0
    read: list[str] = []

    def counting(name: str, real: Any) -> Any:
        def count(path: Path, *args: Any, **kw: Any) -> int:
            read.append(f"{name} {Path(path).name}")
            return int(real(path, *args, **kw))

        return count

    monkeypatch.setattr(runstatus, "count_jobs", counting("jobs", jobs_module.count_jobs))
    monkeypatch.setattr(runstatus, "count_lines", counting("lines", jobs_module.count_lines))
    from runner import cli

    capsys.readouterr()
    code = cli.main(["status", str(results)])
    out = capsys.readouterr().out
    assert code == 0 and "7 jobs; 0 without a result" in out, out
    assert sorted(read) == [f"jobs {jobs.name}", "lines r.jsonl"], read
