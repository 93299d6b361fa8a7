"""A bad value under ``[cache]`` or ``[limits]`` is named as the file spells it.

``[cache] strategy = "warmm"`` was reported as ``cache must be one of warm, none`` (the field's
name, which the file does not have), ``ttl_s`` as ``cache_ttl_s`` and ``adapt`` as
``cache_adapt``; a top-level key written below ``[limits]`` (TOML puts it in the table) was an
unknown key with no word on why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from promise_helpers import cli_run, write_jobs

from runner.config import config_from_mapping
from runner.errors import ConfigError


@pytest.mark.parametrize(
    ("table", "said"),
    [
        (
            {"cache": {"strategy": "warmm"}},
            "cache.strategy must be one of warm, none, got 'warmm'; did you mean 'warm'?",
        ),
        ({"cache": {"strategy": 3}}, "cache.strategy must be a string, got 3 (int)"),
        ({"cache": {"ttl_s": -1}}, "cache.ttl_s must be > 0, got -1"),
        ({"cache": {"adapt": "no"}}, "cache.adapt must be true or false, got 'no' (str)"),
        # the flat spelling stays as it was written
        ({"cache": "warmm"}, "cache must be one of warm, none, got 'warmm'; did you mean 'warm'?"),
        ({"cache_ttl_s": -1}, "cache_ttl_s must be > 0, got -1"),
        (
            {"limits": {"rpm": 100, "concurrency": 4}},
            "unknown key limits.concurrency: top-level keys must come before the first [table]",
        ),
        ({"limits": {"rpn": 100}}, "unknown key limits.rpn; did you mean 'rpm'?"),
    ],
)
def test_a_table_key_is_named_as_written(table: dict[str, object], said: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping(table, "c.toml")
    assert str(info.value) == f"c.toml: {said}"


def test_the_run_says_it_in_one_line_and_touches_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "c.toml"
    config.write_text('[cache]\nstrategy = "warmm"\n')
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 2
    assert err.strip() == (
        f"runner: error: {config}: cache.strategy must be one of warm, none, "
        "got 'warmm'; did you mean 'warm'?"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([jobs.name, config.name])
