"""Acquire/release pairs per second through :class:`runner.limits.RateController`.

Measures the per-attempt overhead the controller adds to the pipeline's hot path: once with
no rate limits (concurrency only) and once with limits far above what the loop can reach, so
the buckets are consulted but never make anyone wait.

    python benchmarks/bench_limits.py [--pairs N]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from runner.limits import RateController
from runner.models import Attempt, RateInfo, Usage


async def _pairs(n: int, *, rpm: float | None, tpm: float | None, headers: bool) -> float:
    ctl = RateController(concurrency=64, rpm=rpm, tpm=tpm)
    rate = RateInfo(limit_requests=rpm, limit_tokens=tpm) if headers else None
    attempt = Attempt(status=200, usage=Usage(prompt_tokens=90, completion_tokens=20), rate=rate)
    acquire, release = ctl.acquire, ctl.release
    start = time.perf_counter()
    for _ in range(n):
        await acquire(100)
        release(100, attempt)
    return n / (time.perf_counter() - start)


async def _main(n: int) -> None:
    cases = [
        ("no limits", None, None, False),
        ("generous rpm+tpm", 1e12, 1e15, False),
        ("generous rpm+tpm, rate headers", 1e12, 1e15, True),
    ]
    for name, rpm, tpm, headers in cases:
        best = max([await _pairs(n, rpm=rpm, tpm=tpm, headers=headers) for _ in range(3)])
        print(f"{name:32s} {best:12,.0f} pairs/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200_000)
    ns = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows
        asyncio.run(_main(ns.pairs))
    else:
        uvloop.run(_main(ns.pairs))


if __name__ == "__main__":
    main()
