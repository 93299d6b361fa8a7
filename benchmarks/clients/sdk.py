"""Reference: the official ``openai`` SDK (``AsyncOpenAI`` + a semaphore), as its docs suggest.

Usage: sdk.py JOBS BASE_URL OUT CONCURRENCY
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import orjson
from openai import AsyncOpenAI


async def main(jobs_path: str, base_url: str, out_path: str, concurrency: int) -> None:
    with open(jobs_path, "rb") as fh:
        jobs = [orjson.loads(line) for line in fh if line.strip()]
    client = AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=2)
    sem = asyncio.Semaphore(concurrency)
    ok = 0
    with open(out_path, "w") as out:

        async def one(job: dict[str, Any]) -> None:
            nonlocal ok
            async with sem:
                r = await client.chat.completions.create(
                    model="mock-1",
                    messages=[{"role": "user", "content": job["query"]}],
                    max_tokens=job.get("params", {}).get("max_tokens", 16),
                )
                ok += 1
            out.write(orjson.dumps({"custom_id": job["id"], "body": r.model_dump()}).decode())
            out.write("\n")

        t0 = time.perf_counter()
        await asyncio.gather(*(one(j) for j in jobs))
        wall = time.perf_counter() - t0
    await client.close()
    print(orjson.dumps({"requests": len(jobs), "ok": ok, "wall_s": wall}).decode())


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
