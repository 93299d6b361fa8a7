"""Clear errors for every misuse: one line naming the problem, exit 2, nothing opened (issue 9)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs


def _no_outputs(tmp: Path) -> bool:
    return not any(tmp.glob("*.results.jsonl")) and not any(tmp.glob("*.latency.jsonl"))


def test_a_directory_as_the_jobs_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "jobsdir"
    d.mkdir()
    for cmd in ("run", "validate"):
        code, err = cli_run(capsys, cmd, str(d))
        assert code == 2 and "is a directory" in err and "no such file" not in err


def test_an_empty_jobs_file_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = tmp_path / "empty.jsonl"
    jobs.write_bytes(b"")
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)))
    assert code == 0 and "warning" in err and "holds no jobs" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('concurrency = "lots"\n', "concurrency must be an integer, got 'lots'"),
        ("timeout = true\n", "timeout must be a number"),
        ('rpm = "fast"\n', "rpm must be a number"),
        ("stream = 1\n", "stream must be true or false"),
        ("concurency = 4\n", "did you mean 'concurrency'"),
        ('[cache]\nstrategi = "warm"\n', "did you mean 'strategy'"),
        ('cache = "wram"\n', "did you mean 'warm'"),
        ("concurrency = -3\n", "concurrency must be >= 1"),
        ("timeout = 0\n", "timeout must be > 0"),
        ("timeout = nan\n", "timeout must be a finite number"),
        ("rpm = inf\n", "rpm must be a finite number"),
        ("max_cost = nan\n", "max_cost must be a finite number"),
        ("breaker_error_rate = 2.0\n", "breaker_error_rate must be in (0, 1]"),
        ("drain_s = -1.0\n", "drain_s must be >= 0"),
        ('[prices."mock-1"]\ninput = nan\noutput = 1.0\n', "price input must be a finite"),
        ('[prices."mock-1"]\ninput = 1.0\noutput = inf\n', "price output must be a finite"),
    ],
)
def test_a_bad_config_value_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "bad.toml"
    config.write_text(text)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2, err
    assert expected in err and str(config) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    "flags",
    [
        ["--timeout", "nan"],
        ["--timeout", "inf"],
        ["--max-cost", "nan"],
        ["--max-cost", "inf"],
        ["--rpm", "nan"],
        ["--tpm", "nan"],
        ["--rpm=-5"],
        ["--concurrency", "0"],
        ["--max-attempts", "0"],
        ["--timeout", "0"],
        ["--max-active-groups", "0"],
    ],
)
def test_numbers_that_are_not_numbers_or_out_of_range_are_exit_2_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), *flags)
    assert code == 2, err
    assert "Traceback" not in err
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize("flag", ["--metrics-job", "--limit-scope"])
def test_an_empty_name_is_exit_2_before_any_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path)), flag, "")
    assert code == 2 and "must not be empty" in err, err
    assert _no_outputs(tmp_path)


@pytest.mark.parametrize(
    ("flag", "value", "hint"),
    [
        ("--cache", "wram", "'warm'"),
        ("--provider", "opnai", "'openai'"),
        ("--order", "inptu", "'input'"),
    ],
)
def test_a_wrong_flag_value_suggests_the_right_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, hint: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    code, err = cli_run(capsys, "run", str(jobs), flag, value)
    assert code == 2 and f"did you mean {hint}?" in err


def test_credentials_in_the_base_url_are_exit_2_and_never_echoed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found by QA: aiohttp refused the URL next to the key's header, a traceback with exit 1.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    jobs = write_jobs(tmp_path, 2)
    url = "http://user:pw-SECRET@127.0.0.1:9/v1"
    code, err = cli_run(capsys, "run", str(jobs), "--provider", "openai", "--base-url", url)
    assert code == 2, err
    assert "base_url carries credentials" in err and "SECRET" not in err
    assert "Traceback" not in err and _no_outputs(tmp_path)


def test_resume_with_another_latency_path_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: the resume summed an empty latency file ("0 ok in the output") and the
    # results' latency records were lost from the new file.
    jobs = write_jobs(tmp_path, 3)
    cfg = str(fast_config(tmp_path))
    out = ["-o", str(tmp_path / "r.results.jsonl")]
    code, err = cli_run(
        capsys, "run", str(jobs), "-c", cfg, *out, "--latency", str(tmp_path / "a.jsonl")
    )
    assert code == 0, err
    before = (tmp_path / "r.results.jsonl").read_bytes()
    code, err = cli_run(capsys, "run", str(jobs), "-c", cfg, *out)
    assert code == 2 and "resume with the --latency" in err, err
    assert (tmp_path / "r.results.jsonl").read_bytes() == before
