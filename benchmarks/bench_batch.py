"""Batch API benchmark: the 50 contexts x 200 questions scenario through the mock's batch API.

Both shapes (OpenAI Batch, Anthropic Message Batches), the same jobs file bench_cache.py builds
(50 contexts of about 2,000 tokens, 200 shuffled questions each: 10,000 jobs). For each shape it
runs ``runner run --via batch`` against a fresh mock whose batches take ``--batch-seconds``, then
checks every job has exactly one result and latency line, counts the batches and requests the
mock saw (each job must be submitted once), and compares the cost billed at the batch price with
the direct uncached price of the same tokens.

    .venv/bin/python benchmarks/bench_batch.py [--contexts 50] [--questions 200]

``--no-server-cache`` turns the mock's prefix cache off, so no row is a cache hit (the bound
is then exactly 50%).

Targets: every job exactly once; requests seen by the mock == jobs; cost <= 50% of the direct
uncached price (lower where the batch reports cache hits).
"""

from __future__ import annotations

import argparse
import sys
import urllib.request
from dataclasses import replace
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, mock_server, run_child
from bench_cache import PRICE, SHAPES, make_files


def count_ids(path: Path) -> tuple[int, int]:
    """(lines, distinct custom ids) of a JSONL output."""
    ids = set()
    n = 0
    with path.open("rb") as fh:
        for line in fh:
            n += 1
            ids.add(orjson.loads(line)["custom_id"])
    return n, len(ids)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=50)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--batch-seconds", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--no-server-cache", action="store_true", help="mock without a prefix cache: no hits"
    )
    args = ap.parse_args()
    # The lru shape's 2,000-word contexts, resized (make_files takes a Shape since bench_cache
    # grew several; mypy on benchmarks/ found this call still passing the old arguments).
    lru = replace(SHAPES["lru"], name="batch", contexts=args.contexts, questions=args.questions)
    ctx, jobs = make_files(lru, args.seed)
    n_jobs = args.contexts * args.questions
    cfg = OUT / "batch-bench.toml"
    cfg.write_text(
        "poll_interval = 0.5\n"
        '[prices."mock-1"]\n' + "".join(f"{k} = {v}\n" for k, v in PRICE.items())
    )
    batch = orjson.dumps({"duration_s": args.batch_seconds}).decode()
    failures = 0
    for shape in ("openai", "anthropic"):
        out = OUT / f"batch-{shape}"
        for suffix in (".results.jsonl", ".latency.jsonl", ".summary.json"):
            Path(str(out) + suffix).unlink(missing_ok=True)
        flags = ["--latency", "zero", "--seed", "3", "--batch", batch]
        if args.no_server_cache:
            flags.append("--no-cache")
        with mock_server(*flags) as (url, _pid):
            r = run_child(
                [
                    PY, "-m", "runner", "run", str(jobs), "--contexts", str(ctx), "-c", str(cfg),
                    "--provider", shape, "--base-url", url, "--via", "batch", "--no-resume",
                    "-o", f"{out}.results.jsonl", "--latency", f"{out}.latency.jsonl",
                    "--summary", f"{out}.summary.json", "--progress", "off",
                ]
            )  # fmt: skip
            with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=30) as resp:
                seen = orjson.loads(resp.read())["batch"]
        if r.returncode != 0:
            print(r.stderr[-3000:])
            failures += 1
            continue
        summary = orjson.loads(Path(f"{out}.summary.json").read_bytes())
        res = count_ids(Path(f"{out}.results.jsonl"))
        lat = count_ids(Path(f"{out}.latency.jsonl"))
        direct = summary["batch"]["at_list_price"]["uncached_usd"]
        billed = summary["cost"]["billed"]
        tokens = summary["tokens"]
        once = res == lat == (n_jobs, n_jobs) and seen["requests"] == n_jobs
        ratio = billed / direct
        print(
            f"{shape:9s} jobs {n_jobs:,}: results {res[0]:,} lines/{res[1]:,} ids, latency "
            f"{lat[0]:,}/{lat[1]:,}; mock saw {seen['creates'][shape]} batches, "
            f"{seen['requests']:,} requests, {seen['uploads']} uploads; "
            f"cached {tokens['cached'] / tokens['prompt']:.1%} of prompt tokens; "
            f"billed ${billed:.4f} vs direct uncached ${direct:.4f} = {ratio:.1%}; "
            f"wall {r.wall_s:.1f} s, runner CPU {r.cpu_s:.1f} s, peak RSS {r.max_rss_mb:.0f} MB"
            f" -> {'OK' if once and ratio <= 0.5 else 'FAIL'}"
        )
        failures += not (once and ratio <= 0.5)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
