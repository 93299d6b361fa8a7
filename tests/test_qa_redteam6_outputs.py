"""Found by the sixth red team: the sidecars of an output could be an input or another output.

Only the results, latency, summary, meta and lock files were checked against the inputs and
each other, but opening the outputs also deletes a stale ``R.tmp`` (and, starting afresh,
``R.pending``), takes over ``L.lock`` and ``S.lock`` (truncating them, and deleting them at the
end), and every atomic rewrite writes ``X.tmp`` and renames it over ``X``. So ``runner run
out.tmp -o out`` deleted its own jobs file, ``--latency R.tmp`` lost the latency records on the
resume, and a config file named ``L.lock`` was overwritten with a pid and then deleted.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from promise_helpers import cli_run, fast_config, lines, load, write_jobs

from runner.config import RunConfig
from runner.sinks import open_outputs


def snapshot(tmp: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in tmp.iterdir() if p.is_file()}


@pytest.mark.parametrize(
    ("jobs_name", "config_name", "flags"),
    [
        # the temporary file of the results is deleted when the outputs are opened
        ("out.tmp", "fast.toml", ["-o", "{tmp}/out"]),
        # the --order input journal is deleted when a run starts afresh
        ("out.pending", "fast.toml", ["-o", "{tmp}/out", "--no-resume"]),
        ("out.pending", "fast.toml", ["-o", "{tmp}/out", "--order", "input"]),
        # the latency file's lock is truncated, then deleted at the end
        ("jobs.jsonl", "lat.jsonl.lock", ["--latency", "{tmp}/lat.jsonl"]),
        # the summary's lock, and its temporary file (renamed over the summary)
        ("jobs.jsonl", "sum.json.lock", ["--summary", "{tmp}/sum.json"]),
        ("jobs.jsonl", "sum.json.tmp", ["--summary", "{tmp}/sum.json"]),
        # the meta file's temporary file
        ("r.jsonl.meta.json.tmp", "fast.toml", ["-o", "{tmp}/r.jsonl"]),
    ],
)
def test_an_output_sidecar_naming_an_input_is_refused_and_nothing_is_touched(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    jobs_name: str,
    config_name: str,
    flags: list[str],
) -> None:
    jobs = write_jobs(tmp_path, 3, name=jobs_name)
    config = fast_config(tmp_path).rename(tmp_path / config_name)
    before = snapshot(tmp_path)
    args = [f.format(tmp=tmp_path) for f in flags]
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *args)
    assert code == 2, err
    assert "refusing to overwrite an input" in err
    assert snapshot(tmp_path) == before  # the input is whole, no output was created


@pytest.mark.parametrize(
    "flags",
    [
        # a resume deleted the latency file as a stale temporary file of the results
        ["-o", "{tmp}/r.jsonl", "--latency", "{tmp}/r.jsonl.tmp"],
        # the summary was written to the results file, then renamed away from it
        ["-o", "{tmp}/r.tmp", "--summary", "{tmp}/r"],
        ["-o", "{tmp}/r.jsonl", "--latency", "{tmp}/r.jsonl.pending"],
        ["-o", "{tmp}/r.jsonl", "--summary", "{tmp}/l.jsonl.lock", "--latency", "{tmp}/l.jsonl"],
    ],
)
def test_an_output_on_another_outputs_sidecar_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    before = snapshot(tmp_path)
    args = [f.format(tmp=tmp_path) for f in flags]
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *args)
    assert code == 2, err
    assert "are the same file" in err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("flag", ["--latency", "--summary"])
def test_an_empty_output_path_is_still_a_clear_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """An empty path is the current directory: refused as one, not a ValueError traceback
    from naming its sidecars."""
    jobs = write_jobs(tmp_path, 3)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), flag, "")
    assert code == 2 and "is a directory" in err, err
    assert "Traceback" not in err


def test_the_results_and_latency_survive_a_resume_with_distinct_sidecars(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The check refuses only real collisions: a run and its resume with explicit, distinct
    paths in one directory still work."""
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    args = ["-o", str(tmp_path / "r.jsonl"), "--latency", str(tmp_path / "r.lat.jsonl")]
    for _ in range(2):
        code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *args)
        assert code == 0, err
    assert len((tmp_path / "r.jsonl").read_bytes().splitlines()) == 3
    assert len((tmp_path / "r.lat.jsonl").read_bytes().splitlines()) == 3


