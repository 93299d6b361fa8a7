"""The mock's batch endpoints speak the real wire: object fields, status values, timestamps."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest

from runner.mock import MockConfig
from runner.mock.server import MockServer

OPENAI_BATCH_FIELDS = {
    "id",
    "object",
    "endpoint",
    "errors",
    "input_file_id",
    "completion_window",
    "status",
    "output_file_id",
    "error_file_id",
    "created_at",
    "in_progress_at",
    "expires_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
    "cancelling_at",
    "cancelled_at",
    "request_counts",
    "metadata",
}
ANTHROPIC_BATCH_FIELDS = {
    "id",
    "type",
    "processing_status",
    "request_counts",
    "ended_at",
    "created_at",
    "expires_at",
    "archived_at",
    "cancel_initiated_at",
    "results_url",
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
async def api(request: pytest.FixtureRequest) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    duration_s: float = getattr(request, "param", 0.4)
    server = MockServer(
        MockConfig(latency="zero", batch={"duration_s": duration_s, "shuffle": False})
    )
    url = await server.start()
    async with aiohttp.ClientSession() as session:
        yield url, session
    await server.close()


def chat(i: int) -> dict[str, Any]:
    return {"model": "mock-1", "max_tokens": 3, "messages": [{"role": "user", "content": f"q{i}"}]}


# 1.5 s: "finalizing" is the last tenth of a batch's time, and a poll every 30 ms missed a 40 ms
# window on a loaded machine.
@pytest.mark.parametrize("api", [1.5], indirect=True)
async def test_openai_batch_lifecycle(api: tuple[str, aiohttp.ClientSession]) -> None:
    url, s = api
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": chat(i)}
        for i in range(4)
    ]
    form = aiohttp.FormData()
    form.add_field("purpose", "batch")
    form.add_field("file", b"\n".join(orjson.dumps(x) for x in lines), filename="in.jsonl")
    async with s.post(url + "/files", data=form) as r:
        f = await r.json()
    assert f["object"] == "file" and f["purpose"] == "batch" and f["id"].startswith("file-")
    create = {
        "input_file_id": f["id"],
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"k": "v"},
    }
    async with s.post(url + "/batches", json=create) as r:
        b = await r.json()
    assert set(b) == OPENAI_BATCH_FIELDS
    assert b["object"] == "batch" and b["status"] == "validating" and b["metadata"] == {"k": "v"}
    assert b["expires_at"] - b["created_at"] == 86400
    seen = []
    while b["status"] != "completed":
        await asyncio.sleep(0.03)
        async with s.get(f"{url}/batches/{b['id']}") as r:
            b = await r.json()
        seen.append(b["status"])
    assert seen.index("in_progress") < seen.index("finalizing") < seen.index("completed")
    assert b["request_counts"] == {"total": 4, "completed": 4, "failed": 0}
    assert b["completed_at"] is not None and b["error_file_id"] is None
    async with s.get(f"{url}/files/{b['output_file_id']}/content") as r:
        rows = [orjson.loads(x) for x in (await r.read()).splitlines()]
    assert [x["custom_id"] for x in rows] == [f"r{i}" for i in range(4)]
    assert all(x["error"] is None and x["response"]["status_code"] == 200 for x in rows)
    assert rows[0]["id"].startswith("batch_req_")
    async with s.get(url + "/batches?limit=1") as r:
        page = await r.json()
    assert page["object"] == "list" and page["data"][0]["id"] == b["id"]
    async with s.post(url + "/batches", json={**create, "completion_window": "1h"}) as r:
        assert r.status == 400


async def test_anthropic_batch_lifecycle_and_cancel(
    api: tuple[str, aiohttp.ClientSession],
) -> None:
    url, s = api
    reqs = {"requests": [{"custom_id": f"r{i}", "params": chat(i)} for i in range(5)]}
    async with s.post(url + "/messages/batches", json=reqs) as r:
        b = await r.json()
    assert set(b) == ANTHROPIC_BATCH_FIELDS
    assert b["type"] == "message_batch" and b["processing_status"] == "in_progress"
    assert b["id"].startswith("msgbatch_") and RFC3339.match(b["created_at"])
    assert b["request_counts"] == {
        "processing": 5,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    async with s.post(url + "/messages/batches", json=reqs) as r:
        other = await r.json()
    await asyncio.sleep(0.25)  # about half done
    async with s.post(f"{url}/messages/batches/{other['id']}/cancel") as r:
        assert (await r.json())["processing_status"] == "canceling"
    await asyncio.sleep(0.3)
    async with s.get(f"{url}/messages/batches/{b['id']}") as r:
        b = await r.json()
    async with s.get(f"{url}/messages/batches/{other['id']}") as r:
        other = await r.json()
    assert b["processing_status"] == other["processing_status"] == "ended"
    assert RFC3339.match(b["ended_at"]) and RFC3339.match(other["cancel_initiated_at"])
    assert b["request_counts"]["succeeded"] == 5
    counts = other["request_counts"]
    assert counts["canceled"] > 0 and counts["succeeded"] > 0
    async with s.get(other["results_url"]) as r:
        rows = [orjson.loads(x) for x in (await r.read()).splitlines()]
    kinds = [x["result"]["type"] for x in rows]
    assert kinds.count("canceled") == counts["canceled"]
    assert rows[0]["result"]["message"]["type"] == "message"
