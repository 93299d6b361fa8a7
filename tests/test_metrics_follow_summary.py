"""The final metrics are exported after the summary file is written or kept, and say what it
says (runner/observe.py Observer.export): a re-run that sent nothing after the user corrected a
price rewrites the summary with the new cost, and the metrics textfile must carry that cost,
not keep the old one beside it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from metrics_helpers import Samples, samples
from promise_helpers import cli_run, fast_config, load, write_jobs

END_GAUGES = {
    "runner_exit_code",
    "runner_last_success_timestamp_seconds",
    "runner_last_run_timestamp_seconds",
}
PRICES = '[prices."mock-1"]\ninput = 1.0\noutput = 4.0\n'


def _cost(smp: Samples, kind: str) -> float:
    return smp[("runner_cost_usd_total", (("job_name", "runner"), ("kind", kind)))]


def _count(smp: Samples, name: str) -> float:
    return smp[(name, (("job_name", "runner"),))]


def test_a_noop_rerun_with_a_corrected_price_exports_the_new_cost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 8)
    cheap = fast_config(tmp_path, PRICES)
    dear = tmp_path / "dear.toml"
    dear.write_text(cheap.read_text().replace("input = 1.0", "input = 100.0"))
    prom, summary = tmp_path / "m.prom", tmp_path / "jobs.summary.json"
    args = ["run", str(jobs), "--metrics-textfile", str(prom), "-c"]
    assert cli_run(capsys, *args, str(cheap))[0] == 0
    first = samples(prom.read_text())
    assert _cost(first, "billed") == pytest.approx(load(summary)["cost"]["billed"])
    code, err = cli_run(capsys, *args, str(dear))  # nothing sent: every job is done
    assert code == 0, err
    written: dict[str, Any] = load(summary)
    assert written["this_run"]["skipped_resumed"] == 8 and written["this_run"]["ok"] == 0
    assert written["cost"]["billed"] > 10 * _cost(first, "billed")  # the summary has the new price
    again = samples(prom.read_text())
    for kind in ("billed", "uncached"):
        assert _cost(again, kind) == pytest.approx(written["cost"][kind], rel=1e-9)
    # the rest of the textfile says what the rewritten summary says too: its wall, and the
    # histogram of the jobs its percentiles describe (the whole output, not this no-op's none)
    assert _count(again, "runner_run_duration_seconds") == pytest.approx(written["wall_s"])
    assert _count(again, "runner_request_duration_seconds_count") == written["jobs"]["ok"] == 8
    # the same price again: the summary is kept, and so are the metrics but the end gauges
    code, err = cli_run(capsys, *args, str(dear))
    assert code == 0 and "left as it was" in err, err
    kept = samples(prom.read_text())
    assert {k: v for k, v in kept.items() if k[0] not in END_GAUGES} == {
        k: v for k, v in again.items() if k[0] not in END_GAUGES
    }


def test_the_textfile_is_written_after_the_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The order itself: the summary's rename comes before the textfile's.
    jobs = write_jobs(tmp_path, 3)
    prom = tmp_path / "m.prom"
    renamed: list[str] = []
    real = os.replace

    def replace(src: Any, dst: Any, **kw: Any) -> None:
        renamed.append(Path(dst).name)
        real(src, dst, **kw)

    monkeypatch.setattr(os, "replace", replace)
    args = ["run", str(jobs), "-c", str(fast_config(tmp_path)), "--metrics-textfile", str(prom)]
    assert cli_run(capsys, *args)[0] == 0
    assert renamed.index("jobs.summary.json") < renamed.index("m.prom"), renamed
