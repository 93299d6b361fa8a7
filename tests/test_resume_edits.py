"""Resume notices any edit of the jobs or contexts file, and allows appends (issue 9).

The meta file holds the size and SHA-256 of the whole jobs file and of the whole contexts file.
The jobs files here are larger than 64 KiB, the old fingerprint's reach, and the edits are at
their end.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config, lines, load, write_jobs

PAD = 1200  # bytes per job line: 80 jobs is about 96 KiB


def test_editing_the_last_job_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 80, pad=PAD)
    assert jobs.stat().st_size > 1 << 16
    config = fast_config(tmp_path)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    results = tmp_path / "jobs.results.jsonl"
    before = results.read_bytes()
    data = jobs.read_bytes().replace(b'"q 79 ', b'"Q 79 ')  # same length, last line edited
    jobs.write_bytes(data)
    for extra in ([], ["--retry-failed"]):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *extra)
        assert code == 2, err
        assert str(jobs) in err and "edited" in err and "--no-resume" in err
        assert results.read_bytes() == before  # the stale answer was not kept as valid, nor lost


def test_a_truncated_input_is_called_shorter_not_different(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 10)
    config = fast_config(tmp_path)
    assert cli_run(capsys, "run", str(jobs), "-c", str(config))[0] == 0
    jobs.write_bytes(b"".join(jobs.read_bytes().splitlines(keepends=True)[:7]))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2
    assert "shorter" in err and "first lines differ" not in err


def _contexts(tmp: Path, text: str) -> Path:
    path = tmp / "contexts.jsonl"
    path.write_text(
        orjson.dumps({"cache_id": "a", "system": text}).decode()
        + "\n"
        + orjson.dumps({"cache_id": "b", "system": "other " * 50}).decode()
        + "\n"
    )
    return path


def _compact_jobs(tmp: Path, n: int) -> Path:
    path = tmp / "jobs.jsonl"
    with path.open("wb") as fh:
        for i in range(n):
            job = {
                "id": f"q{i}",
                "cache_id": "ab"[i % 2],
                "query": f"q {i}",
                "params": {"max_tokens": 4},
            }
            fh.write(orjson.dumps(job) + b"\n")
    return path


@pytest.mark.parametrize("extra", [[], ["--retry-failed"]])
def test_an_edited_context_is_refused_so_no_answer_of_the_old_context_is_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    jobs = _compact_jobs(tmp_path, 12)
    contexts = _contexts(tmp_path, "You are terse. " * 40)
    config = fast_config(tmp_path)
    args = ["run", str(jobs), "-c", str(config), "--contexts", str(contexts)]
    assert cli_run(capsys, *args)[0] == 0
    _contexts(tmp_path, "You are verbose. " * 40)
    code, err = cli_run(capsys, *args, *extra)
    assert code == 2, err
    assert str(contexts) in err and "contexts file" in err and "changed" in err


def test_appended_jobs_resume_and_only_the_new_ones_are_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 80, pad=PAD)
    config = fast_config(tmp_path)
    assert cli_run(capsys, "run", str(jobs), "-c", str(config))[0] == 0
    more = write_jobs(tmp_path, 90, pad=PAD, name="more.jsonl").read_bytes()
    jobs.write_bytes(more)  # the first 80 lines are byte-identical: 10 jobs appended
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    ids = [r["custom_id"] for r in lines(tmp_path / "jobs.results.jsonl")]
    assert sorted(ids) == sorted(f"q{i}" for i in range(90))  # every job once
    summary = load(tmp_path / "jobs.summary.json")
    assert summary["this_run"]["ok"] == 10 and summary["this_run"]["skipped_resumed"] == 80
    assert summary["jobs"]["total"] == 90 and summary["jobs"]["ok"] == 90
    # and the appended input is now the reference: editing one of the new jobs is noticed
    jobs.write_bytes(more.replace(b'"q 89 ', b'"Q 89 '))
    assert cli_run(capsys, "run", str(jobs), "-c", str(config))[0] == 2
