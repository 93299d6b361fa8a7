"""Instructions per request, which machine load does not move: callgrind of whole runs.

A ``runner run --cache none`` of N jobs and one of M jobs (M > N) against the same zero-latency
simulated provider (``runner mock``, a separate process not under valgrind) are counted by
callgrind (``Ir``, the whole process); the difference divided by M - N is the cost of one
request, start-up and teardown cancelled out. ``--tree`` counts another copy of the source
(e.g. ``git archive main | tar -x -C /tmp/base``) in the same invocation, alternating, so that a
change's before and after come from one run of this script; every run is printed. A dummy
``OPENAI_API_KEY`` is set, as a user's real key is, so the key guard's scan of every response
is counted (``--no-key``: none).

``--workers 1,2`` counts ``runner run --workers N`` for each N in turn: the whole process tree
(the parent, each worker, the merge), every process's callgrind total added up. A forked worker's
count starts from its parent's at the fork, so each one repeats the parent's start-up; that part
does not depend on the number of jobs and cancels out in the difference, leaving what N workers
spend per request in all (each worker reads every line of the file for its id, and the merge
copies each result once more).

    .venv/bin/python benchmarks/bench_request_instructions.py [--small 1000] [--large 3000]
        [--repeat 1] [--tree /tmp/base] [--no-key] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, ROOT, make_jobs, mock_server, precompile

BENCH_KEY = "sk-bench-0123456789abcdef"  # never a real key: the mock checks none


def instructions(
    tree: Path, jobs: Path, url: str, concurrency: int, *, key: bool, workers: int = 1
) -> int:
    """Callgrind's ``Ir`` total of one ``runner run`` of ``jobs`` from the source in ``tree``,
    added up over its processes (``--workers``: see the module's note)."""
    dumps = OUT / "request-instr"
    shutil.rmtree(dumps, ignore_errors=True)
    dumps.mkdir(parents=True)
    tag = dumps / "run"
    cmd = [
        "valgrind", "--tool=callgrind", f"--callgrind-out-file={dumps}/out.%p",
        PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
        "--model", "mock-1", "--concurrency", str(concurrency), "--no-resume", "--cache", "none",
        "--progress", "off", "-o", f"{tag}.results.jsonl", "--latency", f"{tag}.latency.jsonl",
        "--summary", f"{tag}.summary.json", "--workers", str(workers),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("OPENAI_API_KEY", None)
    if key:
        env["OPENAI_API_KEY"] = BENCH_KEY
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, timeout=1800)
    if r.returncode != 0:
        raise SystemExit(f"runner run failed ({r.returncode}): {r.stderr.decode()[-3000:]}")
    totals = []
    for path in dumps.glob("out.*"):
        own = 0
        for line in path.read_text().splitlines():
            if line.startswith(("summary:", "totals:")):
                own = max(own, int(line.split()[1]))
        totals.append(own)
    if not totals or not all(totals) or len(totals) != workers + (workers > 1):
        raise SystemExit(f"callgrind wrote {len(totals)} totals for {workers} worker(s)")
    return sum(totals)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", type=int, default=1000)
    ap.add_argument("--large", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--tree", type=Path, help="another source tree to count alternately")
    ap.add_argument("--no-key", action="store_true", help="run without an API key set")
    ap.add_argument("--workers", default="1", help="comma-separated --workers counts (1,2)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    if not 0 < args.small < args.large:
        ap.error("need 0 < --small < --large")
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind")
    precompile()
    trees = {"checkout": ROOT}
    if args.tree is not None:
        import compileall

        compileall.compile_dir(args.tree / "runner", quiet=1)
        trees["tree"] = args.tree.resolve()
    small = make_jobs(OUT / f"jobs-{args.small}.jsonl", args.small)
    large = make_jobs(OUT / f"jobs-{args.large}.jsonl", args.large)
    runs = [
        (name if len(counts) == 1 else f"{name} --workers {w}", tree, w)
        for name, tree in trees.items()
        for w in counts
    ]
    per_request: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    with mock_server("--latency", "zero") as (url, _pid):
        for i in range(args.repeat):
            order = list(runs)
            if i % 2:
                order.reverse()
            for name, tree, w in order:
                key = not args.no_key
                a = instructions(tree, small, url, args.concurrency, key=key, workers=w)
                b = instructions(tree, large, url, args.concurrency, key=key, workers=w)
                per = (b - a) / (args.large - args.small)
                per_request[name].append(per)
                print(f"run {i + 1} {name}: {args.small} jobs {a:,} Ir, {args.large} jobs {b:,} "
                      f"Ir: {per / 1000:,.1f}K instructions per request", flush=True)  # fmt: skip
    for name, vals in per_request.items():
        print(f"{name}: " + " / ".join(f"{v / 1000:,.1f}K" for v in vals) + " per request")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
