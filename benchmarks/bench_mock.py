"""Is the simulated provider ever the bottleneck? CPU per request of the mock vs its client.

Starts ``python -m runner.mock --latency zero`` as a child process and drives it from this
process with a minimal aiohttp + uvloop + orjson client (closed loop, fixed concurrency). CPU time
of both processes is read before and after the measured requests (the server's from
``/proc/<pid>/stat``, ours from ``time.process_time``), so the ratio holds on a busy machine where
wall-clock throughput does not. Target: mock CPU per request <= 0.75x the client's.

Scenarios, each against a fresh server:

* ``plain``: small bodies, the default config (cache on, but prompts are below its minimum).
* ``cache``: 1,300-token prompts sharing a 1,200-token prefix, so every request hashes blocks,
  looks up and commits the cache.
* ``cache+faults+limits``: as ``cache`` with RPM/TPM buckets and rate headers, and 1% of requests
  answered 500 by the fault machinery.
* ``stream``: small bodies with SSE streaming of 16 tokens and usage.

    .venv/bin/python benchmarks/bench_mock.py [--requests 20000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import aiohttp
import orjson
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_seconds, mock_server

SCENARIOS: dict[str, tuple[list[str], str]] = {
    "plain": ([], "small"),
    "cache": (["--cache-block-tokens", "128"], "shared"),
    "cache+faults+limits": (
        ["--rpm", "100000000", "--tpm", "1000000000000", "--fault-http-500", "0.01"],
        "shared",
    ),
    "stream": ([], "stream"),
}


def bodies(kind: str, n: int) -> list[bytes]:
    """Request bodies; ``shared`` ones have a 1,200-token common prefix (4 bytes per token)."""
    if kind == "shared":
        prefix = ("lorem ipsum dolor sit amet " * 178)[:4800]
        return [
            orjson.dumps(
                {
                    "model": "mock-1",
                    "messages": [
                        {"role": "system", "content": prefix},
                        {"role": "user", "content": f"question {i} " + "x" * 380},
                    ],
                    "max_tokens": 16,
                }
            )
            for i in range(n)
        ]
    doc: dict[str, object] = {
        "model": "mock-1",
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 16,
    }
    if kind == "stream":
        doc["stream"] = True
        doc["stream_options"] = {"include_usage": True}
    return [orjson.dumps(doc)] * n


async def drive(url: str, payloads: list[bytes], concurrency: int) -> tuple[int, int]:
    """Send every payload, ``concurrency`` at a time; returns (ok, other) response counts."""
    connector = aiohttp.TCPConnector(limit=concurrency)
    counts = [0, 0]
    it = iter(payloads)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            for body in it:
                async with session.post(url, data=body, headers=headers) as resp:
                    raw = await resp.read()
                    if resp.status == 200 and resp.content_type == "application/json":
                        orjson.loads(raw)
                    counts[resp.status != 200] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return counts[0], counts[1]


def run_scenario(name: str, requests: int, concurrency: int) -> dict[str, float]:
    flags, kind = SCENARIOS[name]
    with mock_server("--latency", "zero", *flags) as (base, pid):
        url = base + "/chat/completions"
        warm = bodies(kind, min(1000, requests // 10))
        load = bodies(kind, requests)
        uvloop.run(drive(url, warm, concurrency))
        server0, client0, wall0 = cpu_seconds(pid), time.process_time(), time.perf_counter()
        ok, other = uvloop.run(drive(url, load, concurrency))
        wall = time.perf_counter() - wall0
        client = time.process_time() - client0
        server = cpu_seconds(pid) - server0
    return {
        "requests": ok + other,
        "non_200": other,
        "server_us_per_req": server / requests * 1e6,
        "client_us_per_req": client / requests * 1e6,
        "ratio": server / client if client else float("nan"),
        "requests_per_s": requests / wall,
        "server_req_per_cpu_s": requests / server if server else float("inf"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--json", action="store_true", help="print results as JSON lines")
    ns = parser.parse_args()
    print(
        f"{'scenario':<22}{'mock us/req':>12}{'client us/req':>14}{'ratio':>8}"
        f"{'req/s':>9}{'mock req/CPU-s':>16}{'non-200':>9}"
    )
    worst = 0.0
    for name in ns.scenarios:
        r = run_scenario(name, ns.requests, ns.concurrency)
        worst = max(worst, r["ratio"]) if name == "plain" else worst
        if ns.json:
            print(orjson.dumps({"scenario": name, **r}).decode())
        print(
            f"{name:<22}{r['server_us_per_req']:>12.1f}{r['client_us_per_req']:>14.1f}"
            f"{r['ratio']:>8.2f}{r['requests_per_s']:>9.0f}{r['server_req_per_cpu_s']:>16.0f}"
            f"{int(r['non_200']):>9}",
            flush=True,
        )
    verdict = "ok" if worst <= 0.75 else "over"
    print(f"plain ratio {worst:.2f} (target <= 0.75): {verdict}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
