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


def _stamp(doc: dict[str, Any], status_field: str, ended: set[str]) -> dict[str, Any]:
    """A batch object with the key in fields the run records: a status while running, a
    counts entry, the metadata and a list of errors (spelled as sent, escaped, base64)."""
    doc = dict(doc)
    if doc.get(status_field) not in ended:
        doc[status_field] = f"{doc[status_field]} (auth {KEY})"
    counts = dict(doc.get("request_counts") or {})
    counts[f"seen-by-{KEY}"] = 0
    doc["request_counts"] = counts
    return doc


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_key_echoed_in_a_2xx_batch_object_never_reaches_an_output(
    tmp_path: Path,
    mock: MockFactory,
    shape: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 2xx batch object (create, retrieve, list) echoing the key in its status or counts: both
    are journaled, and the status goes into every progress line (the README's promise covers
    every output, not only the result rows)."""
    if shape == "openai":
        oview = mock_batch.BatchService._openai_view

        def echoing_o(self: Any, b: Any) -> dict[str, Any]:
            return _stamp(oview(self, b), "status", {"completed", "failed", "expired"})

        monkeypatch.setattr(mock_batch.BatchService, "_openai_view", echoing_o)
    else:
        aview = mock_batch.BatchService._anthropic_view

        def echoing_a(self: Any, b: Any, request: Any) -> dict[str, Any]:
            return _stamp(aview(self, b, request), "processing_status", {"ended"})

        monkeypatch.setattr(mock_batch.BatchService, "_anthropic_view", echoing_a)
    monkeypatch.setenv("QA_BATCH_KEY", KEY)
    _, url = await mock(batch={"duration_s": 0.3})
    jobs, ctx = make_inputs(tmp_path, 1, 3)
    cfg = batch_config(url, shape, ctx, api_key_env="QA_BATCH_KEY", progress="log")
    outcome = await run(jobs, cfg)
    assert outcome.summary["jobs"]["ok"] == 3
    err = capsys.readouterr().err
    assert "(auth [redacted])" in err  # the echo reached a progress line: the check means it
    assert KEY not in err
    journal = [
        p for p in [tmp_path / n for n in os.listdir(tmp_path)] if b"seen-by-" in p.read_bytes()
    ]
    assert journal, "the echoed counts entry reached no file: the test checks nothing"
    for path in [tmp_path / n for n in os.listdir(tmp_path)]:
        assert KEY.encode() not in path.read_bytes(), path.name


@pytest.mark.parametrize("shape", ["openai", "anthropic"])
async def test_a_batch_id_carrying_the_key_is_reported_lost_never_recorded(
    tmp_path: Path, mock: MockFactory, shape: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch id is journaled, logged and shown by ``runner status``: one carrying the key
    (base64-encoded here) is recorded redacted, so it no longer names the batch, which is then
    reported missing (exit 3) instead of being followed or sent again."""
    import base64

    from runner.batchapi.wire import BatchNotFound

    new_id = mock_batch.BatchService._new_id

    def keyed(self: Any, prefix: str) -> str:
        ident: str = new_id(self, prefix)
        if prefix.endswith("batch_"):
            ident += "-" + base64.b64encode(KEY.encode()).decode().rstrip("=")
        return ident

    monkeypatch.setattr(mock_batch.BatchService, "_new_id", keyed)
    monkeypatch.setenv("QA_BATCH_KEY", KEY)
    _, url = await mock(batch={"duration_s": 0.1})
    jobs, ctx = make_inputs(tmp_path, 1, 2)
    with pytest.raises(BatchNotFound):
        await run(jobs, batch_config(url, shape, ctx, api_key_env="QA_BATCH_KEY"))
    b64 = base64.b64encode(KEY.encode()).decode().rstrip("=")
    journaled = [
        p for p in [tmp_path / n for n in os.listdir(tmp_path)] if b"[redacted]" in p.read_bytes()
    ]
    assert journaled, "the redacted id reached no file: the test checks nothing"
    for path in [tmp_path / n for n in os.listdir(tmp_path)]:
        data = path.read_bytes()
        assert KEY.encode() not in data and b64.encode() not in data, path.name
