"""Explicit cache benchmark: the seed's 50 contexts x 200 questions, shuffled, on Gemini's shape.

Runs ``runner run --provider gemini`` against the simulated Gemini API (implicit caching off, so
every cached token comes from an explicit ``cachedContents``), then ``--cache none`` as the
baseline on a fresh server, and reports for the explicit run:

- every job exactly once (results file);
- the share of shared-prefix tokens billed as cached (target >= 95%): the sum of
  ``cached_tokens`` over the sum of each job's group prefix (the cache's size);
- caches alive on the server at the end (target 0);
- storage time: the server's cache-seconds (create to delete/expiry, per cache) over the
  groups' running time (first request sent to last answer, per group; target <= 1.5x);
- cost: billed, cache creation, storage, and the saving net of both, against ``none``.

    .venv/bin/python benchmarks/bench_explicit_cache.py [--contexts 50] [--questions 200]
"""

from __future__ import annotations

import argparse
import random
import sys
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LEGAL_WORDS as WORDS
from _common import OUT, PY, mock_server, run_child

TOKENS_PER_CONTEXT = 2000
MODEL = "gemini-2.5-flash"
PRICE = {"input": 0.30, "cached_input": 0.03, "cache_write": 0.30, "output": 2.50}
STORAGE = 1.00  # USD per 1M tokens per hour


def make_files(n_ctx: int, n_q: int, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    OUT.mkdir(exist_ok=True)
    ctx_path = OUT / f"gemini-contexts-{n_ctx}.jsonl"
    jobs_path = OUT / f"gemini-jobs-{n_ctx}x{n_q}.jsonl"
    with ctx_path.open("wb") as fh:
        for c in range(n_ctx):
            words: list[str] = [f"Contract {c}."]
            while sum(len(w) + 1 for w in words) < TOKENS_PER_CONTEXT * 4:
                words.append(rng.choice(WORDS))
            fh.write(orjson.dumps({"cache_id": f"contract-{c}", "system": " ".join(words)}) + b"\n")
    jobs = [(c, q) for c in range(n_ctx) for q in range(n_q)]
    rng.shuffle(jobs)
    with jobs_path.open("wb") as fh:
        for c, q in jobs:
            line = {
                "id": f"c{c}-q{q}",
                "cache_id": f"contract-{c}",
                "query": f"Question {q}: what does clause {q % 17} say about {rng.choice(WORDS)}?",
                "params": {"max_tokens": 16},
            }
            fh.write(orjson.dumps(line) + b"\n")
    return ctx_path, jobs_path


def run(url: str, tag: str, jobs: Path, ctx: Path, conc: int, cache: str) -> dict[str, Any]:
    cfg = OUT / "gemini-bench.toml"
    price = "".join(f"{k} = {v}\n" for k, v in PRICE.items())
    cfg.write_text(f'[prices."{MODEL}"]\n{price}cache_storage = {STORAGE}\n')
    base = url.rsplit("/v1", 1)[0] + "/v1beta"
    r = run_child(
        [
            PY, "-m", "runner", "run", str(jobs), "--provider", "gemini", "--base-url", base,
            "--model", MODEL, "--concurrency", str(conc), "--no-resume", "--progress", "off",
            "--contexts", str(ctx), "-c", str(cfg), "--cache", cache,
            "-o", str(OUT / f"{tag}.results.jsonl"), "--latency", str(OUT / f"{tag}.latency.jsonl"),
            "--summary", str(OUT / f"{tag}.summary.json"),
        ],
        900,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"runner run ({tag}) failed ({r.returncode}): {r.stderr[-3000:]}")
    summary: dict[str, Any] = orjson.loads((OUT / f"{tag}.summary.json").read_bytes())
    root = url.rsplit("/v1", 1)[0]
    summary["_mock"] = orjson.loads(urllib.request.urlopen(root + "/stats").read())
    summary["_wall"] = r.wall_s
    return summary


def analyse(tag: str, n_jobs: int) -> dict[str, Any]:
    ids = Counter(
        orjson.loads(line)["custom_id"]
        for line in (OUT / f"{tag}.results.jsonl").read_bytes().splitlines()
    )
    prefix: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    cached = 0
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for line in (OUT / f"{tag}.latency.jsonl").read_bytes().splitlines():
        rec = orjson.loads(line)
        cid = rec["cache_id"]
        count[cid] += 1
        c = rec["cached_tokens"] or 0
        cached += c
        prefix[cid] = max(prefix[cid], c)
        start = rec["started_at"] or rec["queued_at"]
        first[cid] = min(first.get(cid, start), start)
        last[cid] = max(last.get(cid, rec["ended_at"]), rec["ended_at"])
    # A group that never hit still had a prefix: count it as ~TOKENS_PER_CONTEXT uncached.
    shared = sum(count[g] * (prefix[g] or TOKENS_PER_CONTEXT) for g in count)
    running = sum(last[g] - first[g] for g in count)
    return {
        "jobs": len(ids),
        "exactly_once": len(ids) == n_jobs and set(ids.values()) == {1},
        "prefix_cached": cached / shared if shared else 0.0,
        "group_running_s": running,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--contexts", type=int, default=50)
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    ctx, jobs = make_files(args.contexts, args.questions, args.seed)
    n = args.contexts * args.questions
    flags = [
        "--base-ms", "40", "--prefill-ms-per-token", "0.05",
        "--cached-prefill-ms-per-token", "0.005", "--decode-ms-per-token", "2",
        "--no-gemini-implicit-cache", "--gemini-min-cache-tokens", "1024", "--seed", "3",
    ]  # fmt: skip
    runs = {}
    for cache in ("warm", "none"):
        with mock_server(*flags) as (url, _pid):  # a fresh server for each
            runs[cache] = run(url, f"gemini-{cache}", jobs, ctx, args.concurrency, cache)
    warm, none = runs["warm"], runs["none"]
    a = analyse("gemini-warm", n)
    g = warm["_mock"]["gemini"]
    cache_s = sum(x["end"] - x["start"] for x in g["lifetimes"])
    cost, cost0 = warm["cost"], none["cost"]
    out = {
        "jobs": a["jobs"],
        "exactly_once": a["exactly_once"],
        "failed": warm["jobs"]["failed"],
        "prefix_cached_ratio": round(a["prefix_cached"], 4),
        "caches_created": g["caches_created"],
        "caches_alive_at_end": g["caches_alive"],
        "caches_expired": g["caches_expired"],
        "cache_seconds": round(cache_s, 2),
        "group_running_seconds": round(a["group_running_s"], 2),
        "storage_over_running": round(cache_s / a["group_running_s"], 3),
        "wall_s_explicit": round(warm["_wall"], 2),
        "wall_s_none": round(none["_wall"], 2),
        "billed_usd": cost["billed"],
        "cache_create_usd": cost["cache_create"],
        "storage_usd": cost["storage"],
        "billed_total_usd": cost["billed_total"],
        "saving_net": cost["saving_net"],
        "none_billed_usd": cost0["billed"],
        "uncached_usd": cost["uncached"],
    }
    for k, v in out.items():
        print(f"{k:>24}  {v}")
    ok = (
        out["exactly_once"]
        and out["prefix_cached_ratio"] >= 0.95
        and out["caches_alive_at_end"] == 0
        and out["storage_over_running"] <= 1.5
    )
    print("targets met" if ok else "TARGETS MISSED")
    (OUT / "explicit_cache.json").write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
