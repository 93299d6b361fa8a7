"""Baseline: the leanest reasonable aiohttp + uvloop + orjson client.

Reads the same compact jobs file, keeps ``concurrency`` requests in flight with a semaphore,
parses each response, writes one result line per job, and prints {"requests", "ok", "wall_s"}
as JSON. Nothing else: no retries, no latency records, no summary. It is the floor that
``benchmarks/bench_throughput.py`` compares ``runner run`` against.
Usage: minimal.py JOBS BASE_URL OUT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import aiohttp
import orjson
import uvloop


async def main(jobs_path: str, base_url: str, out_path: str, concurrency: int) -> None:
    with open(jobs_path, "rb") as fh:
        jobs = [orjson.loads(line) for line in fh if line.strip()]
    url = base_url + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    sem = asyncio.Semaphore(concurrency)
    ok = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    with open(out_path, "wb") as out:
        async with aiohttp.ClientSession(connector=connector) as session:

            async def one(job: dict[str, Any]) -> None:
                nonlocal ok
                body = {
                    "model": "mock-1",
                    "messages": [{"role": "user", "content": job["query"]}],
                    **job.get("params", {}),
                }
                async with sem:
                    async with session.post(url, data=orjson.dumps(body), headers=headers) as r:
                        raw = await r.read()
                        if r.status == 200 and "choices" in orjson.loads(raw):
                            ok += 1
                out.write(b'{"custom_id":"%s","body":%s}\n' % (job["id"].encode(), raw))

            t0 = time.perf_counter()
            await asyncio.gather(*(one(j) for j in jobs))
            wall = time.perf_counter() - t0
    print(orjson.dumps({"requests": len(jobs), "ok": ok, "wall_s": wall}).decode())


if __name__ == "__main__":
    uvloop.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
