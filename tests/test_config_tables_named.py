"""A mistake in ``[prices."M"]`` or ``[mock]`` is one line naming the key, never Python's
``Price.__init__() got an unexpected keyword argument`` or ``'<' not supported between
instances of 'str' and 'int'``; exit 2 before any output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from promise_helpers import cli_run, write_jobs


def _refused(
    tmp: Path, capsys: pytest.CaptureFixture[str], text: str, *flags: str
) -> tuple[Path, str]:
    """``runner run`` over two jobs with ``c.toml`` = a mock provider and ``text`` (and
    ``flags``): assert exit 2 with nothing created; return the config and stderr, stripped."""
    jobs = write_jobs(tmp, 2)
    config = tmp / "c.toml"
    config.write_text('provider = "mock"\n' + text)
    before = sorted(os.listdir(tmp))
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config), *flags)
    assert code == 2, err
    assert sorted(os.listdir(tmp)) == before
    return config, err.strip()


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('[prices."mock-1"]\ninput = 1.0\n',
         "{cfg}: prices.mock-1: missing output (USD per 1M tokens)"),
        ('[prices."mock-1"]\ncached_input = 1.0\n',
         "{cfg}: prices.mock-1: missing input and output (USD per 1M tokens)"),
        ('[prices."mock-1"]\ninput = 1.0\noutput = 2.0\ncached = 0.1\n',
         "{cfg}: unknown key prices.mock-1.cached; did you mean 'cached_input'?"),
        ('[mock]\nlatncy = "zero"\n', "unknown key mock.latncy; did you mean 'latency'?"),
        ('[mock]\nbase_ms = "x"\n', "mock.base_ms must be a number, got 'x'"),
        ("[mock]\nseed = true\n", "mock.seed must be a number, got True"),
    ],
)  # fmt: skip
def test_a_bad_prices_or_mock_key_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str
) -> None:
    config, err = _refused(tmp_path, capsys, text)
    assert err == "runner: error: " + said.format(cfg=config)


def test_good_tables_still_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = write_jobs(tmp_path, 2)
    config = tmp_path / "c.toml"
    config.write_text(
        'provider = "mock"\nprogress = "off"\n[mock]\nlatency = "zero"\nseed = 3\njitter = 0.2\n'
        'models = ["mock-1"]\n[mock.batch]\nduration_s = 1\n'
        '[prices."mock-1"]\ninput = 1.0\noutput = 2.0\ncached_input = 0.1\n'
    )
    code, err = cli_run(capsys, "run", str(jobs), "-c", str(config))
    assert code == 0, err
    assert "billed $" in err


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("max_tokens = 0", "params.max_tokens must be a positive integer, got 0"),
        ('max_tokens = "x"', "params.max_tokens must be a positive integer, got 'x'"),
        ("max_completion_tokens = true",
         "params.max_completion_tokens must be a positive integer, got True"),
    ],
)  # fmt: skip
def test_a_config_reply_budget_is_checked_as_a_jobs_line_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, said: str
) -> None:
    """It was sent as is: every job a 400 from the provider, exit 1."""
    config, err = _refused(tmp_path, capsys, f"[params]\n{text}\n")
    assert err == f"runner: error: {config}: {said}"


@pytest.mark.parametrize(
    "flags",
    [["--otel-endpoint", "nope"], ["--otel-endpoint", "collector:4318/v1/metrics"]],
)
def test_an_otel_endpoint_without_a_scheme_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str]
) -> None:
    """It ran to exit 0, the SDK saying only "Failed to export metrics batch ... Invalid URL"."""
    _, err = _refused(tmp_path, capsys, "", *flags)
    assert err == f"runner: error: otel_endpoint must be an http(s) URL, got {flags[1]!r}"
