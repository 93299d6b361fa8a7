"""Config loading: the shipped configs parse, flags win, bad keys are named, keys stay in env."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.config import RunConfig, load_config
from runner.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_shipped_configs_load(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.provider in ("mock", "openai", "anthropic", "gemini")
    if cfg.prices:
        assert cfg.price() is not None  # the config's own model has a price


def test_expected_configs_exist() -> None:
    expected = {"mock", "openai", "deepseek", "vllm", "anthropic", "gemini"}
    assert {p.stem for p in CONFIGS} >= expected


def test_cache_table_and_flags_override(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(
        'provider = "openai"\nbase_url = "http://127.0.0.1:1/v1"\nconcurrency = 8\n'
        '[cache]\nstrategy = "none"\nttl_s = 60\n[params]\nmax_tokens = 7\n'
    )
    cfg = load_config(f)
    assert (cfg.cache, cfg.cache_ttl_s, cfg.concurrency, cfg.params["max_tokens"]) == (
        "none",
        60,
        8,
        7,
    )
    over = cfg.with_overrides(concurrency=99, cache=None, output="x/r.jsonl")
    assert over.concurrency == 99 and over.cache == "none"
    assert over.output == Path("x/r.jsonl")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("bogus = 1\n", "bogus"),
        ("concurrency = 0\n", "concurrency"),
        ('provider = "openai"\n', "base_url"),
        ('[cache]\nstrategy = "sometimes"\n', "cache"),
        ('[prices."m"]\ninput = -1\noutput = 1\n', "prices.m"),
        ("concurrency = [\n", "invalid TOML"),
    ],
)
def test_bad_configs_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as exc:
        load_config(f)
    assert needle in str(exc.value)


def test_api_key_comes_only_from_the_named_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(api_key_env="RUNNER_TEST_KEY_VAR")
    monkeypatch.delenv("RUNNER_TEST_KEY_VAR", raising=False)
    with pytest.raises(ConfigError) as exc:
        cfg.api_key()
    assert "RUNNER_TEST_KEY_VAR" in str(exc.value)
    monkeypatch.setenv("RUNNER_TEST_KEY_VAR", "sk-abc")
    assert cfg.api_key() == "sk-abc"
    assert RunConfig().api_key() is None


def test_summary_to_stdout_is_only_a_summary_of_dash() -> None:
    # The one test of `--summary -` (was written out in api.py, shards.py and workers.py).
    assert RunConfig(summary=Path("-")).summary_to_stdout
    assert not RunConfig(summary=Path("run.summary.json")).summary_to_stdout
    assert not RunConfig(summary=Path("./-x")).summary_to_stdout
    assert not RunConfig().summary_to_stdout
