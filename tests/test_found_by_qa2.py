"""Problems a second user-level QA pass found, each pinned by the test that would have caught it."""

from __future__ import annotations

from pathlib import Path

import orjson
from test_shards import _ids, _workers, _write_input


def test_workers_with_order_input_write_the_results_in_input_order(tmp_path: Path) -> None:
    # Found by QA: `--workers 3 --order input` wrote the merged results shard after shard (each
    # shard in input order, the whole not), so the option was silently ignored. The input has a
    # duplicate id and a bad line, whose results are keyed by their line number.
    jobs, ctx = _write_input(tmp_path)
    with open(jobs, "ab") as fh:
        fh.write(b'{"id": "c0-q0", "query": "a duplicate id"}\n')
        fh.write(b'{"id": "tail", "query": "the last line"}\n')
    keys = []
    for n, raw in enumerate(jobs.read_bytes().splitlines(), 1):
        try:
            key = orjson.loads(raw)["id"]
        except orjson.JSONDecodeError:
            key = None
        keys.append(f"line:{n}" if key is None or key in keys else key)
    r = _workers(jobs, ctx, 3, "--order", "input")
    assert r.returncode == 1, r.stderr.decode()[-2000:]  # the bad line and the duplicate
    assert _ids(tmp_path / "jobs.results.jsonl") == keys
    # resumed (nothing to send) and merged again: still in input order
    r = _workers(jobs, ctx, 3, "--order", "input")
    assert r.returncode == 1, r.stderr.decode()[-2000:]
    assert _ids(tmp_path / "jobs.results.jsonl") == keys
