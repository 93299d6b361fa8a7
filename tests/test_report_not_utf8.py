"""A latency line that is not UTF-8 is called that, never orjson's "surrogates not allowed"."""

from __future__ import annotations

from pathlib import Path

from runner.report import read_records

_GOOD = b'{"custom_id":"a","outcome":"ok","latency_ms":5.0}\n'


def test_invalid_utf8_is_named_with_its_byte(tmp_path: Path) -> None:
    path = tmp_path / "lat.jsonl"
    path.write_bytes(_GOOD + b'{"custom_id":"b\xff"}\n' + b"not json\n")
    said: list[tuple[int, str]] = []
    got = list(read_records(path, warn=lambda _p, n, why: said.append((n, why))))
    assert [n for n, _ in got] == [1]
    assert said[0] == (2, "not JSON (invalid UTF-8 at byte 16)")
    assert said[1][0] == 3 and said[1][1].startswith("not JSON (") and "UTF-8" not in said[1][1]
    assert not any("surrogates" in why for _, why in said)
