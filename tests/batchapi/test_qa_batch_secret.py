"""Found by QA: ``--via batch`` wrote the API key verbatim when the provider's result rows echo
it (generated text, request ids, error messages), though README ("Reliability") promises the key
never reaches a result, latency record or summary. A direct run scrubs every body
(``providers/_wire.KeyGuard``); the batch rows now go through the same guard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from batchapi.conftest import MockFactory, batch_config, make_inputs

from runner import run
from runner.mock import batch as mock_batch

KEY = "sk-qa-batch-SECRET/0123456789abcdef"
ECHOED = {"request_id", "content", "text", "message"}


def _echo(value: Any, field: str | None = None) -> Any:
    """The row with the key appended to every string a provider might echo it into."""
    if isinstance(value, dict):
        return {k: _echo(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_echo(v, field) for v in value]
    if isinstance(value, str) and field in ECHOED:
        return f"{value} (auth {KEY})"
    return value


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_key_echoed_in_batch_rows_never_reaches_an_output(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = mock_batch.BatchService._answer

    def echoing(self: Any, batch: Any, cid: str, body: dict[str, Any], status: int) -> Any:
        line, ok = answer(self, batch, cid, body, status)
        row = _echo(orjson.loads(line))
        raw = orjson.dumps(row)
        if cid.endswith("-q1"):  # the JSON-escaped spelling (\/ inside the key) hides it too
            raw = raw.replace(KEY.encode(), KEY.replace("/", "\\/").encode())
        return raw + b"\n", ok

    monkeypatch.setattr(mock_batch.BatchService, "_answer", echoing)
    monkeypatch.setenv("QA_BATCH_KEY", KEY)
    _, url = await mock(batch={"body_error_rate": 0.3, "body_error_status": 400})
    jobs, ctx = make_inputs(tmp_path, 2, 4)
    outcome = await run(jobs, batch_config(url, shape, ctx, api_key_env="QA_BATCH_KEY"))
    assert outcome.summary["jobs"]["total"] == 8
    results = jobs.with_name("jobs.results.jsonl").read_bytes()
    assert b"[redacted]" in results  # the echo reached the rows, so the check below means it
    for path in [tmp_path / name for name in os.listdir(tmp_path)]:
        data = path.read_bytes()
        assert KEY.encode() not in data, path.name
        assert KEY.replace("/", "\\/").encode() not in data, path.name
    for line in results.splitlines():  # still one valid JSON object per line
        orjson.loads(line)


async def test_a_key_echoed_in_a_failed_batchs_errors_never_reaches_an_output(
    tmp_path: Path, mock: MockFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed batch's ``errors.data`` message becomes the error of every row it left out."""
    view = mock_batch.BatchService._openai_view

    def echoing(self: Any, b: Any) -> dict[str, Any]:
        doc: dict[str, Any] = view(self, b)
        return dict(_echo(doc))

    monkeypatch.setattr(mock_batch.BatchService, "_openai_view", echoing)
    monkeypatch.setenv("QA_BATCH_KEY", KEY)
    _, url = await mock(batch={"token_limit": [1]})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    cfg = batch_config(url, "openai", ctx, api_key_env="QA_BATCH_KEY", batch_max_attempts=1)
    outcome = await run(jobs, cfg)
    assert outcome.summary["jobs"]["failed"] == 3
    results = jobs.with_name("jobs.results.jsonl").read_bytes()
    assert b"token_limit_exceeded" in results and b"[redacted]" in results
    for path in [tmp_path / name for name in os.listdir(tmp_path)]:
        assert KEY.encode() not in path.read_bytes(), path.name