# -- one file under two names ------------------------------------------------------------------
# The lock sat beside the name given, so a run on ``-o latest.jsonl`` (a symlink to the results
# of a run still going, the usual "latest" link) took another lock than the run on ``-o
# r.jsonl``: both ran, every job was sent twice and appended twice to the one file (80 lines
# for 40 jobs), and with --no-resume the second truncated the first's results under it.


@pytest.mark.parametrize("what", ["-o", "--latency", "--summary"])
@pytest.mark.parametrize("no_resume", [False, True])
def test_a_second_run_on_the_same_file_through_a_symlink_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str, no_resume: bool
) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    real = {"-o": out / "r.jsonl", "--latency": out / "l.jsonl", "--summary": out / "s.json"}
    held = open_outputs(
        RunConfig(output=real["-o"], latency=real["--latency"], summary=real["--summary"]),
        jobs_path=jobs,
        model="mock-1",
        fsync=False,
    )
    try:
        real["-o"].write_bytes(b'{"custom_id": "q0"}\n')  # what the first run wrote so far
        link = tmp_path / "latest"
        link.symlink_to(real[what])
        mine = {"-o": tmp_path / "mine.jsonl", "--latency": tmp_path / "mine.latency.jsonl"}
        flags = {**{k: str(v) for k, v in mine.items()}, what: str(link)}
        argv = [a for k, v in flags.items() for a in (k, v)]
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        code, err = cli_run(
            capsys,
            "run",
            str(jobs),
            "-c",
            str(config),
            *argv,
            *(["--no-resume"] if no_resume else []),
        )
        assert code == 2 and "being written by another runner" in err, err
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        held.close()


def test_the_lock_of_a_symlinked_output_is_beside_the_file_it_names(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path, 3)
    real = tmp_path / "r.jsonl"
    real.touch()
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    held = open_outputs(RunConfig(output=link), jobs_path=jobs, model="mock-1", fsync=False)
    try:
        assert (tmp_path / "r.jsonl.lock").exists()
        assert not (tmp_path / "latest.jsonl.lock").exists()
    finally:
        held.close()
    assert not (tmp_path / "r.jsonl.lock").exists()


# -- a results file whose last line lost its newline -------------------------------------------
# A script that filters the results with "\\n".join(lines) (or an editor that drops the final
# newline) leaves a whole last line without its newline. Resume took it for a line torn by a
# crash and cut it: the paid answer was thrown away and the job sent again.


def test_a_whole_last_line_without_its_newline_is_kept_not_sent_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 6)
    config = fast_config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    kept = [raw for raw in results.read_bytes().splitlines() if b'"q2"' not in raw]
    results.write_bytes(b"\n".join(kept))  # drop q2 to run it again; no final newline
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    summary = load(tmp_path / "jobs.summary.json")
    assert (summary["this_run"]["ok"], summary["this_run"]["skipped_resumed"]) == (1, 5)  # q2 only
    assert sorted(r["custom_id"] for r in lines(results)) == [f"q{i}" for i in range(6)]
    assert results.read_bytes().endswith(b"\n")
    assert len(lines(tmp_path / "jobs.latency.jsonl")) == 6


@pytest.mark.parametrize("keep", [1, 10, -10, -2])
def test_a_torn_last_line_is_still_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keep: int
) -> None:
    jobs = write_jobs(tmp_path, 6)
    config = fast_config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    data = results.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    results.write_bytes(data[: last + keep] if keep > 0 else data[:keep])  # a torn write
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    assert load(tmp_path / "jobs.summary.json")["this_run"]["ok"] == 1
    assert sorted(r["custom_id"] for r in lines(results)) == [f"q{i}" for i in range(6)]


# -- a rewrite through a symlinked output ------------------------------------------------------
# A rewrite (--retry-failed dropping the lines it sends again, the --order input sort, the
# summary) writes a temporary file and renames it over the output. Renamed over a symlink, it
# replaced the link itself: the file the link named kept the old lines (the failures already
# retried), and the link was gone.


