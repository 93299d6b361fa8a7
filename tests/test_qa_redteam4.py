"""Red team 4: what broke the recent fixes (no-op re-runs, full disks, refused fields, ...).

Each test names the defect it holds fixed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, load, write_jobs

PRICES = '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\n'


# -- a no-op re-run with another price ---------------------------------------------------------


def test_a_noop_rerun_with_a_corrected_price_rewrites_the_summary_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by red team 4: a user fixes a wrong price in the config and runs the same command
    # again; every job is done, so nothing is sent. The table printed the new price's cost,
    # but the summary file was "left as it was" with the old price's cost (the cost was not
    # compared), so the file the user and dashboards read kept the wrong figure.
    jobs = write_jobs(tmp_path, 6)
    summary = tmp_path / "jobs.summary.json"
    cheap = fast_config(tmp_path, PRICES)
    assert cli_run(capsys, "run", str(jobs), "-c", str(cheap))[0] == 0
    first = load(summary)["cost"]
    dear = tmp_path / "dear.toml"
    dear.write_text(cheap.read_text().replace("input = 1.0", "input = 100.0"))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(dear))
    assert code == 0, err
    again = load(summary)["cost"]
    assert again["billed"] > first["billed"] * 10, (first, again)
    assert "left as it was" not in err
    # the same price again: nothing changed, the summary is kept
    kept = summary.read_bytes()
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(dear))
    assert code == 0 and "nothing sent: the summary file is left as it was" in err, err
    assert summary.read_bytes() == kept
