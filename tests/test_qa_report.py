"""Found by QA: ``runner report L --html L`` wrote the HTML over the latency file it had just
read (exit 0, the records gone), against the rule that no output may be an input. The HTML
path is now refused (exit 2, every file untouched) when it names the latency file, the
``--compare`` file or the config, also through a symlink."""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest

from runner import report

FIXTURE = Path(__file__).parent / "fixtures" / "latency_sample.jsonl"


def run(*argv: str | Path) -> int:
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    return report.main(parser.parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("target", ["latency", "compare", "config", "symlink"])
def test_html_naming_an_input_is_refused_and_nothing_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str
) -> None:
    a = tmp_path / "a.latency.jsonl"
    b = tmp_path / "b.latency.jsonl"
    cfg = tmp_path / "prices.toml"
    shutil.copy(FIXTURE, a)
    shutil.copy(FIXTURE, b)
    cfg.write_text('[prices."gpt-4.1-mini"]\ninput = 1.0\noutput = 2.0\n')
    os.symlink(a, tmp_path / "link.html")
    html = {"latency": a, "compare": b, "config": cfg, "symlink": tmp_path / "link.html"}[target]
    before = {p: p.read_bytes() for p in (a, b, cfg)}
    code = run(a, "--compare", b, "-c", cfg, "--html", html)
    err = capsys.readouterr().err
    assert code == 2
    assert "--html" in err and "input" in err
    assert {p: p.read_bytes() for p in (a, b, cfg)} == before


def test_html_beside_the_inputs_is_still_written(tmp_path: Path) -> None:
    a = tmp_path / "a.latency.jsonl"
    shutil.copy(FIXTURE, a)
    assert run(a, "--html", tmp_path / "a.html") == 0
    assert (tmp_path / "a.html").read_text().startswith("<!DOCTYPE html>")
