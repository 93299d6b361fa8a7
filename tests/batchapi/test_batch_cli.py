"""The batch path from the command line: validate's estimate, status, misuse, progress."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from batchapi.conftest import MockFactory, batch_config, make_inputs

from runner import run
from runner.batchapi.engine import run_batch
from runner.cli import main
from runner.config import RunConfig
from runner.errors import ResumeError
from runner.sinks import read_meta_section, write_meta_section


def toml(tmp: Path, url: str | None = None) -> Path:
    path = tmp / "c.toml"
    text = (
        'poll_interval = 0.02\n[prices."mock-1"]\ninput = 2.0\noutput = 8.0\ncached_input = 0.5\n'
    )
    if url:
        text = f'provider = "openai"\nbase_url = "{url}"\n' + text
    path.write_text(text)
    return path


def test_validate_via_batch_estimates_batch_next_to_direct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    args = ["validate", str(jobs), "--contexts", str(ctx), "-c", str(toml(tmp_path))]
    assert main([*args, "--via", "batch"]) == 0
    out = capsys.readouterr().out
    direct = re.search(r"\$([\d.]+) without caching", out)
    batch = re.search(r"estimated batch cost: \$([\d.]+)-\$([\d.]+) vs \$([\d.]+)", out)
    assert direct and batch, out
    assert float(batch.group(3)) == pytest.approx(float(direct.group(1)), abs=1.5e-4)
    assert float(batch.group(2)) == pytest.approx(0.5 * float(direct.group(1)), abs=1.5e-4)
    assert float(batch.group(1)) < float(batch.group(2))  # with the estimated cache hits
    assert main(args) == 0
    assert "via batch" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--order", "input"], "order 'input' does not apply"),
        (["--max-cost", "1"], "max_cost cannot stop a provider batch"),
        (["--poll-interval", "0"], "poll_interval must be > 0"),
        (["--metrics-textfile", "{tmp}/m.prom"], "--metrics-textfile: metrics are not exported"),
        (["--metrics-port", "0"], "--metrics-port: metrics are not exported"),
        (["--pushgateway", "http://127.0.0.1:9"], "--pushgateway: metrics are not exported"),
        (
            ["--provider", "gemini", "--base-url", "http://127.0.0.1:9"],
            "--via batch speaks the OpenAI and Anthropic batch APIs",
        ),
    ],
)
def test_misuse_exits_2_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    assert main(["run", str(jobs), "--contexts", str(ctx), "--via", "batch", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "jobs.results.jsonl").exists()
    if "--metrics-textfile" in flags:  # the refusal's end gauges alone (runner/refusal.py)
        assert 'runner_exit_code{job_name="runner"} 2.0' in (tmp_path / "m.prom").read_text()


def test_a_bad_batch_discount_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    cfg = toml(tmp_path)
    cfg.write_text(cfg.read_text() + "batch_discount = 1.5\n")
    assert main(["run", str(jobs), "--contexts", str(ctx), "-c", str(cfg), "--via", "batch"]) == 2
    assert "batch_discount must be in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "jobs.results.jsonl").exists()


def test_status_of_a_missing_output_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", str(tmp_path / "nothing.results.jsonl")]) == 2
    assert "not a runner output" in capsys.readouterr().err


async def test_status_reads_without_changing_and_direct_runs_refuse_batches_in_flight(
    tmp_path: Path, mock: MockFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    _, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    cfg = batch_config(url, "openai", ctx)
    assert (await run_batch(jobs, cfg)).exit_code == 0
    results = tmp_path / "jobs.results.jsonl"
    meta = results.with_name("jobs.results.jsonl.meta.json")
    before = meta.read_bytes(), results.read_bytes()
    assert main(["status", str(results)]) == 0
    out = capsys.readouterr().out
    assert "3 result lines" in out and "completed" in out and "1 chunks, 0 not done" in out
    assert (meta.read_bytes(), results.read_bytes()) == before
    # Pretend the batch were still running: a direct run would send its jobs a second time.
    journal = read_meta_section(results, "batch")
    journal["chunks"][0]["state"] = "submitted"
    write_meta_section(results, "batch", journal)
    with pytest.raises(ResumeError, match="provider batches not yet collected") as err:
        await run(jobs, cfg.with_overrides(via="direct"))
    assert err.value.exit_code == 2


async def test_progress_line_per_poll_with_backoff_while_nothing_changes(
    tmp_path: Path, mock: MockFactory
) -> None:
    _, url = await mock(batch={"duration_s": 1.5})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    log = io.StringIO()
    await run_batch(jobs, batch_config(url, "openai", ctx, progress="auto"), log=log)
    text = log.getvalue()
    assert "validating 0/3" in text and "in_progress" in text and "completed: 3 written" in text
    waits = [float(x) for x in re.findall(r"next poll in ([\d.]+)s", text)]
    # Validating takes 0.1 s with nothing to report: the interval grows from 0.02 s by 1.5x,
    # and drops back to 0.02 s once the counts move again.
    grown = [i for i, w in enumerate(waits) if w == pytest.approx(0.03, abs=0.001)]
    assert grown and waits[0] == pytest.approx(0.02, abs=0.001)
    assert waits[grown[0] + 1] == pytest.approx(0.045, abs=0.001) or waits[grown[0] + 1] == 0.02
    assert min(waits[grown[0] :]) == pytest.approx(0.02, abs=0.001)


async def test_the_built_in_mock_serves_a_batch_run(tmp_path: Path) -> None:
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    cfg = RunConfig(contexts=ctx, via="batch", progress="off", mock={"batch": {"duration_s": 0.2}})
    outcome = await run(jobs, cfg)
    assert outcome.exit_code == 0 and outcome.summary["jobs"]["ok"] == 2
    assert outcome.summary["batch"]["batches_created"] == 1


def test_bad_mock_batch_options_exit_2_before_any_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    cfg = tmp_path / "m.toml"
    cfg.write_text("[mock.batch]\nnope = 1\n")
    args = ["run", str(jobs), "--contexts", str(ctx), "-c", str(cfg), "--via", "batch"]
    assert main(args) == 2
    assert "batch: " in capsys.readouterr().err
    assert not (tmp_path / "jobs.results.jsonl").exists()


@pytest.mark.parametrize("flag", [["--workers", "2"], ["--shard", "0/2"]])
def test_via_batch_refuses_shards_and_workers(tmp_path: Path, flag: list[str]) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_bytes(b'{"id": "a", "query": "q"}\n')
    assert main(["run", str(jobs), "--via", "batch", *flag]) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.jsonl"]


def test_json_logs_end_with_a_run_end_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Found by QA: --via batch --log-format json wrote nothing at all, so a log pipeline
    # waiting for run_end never learnt how the run ended.
    import orjson

    jobs, ctx = make_inputs(tmp_path, 2, 3)
    args = ["run", str(jobs), "--contexts", str(ctx), "-c", str(toml(tmp_path)), "--via", "batch"]
    assert main([*args, "--log-format", "json"]) == 0
    lines = capsys.readouterr().err.splitlines()
    events = [orjson.loads(line) for line in lines]  # every line is JSON
    end = events[-1]
    assert end["event"] == "run_end" and end["via"] == "batch" and end["exit_code"] == 0
    assert end["jobs"]["ok"] == 6
