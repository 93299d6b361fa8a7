"""Config files as editors really save them (found by the red team)."""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import FAST, cli_run, lines, write_jobs


# Notepad and other Windows editors save UTF-8 with a byte order mark: tomllib read it as
# "Invalid statement (at line 1, column 1)", and the second read in _provider_named let the
# TOMLDecodeError escape as a traceback. JSONL inputs already accept a BOM.
def test_a_config_with_a_byte_order_mark_is_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "bom.toml"
    config.write_bytes(
        b"\xef\xbb\xbf" + ('progress = "off"\r\nprovider = "mock"\r\n' + FAST).encode()
    )
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    assert len(lines(tmp_path / "jobs.results.jsonl")) == 2


# A Latin-1 config raised UnicodeDecodeError out of tomllib: a traceback and exit 1.
@pytest.mark.parametrize("cmd", ["run", "validate"])
def test_a_config_that_is_not_utf8_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cmd: str
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "latin1.toml"
    config.write_bytes(b'progress = "off"\nmodel = "caf\xe9"\n')
    code, err = cli_run(capsys, cmd, str(jobs), "-c", str(config))
    assert code == 2, err
    assert f"{config}:2: not UTF-8" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "jobs.results.jsonl").exists()


# TOML is not a shell, and neither is systemd's ExecStart: "~/out.jsonl" wrote into a new
# directory named "~" in the working directory (one `rm -rf ~` away from a lost home).
@pytest.mark.parametrize("where", ["config", "flag"])
def test_a_tilde_in_an_output_path_means_home(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "c.toml"
    line = 'output = "~/out.jsonl"\n' if where == "config" else ""
    config.write_text(line + 'progress = "off"\n' + FAST)
    flag = ["--output=~/out.jsonl", "--latency=~/lat.jsonl"] if where == "flag" else []
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *flag)
    assert code == 0, err
    assert len(lines(home / "out.jsonl")) == 2 and not (tmp_path / "~").exists()
    if where == "flag":  # every path flag, not only --output
        assert len(lines(home / "lat.jsonl")) == 2


def test_a_path_that_is_not_a_string_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text("output = 5\n")
    code, err = cli_run(capsys, "run", str(write_jobs(tmp_path, 1)), "-c", str(config))
    assert code == 2 and "output must be a path" in err and "Traceback" not in err, err


# Every key below a "[params]" header belongs to that table: a runner option written there was
# sent to the provider as a request field (or a header) and its own setting silently lost.
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[params]\nmax_tokens = 5\nconcurrency = 4\n", "params.concurrency is a runner option"),
        ('[headers]\nX-Team = "a"\nmodel = "m"\n', "headers.model is a runner option"),
        ("[headers]\nX-Retries = 3\n", "header X-Retries must be a string, got 3"),
    ],
)
def test_a_runner_option_below_a_table_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    code, err = cli_run(capsys, "run", str(write_jobs(tmp_path, 1)), "-c", str(config))
    assert code == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_request_fields_that_share_a_runner_option_name_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"  # OpenRouter's provider routing, a body's own stream flag
    config.write_text('progress = "off"\n' + FAST + '[params]\nprovider = {order = ["a"]}\n')
    code, err = cli_run(capsys, "run", str(write_jobs(tmp_path, 1)), "-c", str(config))
    assert code == 0, err
