"""Cache benchmark: default `--cache warm` against `--cache none` and a sweep of fixed limits,
on every cache shape, in the same invocation.

Shapes (each run gets a fresh, cold server):

- ``lru``: 50 contexts of about 2,000 tokens x 200 questions (10,000 jobs), concurrency 128,
  the simulated provider with a vLLM-like global LRU prefix cache holding about 10 contexts;
- ``slots``: 12 contexts of about 1,000 tokens x 32 questions, concurrency 8, the simulated
  provider in per-slot mode (8 slots, llama.cpp-like);
- ``replicas``: 16 contexts of about 2,000 tokens x 50 questions, concurrency 32, 4 simulated
  replicas routed by ``prompt_cache_key``, each with an LRU holding about 4 contexts;
- ``llama``: llama.cpp's own ``llama-server`` (8 slots, ``make realserver``), 8 contexts of about
  900 words x 16 questions, concurrency 8 (skipped when the server is not built);
- ``demo``: ``make demo``'s own shape (examples/, configs/mock.toml's limits and latency model:
  a long tail of 1,024-token answers, p99 about 6 s) on a separate mock, one mock seed per
  round (``--seeds``), alternating default warm, ``--no-cache-adapt`` and ``--cache none``; wall
  time only (no sweep: the global LRU holds every context).
- ``demo-open``: the same with replies of unknown length (``max_tokens = 512`` on every job, the
  mock stopping 90% of replies early at a random length); ``--demo-copies K`` runs the demo's
  jobs K times over (new ids, the same contexts), since the cache probe's cost is per run.

Every shape runs ``none``, default ``warm`` (learned limits), ``fixed warm`` (``--no-cache-adapt``,
the default before the controller) and ``warm g64`` (a ceiling of 64 groups). Workloads are
shuffled so groups interleave. The sweep fixes the limits (``--no-cache-adapt``)
at ``--max-active-groups`` in {1, 2, 4, 8, 16} and, where a per-group cap applies,
``--group-concurrency`` in {1, unlimited}; the best swept hit ratio is the reference.

    .venv/bin/python benchmarks/bench_cache.py [--shapes lru,slots,replicas,llama] [--runs 1]

Targets: default warm reaches >= 95% of the best swept hit ratio on every shape and never less
than none; its wall time is <= 1.05x none; on ``lru`` >= 99% of the best possible cached ratio
(every request but each group's first served from cache) and >= 85% input saving (cached input
at 0.1x); on ``llama`` >= 0.85 of prompt tokens cached.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import LEGAL_WORDS, OUT, mock_server, runner_run
from _realserver import built, llama_server

# Words that are one token each in the test model's vocabulary (tools/realserver/make_model.py).
PLAIN = (
    "the of and to in is it you that he was for on are with as his they be at one have this "
    "from or had by not word but what some we can out other were all there when up use your "
    "how said an each she which do their time if will way about many then them write would "
    "like so these her long make thing see him two has look more day could go come did number"
).split()
PRICE = {"input": 1.0, "cached_input": 0.1, "output": 4.0}
GROUPS_SWEEP = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Shape:
    name: str
    contexts: int
    questions: int
    context_words: int
    concurrency: int
    server: Callable[[], AbstractContextManager[str]]
    caps: tuple[int | None, ...] = (None,)  # per-group caps swept (None: unlimited)
    words: tuple[str, ...] = tuple(LEGAL_WORDS)
    max_tokens: int = 16
    model: str = "mock-1"
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class Run:
    label: str
    summary: dict[str, Any]
    tag: str

    @property
    def ratio(self) -> float:
        t = self.summary["tokens"]
        return float(t["cached"]) / t["prompt"] if t["prompt"] else 0.0

    @property
    def wall(self) -> float:
        return float(self.summary["wall_s"])


def _mock(*flags: str) -> Callable[[], AbstractContextManager[str]]:
    def start() -> Iterator[str]:
        with mock_server(*flags) as (url, _pid):
            yield url

    from contextlib import contextmanager

    return contextmanager(start)


def _llama() -> AbstractContextManager[str]:
    return llama_server(slots=8, log=OUT / "llama-server.log")


LATENCY = ["--base-ms", "40", "--prefill-ms-per-token", "0.05",
           "--cached-prefill-ms-per-token", "0.005", "--decode-ms-per-token", "2",
           "--cache-block-tokens", "16", "--cache-min-prefix-tokens", "1024",
           "--cache-ttl-s", "300", "--seed", "3"]  # fmt: skip

SHAPES = {
    "lru": Shape(
        "lru",
        50,
        200,
        2000,
        128,
        _mock(*LATENCY, "--cache-capacity-tokens", str(10 * (2000 + 64))),
    ),
    "slots": Shape(
        "slots",
        12,
        32,
        1000,
        8,
        _mock(
            "--base-ms",
            "10",
            "--prefill-ms-per-token",
            "0.2",
            "--cached-prefill-ms-per-token",
            "0.01",
            "--decode-ms-per-token",
            "2",
            "--cache-block-tokens",
            "16",
            "--cache-min-prefix-tokens",
            "256",
            "--slots",
            "8",
            "--seed",
            "3",
        ),
        caps=(1, None),
        max_tokens=8,
        config={"min_cacheable_tokens": 256},
    ),
    "replicas": Shape(
        "replicas",
        16,
        50,
        2000,
        32,
        _mock(*LATENCY, "--cache-capacity-tokens", str(4 * (2000 + 64)), "--replicas", "4"),
    ),
    "llama": Shape(
        "llama",
        8,
        16,
        900,
        8,
        _llama,
        caps=(1, None),
        words=tuple(PLAIN),
        max_tokens=8,
        model="tiny",
        config={"min_cacheable_tokens": 256},
    ),
}


def make_files(shape: Shape, seed: int) -> tuple[Path, Path]:
    rng = random.Random(seed)
    OUT.mkdir(exist_ok=True)
    ctx_path = OUT / f"cache-{shape.name}-contexts.jsonl"
    jobs_path = OUT / f"cache-{shape.name}-jobs.jsonl"
    words = shape.words
    with ctx_path.open("wb") as fh:
        for c in range(shape.contexts):
            # A distinct head per context, so contexts share no prefix beyond the template.
            text = [f"{words[c % len(words)]} {c}."]
            text += [rng.choice(words) for _ in range(shape.context_words)]
            fh.write(orjson.dumps({"cache_id": f"doc-{c}", "system": " ".join(text)}) + b"\n")
    jobs = [(c, q) for c in range(shape.contexts) for q in range(shape.questions)]
    rng.shuffle(jobs)
    with jobs_path.open("wb") as fh:
        for c, q in jobs:
            line = {
                "id": f"c{c}-q{q}",
                "cache_id": f"doc-{c}",
                "query": f"{q} {rng.choice(words)} {rng.choice(words)} {rng.choice(words)}?",
                "params": {"max_tokens": shape.max_tokens},
            }
            fh.write(orjson.dumps(line) + b"\n")
    return ctx_path, jobs_path


def one_run(shape: Shape, label: str, flags: list[str], ctx: Path, jobs: Path, i: int) -> Run:
    cfg = OUT / f"cache-{shape.name}.toml"
    text = "".join(f"{k} = {v}\n" for k, v in shape.config.items())
    text += f'[prices."{shape.model}"]\n' + "".join(f"{k} = {v}\n" for k, v in PRICE.items())
    cfg.write_text(text)
    tag = f"cache-{shape.name}-{label.replace(' ', '_').replace('=', '')}-{i}"
    with shape.server() as url:
        _, s = runner_run(
            jobs, url, tag, "--model", shape.model, "--contexts", str(ctx), "-c", str(cfg),
            *flags, concurrency=shape.concurrency,
        )  # fmt: skip
    return Run(label, s, tag)


def best_possible(runs: list[Run]) -> float:
    """Every request but each group's first served with its group's largest cached prefix."""
    max_cached: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    prompt = 0
    for i, r in enumerate(runs):
        with (OUT / f"{r.tag}.latency.jsonl").open("rb") as fh:
            for line in fh:
                rec = orjson.loads(line)
                cid = rec["cache_id"]
                max_cached[cid] = max(max_cached[cid], rec["cached_tokens"] or 0)
                if i == 0:
                    count[cid] += 1
                    prompt += rec["prompt_tokens"] or 0
    return sum((count[c] - 1) * max_cached[c] for c in count) / prompt


def bench_shape(shape: Shape, runs: int, seed: int, only: set[str]) -> dict[str, Any]:
    ctx, jobs = make_files(shape, seed)
    plan: list[tuple[str, list[str]]] = [
        ("none", ["--cache", "none"]),
        ("warm", ["--cache", "warm"]),  # the default: limits learned, ceiling 8 groups
        ("fixed warm", ["--cache", "warm", "--no-cache-adapt"]),  # the old default
        ("warm g64", ["--cache", "warm", "--max-active-groups", "64"]),  # a higher ceiling
    ]
    for g in GROUPS_SWEEP:
        for c in shape.caps:
            label = f"fixed g={g}" + ("" if c is None else f" c={c}")
            flags = ["--no-cache-adapt", "--max-active-groups", str(g)]
            if c is not None:
                flags += ["--group-concurrency", str(c)]
            plan.append((label, flags))
    if only:
        plan = [p for p in plan if p[0] in only]
    done: list[Run] = []
    for i in range(runs):
        for label, flags in plan:
            r = one_run(shape, label, flags, ctx, jobs, i)
            done.append(r)
            print(f"  {shape.name} {i + 1}: {label:<16} cached {r.ratio:.4f} wall {r.wall:.2f} s")
    best = best_possible(done)
    swept = max((r.ratio for r in done if r.label.startswith("fixed")), default=0.0)
    rows = []
    for r in done:
        none = next(x for x in done if x.label == "none" and x.tag.endswith(r.tag[-2:]))
        t = r.summary["tokens"]
        billed_in = (t["prompt"] - t["cached"]) * PRICE["input"]
        billed_in += t["cached"] * PRICE["cached_input"]
        ctl = r.summary.get("cache_control") or {}
        rows.append(
            {
                "label": r.label,
                "cached_ratio": r.ratio,
                "of_best_swept": r.ratio / swept if swept else 0.0,
                "of_best_possible": r.ratio / best if best else 0.0,
                "input_saving": 1 - billed_in / (t["prompt"] * PRICE["input"]),
                "wall_s": r.wall,
                "wall_vs_none": r.wall / none.wall,
                "groups": ctl.get("active_groups"),
                "cap": ctl.get("group_concurrency"),
                "shrinks": (ctl.get("group_shrinks"), ctl.get("cap_shrinks")),
                "ok": r.summary["jobs"]["ok"],
            }
        )
    print(f"\n{shape.name}: best possible {best:.4f}, best swept {swept:.4f}")
    hdr = ("run", "cached", "of swept", "of possible", "in. saving", "wall s", "vs none", "learned")
    print(f"{hdr[0]:<18}" + "".join(f"{h:>12}" for h in hdr[1:]))
    for row in rows:
        learned = "" if row["groups"] is None else f"g{row['groups']} c{row['cap']}"
        print(
            f"{row['label']:<18}{row['cached_ratio']:>12.4f}{row['of_best_swept']:>12.4f}"
            f"{row['of_best_possible']:>12.4f}{row['input_saving']:>12.4f}{row['wall_s']:>12.2f}"
            f"{row['wall_vs_none']:>12.3f}{learned:>12}"
        )
    return {"best_possible": best, "best_swept": swept, "runs": rows}


DEMO_MOCK = [
    "--base-ms",
    "80",
    "--prefill-ms-per-token",
    "0.05",
    "--cached-prefill-ms-per-token",
    "0.005",
    "--decode-ms-per-token",
    "6",
    "--cache-min-prefix-tokens",
    "1024",
]  # fmt: skip  (configs/mock.toml's [mock])
DEMO_CONFIG = """max_attempts = 6
timeout = 30
[params]
max_tokens = 48
[cache]
strategy = "warm"
ttl_s = 300
max_active_groups = 8
min_cacheable_tokens = 1024
[prices."mock-1"]
input = 1.00
cached_input = 0.10
output = 4.00
"""


def bench_demo(
    seeds: list[int], runs: int, *, open_lengths: bool = False, copies: int = 1
) -> dict[str, Any]:
    """``make demo``'s shape: default warm, fixed warm and none alternately, per mock seed.

    ``open_lengths``: replies of unknown length (every job ``max_tokens = 512``, the mock
    stopping 90% of replies early at a random length). ``copies``: the demo's jobs that many
    times over (new ids, the same six contexts): the probe's cost is per run, not per job.
    """
    root = Path(__file__).resolve().parent.parent
    jobs, ctx = root / "examples" / "jobs.jsonl", root / "examples" / "contexts.jsonl"
    OUT.mkdir(exist_ok=True)
    if copies > 1:
        lines = [json.loads(line) for line in jobs.read_text().splitlines() if line.strip()]
        jobs = OUT / f"cache-demo-x{copies}.jsonl"
        with jobs.open("w") as fh:
            for k in range(copies):
                for job in lines:
                    fh.write(json.dumps({**job, "id": f"{job['id']}-{k}"}) + "\n")
    mock = [*DEMO_MOCK, "--stop-rate", "0.9"] if open_lengths else DEMO_MOCK
    config = (
        DEMO_CONFIG.replace("max_tokens = 48", "max_tokens = 512")
        if open_lengths
        else (DEMO_CONFIG)
    )
    cfg = OUT / "cache-demo.toml"
    cfg.write_text(config)
    plan = [("warm", []), ("fixed warm", ["--no-cache-adapt"]), ("none", ["--cache", "none"])]
    walls: dict[str, list[float]] = defaultdict(list)
    rows = []
    for i in range(runs):
        for seed in seeds:
            for label, flags in plan:
                tag = f"cache-demo-{label.replace(' ', '_')}-s{seed}-{i}"
                with mock_server(*mock, "--seed", str(seed)) as (url, _pid):
                    _, s = runner_run(
                        jobs, url, tag, "--contexts", str(ctx), "-c", str(cfg), *flags,
                        concurrency=64,
                    )  # fmt: skip
                t = s["tokens"]
                r = Run(label, s, tag)
                walls[label].append(r.wall)
                ctl = s.get("cache_control") or {}
                rows.append({"label": label, "seed": seed, "wall_s": r.wall, "cached": r.ratio,
                             "shape": ctl.get("cache_shape"), "ok": s["jobs"]["ok"],
                             "prompt": t["prompt"]})  # fmt: skip
                print(
                    f"  demo seed {seed} {i + 1}: {label:<11} wall {r.wall:6.2f} s "
                    f"cached {r.ratio:.4f} shape {ctl.get('cache_shape')}"
                )
    print("\ndemo: wall s per run (seeds in order), and the mean against none's")
    none = sum(walls["none"]) / len(walls["none"])
    for label, _ in plan:
        w = walls[label]
        mean = sum(w) / len(w)
        runs_s = " ".join(f"{x:.2f}" for x in w)
        print(f"{label:<11} mean {mean:6.2f} s  {mean / none:.3f}x none   [{runs_s}]")
    return {"runs": rows}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="lru,slots,replicas,llama")
    ap.add_argument("--runs", type=int, default=1, help="repeat every run this many times")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--seeds", default="1,2,3,4,5", help="demo: mock seeds, one round each")
    ap.add_argument(
        "--demo-copies", type=int, default=1, help="demo-open: the demo's jobs this many times over"
    )
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated run labels to run (e.g. none,warm,fixed warm); default: all",
    )
    args = ap.parse_args()
    results = {}
    for name in args.shapes.split(","):
        if name in ("demo", "demo-open"):  # demo-open: replies of unknown length
            seeds = [int(x) for x in args.seeds.split(",")]
            open_lengths = name == "demo-open"
            copies = args.demo_copies if open_lengths else 1
            results[name] = bench_demo(seeds, args.runs, open_lengths=open_lengths, copies=copies)
            continue
        if name == "llama" and not built():
            print("llama: skipped, llama-server is not built (make realserver)")
            continue
        only = {x.strip() for x in args.only.split(",") if x.strip()}
        results[name] = bench_shape(SHAPES[name], args.runs, args.seed, only)
    (OUT / "cache.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
