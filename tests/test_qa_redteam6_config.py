"""Found by the sixth red team: a NaN or infinite number in the config's ``[params]`` table.

README ("Reliability") promises NaN and infinite numbers in any config value are exit 2, but
``[params]`` (the request's default body fields) was not checked: TOML's ``nan`` and ``inf``
went out as JSON ``null`` (orjson's spelling of a number JSON cannot hold), so ``temperature =
nan`` ran every job at the provider's default temperature without a word.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from promise_helpers import cli_run, fast_config, write_jobs

from runner.config import RunConfig
from runner.errors import ConfigError


@pytest.mark.parametrize(
    ("table", "named"),
    [
        ("temperature = nan", "params.temperature"),
        ("top_p = inf", "params.top_p"),
        ('logit_bias = {"50256" = -inf}', "params.logit_bias.50256"),
        ("stop_weights = [1.0, nan]", "params.stop_weights[1]"),
    ],
)
def test_a_non_finite_number_in_params_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, named: str
) -> None:
    jobs = write_jobs(tmp_path, 3)
    config = fast_config(tmp_path, f"[params]\n{table}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2, err
    assert f"{named} must be a finite number" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created


def test_the_python_api_refuses_it_too() -> None:
    with pytest.raises(ConfigError, match=r"params\.temperature must be a finite number"):
        RunConfig(params={"temperature": math.nan})


def test_finite_params_still_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jobs(tmp_path, 2)
    extra = '[params]\ntemperature = 0.5\nlogit_bias = {"50256" = -100}\n'
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(fast_config(tmp_path, extra)))
    assert code == 0, err
