"""A ``--via batch`` run's summary has ``this_run`` on its first run as on a resumed one, as a
direct run's always does (README, Output; docs/INTERFACES.md)."""

from __future__ import annotations

from pathlib import Path

import orjson
from batchapi.conftest import MockFactory, batch_config, make_inputs

from runner import run


async def test_the_first_batch_run_reports_this_run_as_a_resumed_one_does(
    tmp_path: Path, mock: MockFactory
) -> None:
    _, url = await mock()
    jobs, ctx = make_inputs(tmp_path, 2, 3)
    cfg = batch_config(url, "openai", ctx)
    first = await run(jobs, cfg)
    assert first.exit_code == 0
    on_disk = orjson.loads(jobs.with_name("jobs.summary.json").read_bytes())
    for s in (first.summary, on_disk):
        # the first invocation did every job of the output: its own counts are the totals
        this = s["this_run"]
        assert this["ok"] == s["jobs"]["ok"] == 6 and this["failed"] == 0
        assert this["skipped_resumed"] == 0
        assert this["tokens"] == s["tokens"] and this["cost"] == s["cost"]
        assert this["wall_s"] == s["wall_s"]
    # Jobs appended: the resumed run's this_run holds only its own, with the same keys.
    more = b"".join(
        orjson.dumps({"id": f"new-{i}", "query": f"q{i}", "params": {"max_tokens": 2}}) + b"\n"
        for i in range(2)
    )
    with jobs.open("ab") as fh:
        fh.write(more)
    second = await run(jobs, cfg)
    assert second.exit_code == 0
    this = second.summary["this_run"]
    assert this["ok"] == 2 and this["skipped_resumed"] == 6
    assert second.summary["jobs"]["ok"] == 8
    assert set(this) == set(first.summary["this_run"])
