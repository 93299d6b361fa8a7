"""Cost guards that guard (issue 9): refuse what cannot be priced, price each job by its own
model on one path, and spend the budget rather than reserve it."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest
from promise_helpers import FAST, cli_run, load

from runner.config import load_config
from runner.jobs import load_contexts
from runner.stats import cost_of
from runner.validate import validate_file

REPO = Path(__file__).resolve().parents[1]


def _batch_jobs(tmp: Path, n: int, model: str) -> Path:
    path = tmp / "batch.jsonl"
    with path.open("wb") as fh:
        for i in range(n):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": f"q {i}"}],
                "max_tokens": 8,
            }
            fh.write(orjson.dumps({"custom_id": f"b{i}", "body": body}) + b"\n")
    return path


def _config(tmp: Path, prices: str) -> Path:
    path = tmp / "c.toml"
    path.write_text('progress = "off"\n' + prices + FAST + 'models = ["mock-1", "big"]\n')
    return path


def test_max_cost_without_a_price_for_a_model_used_is_refused_before_any_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = _batch_jobs(tmp_path, 5, "big")
    config = _config(tmp_path, '[prices."mock-1"]\ninput = 1.0\noutput = 2.0\n')
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), "--max-cost", "1")
    assert code == 2 and "'big'" in err and "price" in err
    assert not (tmp_path / "batch.results.jsonl").exists()


def test_each_job_is_priced_by_its_own_model_in_run_and_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = _batch_jobs(tmp_path, 12, "big")
    prices = (
        '[prices."mock-1"]\ninput = 0.01\noutput = 0.01\n'
        '[prices."big"]\ninput = 10.0\noutput = 40.0\n'
    )
    config = _config(tmp_path, prices)
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    summary = load(tmp_path / "batch.summary.json")
    tok = summary["tokens"]
    big = load_config(config).prices["big"]
    expected = cost_of(tok["prompt"], tok["cached"], tok["cache_write"], tok["completion"], big)[0]
    assert summary["cost"]["billed"] == pytest.approx(expected, rel=1e-6)
    assert summary["models"] == {"big": 12}
    # validate prices the same jobs by the same model
    report = validate_file(jobs, contexts={}, config=load_config(config))
    assert set(report.models) == {"big"} and report.cost_billed is not None
    ratio = report.cost_billed / summary["cost"]["billed"]
    assert 0.1 < ratio < 10  # an estimate, but of the same model's price (not 1000x off)


@pytest.mark.parametrize("budget", [0.1, 0.05])
def test_the_demo_spends_at_least_90_percent_of_a_budget_it_cannot_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], budget: float
) -> None:
    config = tmp_path / "demo.toml"
    text = (REPO / "configs" / "mock.toml").read_text().replace("[mock]\n", FAST)
    config.write_text('progress = "off"\n' + text)
    jobs = REPO / "examples" / "jobs.jsonl"
    contexts = REPO / "examples" / "contexts.jsonl"
    assert load_contexts(contexts)
    code, err = cli_run(
        capsys,
        "run",
        str(jobs),
        "--contexts",
        str(contexts),
        "-c",
        str(config),
        "-o",
        str(tmp_path / "demo.results.jsonl"),
        "--max-cost",
        str(budget),
    )
    assert code == 3, err
    summary = load(tmp_path / "demo.summary.json")
    billed = summary["cost"]["billed"]
    m = re.search(
        r"stopped at \$([\d.]+) billed, \$([\d.]+) in flight, budget \$([\d.]+): "
        r"the next request could cost up to \$([\d.]+)",
        err,
    )
    assert m, err
    assert float(m.group(3)) == budget
    # It stopped only because the next request's worst case could cross the budget, and spent
    # all the rest: which request is next depends on timing, and the demo's biggest (a
    # 1,024-token reply) may cost up to about 12% of $0.05.
    worst = float(m.group(4))
    assert float(m.group(1)) + worst > budget - 0.00005, err  # (the message rounds to 4 places)
    assert budget - worst - 0.0001 <= billed <= budget, (billed, worst)
    assert billed >= 0.85 * budget, billed
    assert summary["stopped"] == "max_cost" and summary["not_sent"] + summary["jobs"]["ok"] <= 306
