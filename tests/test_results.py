"""The one result model: what the engines write is what resume reads back."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from runner.accounting import Accounts
from runner.budget import RequestBudget
from runner.cache import Dispatch
from runner.config import RunConfig
from runner.models import Attempt, ErrorInfo, Job, LatencyRecord
from runner.recorder import Recorder
from runner.results import ResultLine, line_key, parse_result, rerun_code, result_key


def old_shape(result: dict[str, Any]) -> bytes:
    """How the engine built result lines before the model existed (docs/FORMATS.md)."""
    return orjson.dumps(result, option=orjson.OPT_APPEND_NEWLINE)


@pytest.mark.parametrize(
    ("line", "old"),
    [
        (
            ResultLine("b1", "j1", 3, 200, "req_1", orjson.Fragment(b'{"x":1}'), metadata={"m": 1}),
            {
                "id": "b1",
                "custom_id": "j1",
                "response": {"status_code": 200, "request_id": "req_1", "body": {"x": 1}},
                "error": None,
                "metadata": {"m": 1},
            },
        ),
        (
            ResultLine("b2", "j2", 4, 503, None, {"e": 1}, "http_5xx", "down"),
            {
                "id": "b2",
                "custom_id": "j2",
                "response": {"status_code": 503, "request_id": None, "body": {"e": 1}},
                "error": {"code": "http_5xx", "message": "down"},
            },
        ),
        (
            ResultLine("b3", "j3", 5, error_code="timeout", error_message="slow"),
            {
                "id": "b3",
                "custom_id": "j3",
                "response": None,
                "error": {"code": "timeout", "message": "slow"},
            },
        ),
        (
            ResultLine("b4", None, 9, error_code="invalid_input", error_message="bad"),
            {
                "id": "b4",
                "custom_id": None,
                "response": None,
                "error": {"code": "invalid_input", "message": "bad"},
                "line": 9,
            },
        ),
    ],
)
def test_result_lines_are_byte_compatible_and_read_back(line: ResultLine, old: Any) -> None:
    raw = line.to_json()
    assert raw == old_shape(old)
    obj = parse_result(raw)
    assert obj is not None and result_key(obj) == line.key
    assert line_key(raw) == line_key(raw.rstrip(b"\n")) == line.key  # merge's byte-level read
    retried = line.error_code in ("timeout", "http_5xx")  # transient: --retry-failed sends again
    assert rerun_code(obj) == (line.error_code if retried else None)


def test_a_line_keyed_result_never_stands_for_a_job() -> None:
    assert ResultLine("b", None, 7).key == 7
    assert result_key({"custom_id": None, "line": 7}) == 7
    assert result_key({"custom_id": "j", "line": 7}) == "j"
    assert result_key({"custom_id": None, "line": "7"}) is None
    assert parse_result(b'{"custom_id": "j", "resp') is None
    assert parse_result(b"[1]") is None


def test_line_key_reads_the_id_from_the_bytes_or_parses_what_it_cannot() -> None:
    # the byte read: the id between the quotes, as UTF-8 text
    assert line_key(b'{"id":"b1","custom_id":"caf\xc3\xa9","response":null}') == "caf\u00e9"
    # an escape in the id (or another layout) is parsed, never sliced
    assert line_key(b'{"id":"b1","custom_id":"a\\"b","error":null}') == 'a"b'
    assert line_key(b'{"custom_id": "j", "id": "b1"}') == "j"
    assert line_key(b'{"id":"b1","custom_id":null,"line":4}') == 4
    assert line_key(b'{"id":"b1","custom_id":null}') is None  # keyless: the caller rejects it
    for bad in (b"{oops", b"[1]"):
        assert line_key(bad) is None


class _Sink:
    def __init__(self) -> None:
        self.written: list[tuple[bytes, LatencyRecord]] = []

    def done(self, custom_id: str | int) -> bool:
        return False

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        self.written.append((result.to_json(), record))

    def flush(self) -> None:
        pass


def test_the_recorder_writes_the_raw_body_verbatim_and_counts_usage_once() -> None:
    from runner.models import Price, Usage

    config = RunConfig(model="m", prices={"m": Price(input=1.0, output=2.0)})
    accounts = Accounts(config, RequestBudget.for_run(config))
    sink = _Sink()
    rec = Recorder(sink, accounts, model="m")
    rec.start(100.0)
    job = Job("j1", 1, ({"role": "user", "content": "x"},), 0, None, None, None, {}, 4, 0)
    # a spelling orjson would never produce: proof that the bytes are not re-encoded
    raw = b'{"a": 1}'
    a = Attempt(status=200, body={"a": 1}, raw=raw, usage=Usage(10, 0, 0, 5))
    rec.job(Dispatch(job, "none", None, admitted=101.0), a, attempts=1, t_start=102.0,
            now=103.0, limiter_s=0.5)  # fmt: skip
    line, record = sink.written[0]
    assert b'"body":{"a": 1}' in line
    assert record.queue_ms == pytest.approx(1000.0) and record.total_ms == pytest.approx(1000.0)
    s = accounts.stats
    assert (s.prompt_tokens, s.completion_tokens, s.done, s.ok) == (10, 5, 1, 1)
    assert s.billed == pytest.approx((10 * 1.0 + 5 * 2.0) / 1e6)
    assert accounts.summary.prompt == 10 and accounts.summary.completion == 5
    err = Attempt(status=None, error=ErrorInfo("timeout", "slow", retriable=True))
    rec.job(Dispatch(job, "none", None), err, attempts=3, t_start=104.0, now=105.0, limiter_s=0.0)
    assert (s.done, s.failed, s.prompt_tokens) == (2, 1, 10)
    assert orjson.loads(sink.written[1][0])["response"] is None