def test_retry_failed_through_a_symlinked_results_file_rewrites_the_file_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 12)
    failing = tmp_path / "failing.toml"
    failing.write_text(
        'progress = "off"\nmax_attempts = 1\n[mock]\nlatency = "zero"\nfault_http_500 = 0.5\n'
    )
    runs = tmp_path / "runs"
    runs.mkdir()
    real = runs / "r1.jsonl"
    link = tmp_path / "latest.jsonl"
    link.symlink_to(real)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(failing), "-o", str(link))
    assert code == 1, err
    assert any(r["error"] for r in lines(real))  # some jobs failed: --retry-failed rewrites
    code, err = cli_run(
        capsys,
        "run",
        str(jobs),
        "-c",
        str(fast_config(tmp_path)),
        "-o",
        str(link),
        "--retry-failed",
    )
    assert code == 0, err
    assert link.is_symlink() and link.resolve() == real.resolve()
    results = lines(real)
    assert sorted(r["custom_id"] for r in results) == sorted(f"q{i}" for i in range(12))
    assert not any(r["error"] for r in results)
    assert not (runs / "r1.jsonl.tmp").exists() and not (tmp_path / "latest.jsonl.tmp").exists()


def test_a_summary_through_a_symlink_is_written_to_the_file_it_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 3)
    (tmp_path / "reports").mkdir()
    real = tmp_path / "reports" / "s.json"
    real.write_text("{}")
    link = tmp_path / "summary.json"
    link.symlink_to(real)
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), "--summary", str(link)
    )
    assert code == 0, err
    assert link.is_symlink()
    assert load(real)["jobs"]["ok"] == 3


# -- an output that is not a regular file ------------------------------------------------------
# The summary (and every rewrite) is written to a temporary file renamed over the output. Over
# a device or a FIFO that put a regular file in its place: as root (a container), --summary
# /dev/null replaced the system's /dev/null with the summary. Over /dev/stdout sent to a file
# (``> run.log``), it replaced run.log, losing the log written before it.


@pytest.mark.parametrize("flag", ["--summary", "--latency", "--metrics-textfile", "-o"])
def test_a_fifo_as_an_output_is_refused_and_left_a_fifo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    jobs = write_jobs(tmp_path, 3)
    fifo = tmp_path / "out.fifo"
    os.mkfifo(fifo)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), flag, str(fifo))
    assert code == 2 and "is not a regular file" in err, err
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert not (tmp_path / "jobs.results.jsonl").exists()


STDOUT = ("--summary", "/dev/stdout")


def test_summary_to_dev_stdout_redirected_to_a_file_is_refused_and_keeps_the_file(
    tmp_path: Path,
) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path)
    log = tmp_path / "run.log"
    log.write_text("written before the run\n")
    with open(log, "ab") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "run", str(jobs), "-c", str(config), *STDOUT],
            stdout=out,
            stderr=subprocess.PIPE,
            timeout=120,
            cwd=tmp_path,
        )
    assert proc.returncode == 2, proc.stderr
    assert b"is standard output" in proc.stderr
    assert log.read_text() == "written before the run\n"
    assert not (tmp_path / "jobs.results.jsonl").exists()


# -- a results file edited into lines that are no JSON -----------------------------------------
# Resume drops a whole line that is no result (the NUL blocks a power loss leaves), so a results
# file pretty-printed with ``jq .`` lost every line, silently, and every job was sent (and
# billed) again. A line that is not JSON at all is no crash's doing: it is refused, untouched.


def test_a_pretty_printed_results_file_is_refused_not_dropped_and_re_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    pretty = b"".join(orjson.dumps(r, option=orjson.OPT_INDENT_2) + b"\n" for r in lines(results))
    results.write_bytes(pretty)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2, err
    assert "line 1 is not a result line" in err and "jq -c" in err
    assert results.read_bytes() == pretty


def test_crash_garbage_and_blank_lines_are_still_dropped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 4)
    config = fast_config(tmp_path)
    results = tmp_path / "jobs.results.jsonl"
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    kept = results.read_bytes().splitlines(keepends=True)
    # a power loss: blocks of NULs, also from the middle of one line into the next
    torn = kept[1][:40] + b"\0" * 64 + kept[2][50:]
    results.write_bytes(kept[0] + b"\0" * 64 + b"\n\n" + torn + b"".join(kept[3:]))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    assert sorted(r["custom_id"] for r in lines(results)) == [f"q{i}" for i in range(4)]
