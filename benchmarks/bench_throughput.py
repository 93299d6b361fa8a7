"""Throughput as a user pays for it: whole `runner run` processes against a bare aiohttp loop.

Each pair runs ``runner run --cache none`` (results, latency and summary written, everything on)
and ``benchmarks/clients/minimal.py`` (aiohttp + uvloop + orjson: parse each response, write one
line per job, nothing else) on the same jobs file against the same simulated provider, a separate
process on loopback. The two alternate (which goes first flips every pair) so that drift on a
noisy machine hits both. Each child is timed as a whole process: wall time from spawn to exit,
CPU as user + system from ``os.wait4`` rusage, start-up included.

Per pair: req/s ratio runner/bare (higher is better, target >= 0.9x) and CPU-per-request ratio
runner/bare (lower is better, target <= 1.15x at zero latency). The medians of at least five
pairs are the figures; every pair is printed.

    .venv/bin/python benchmarks/bench_throughput.py [--jobs 20000] [--pairs 5] [--case zero-64]

``--baseline-tree DIR`` puts ``runner run`` from another copy of the source (say a worktree of an
earlier commit) in the bare client's place: the same pairs, alternating, then compare this
checkout with that one (the targets are for the bare client and are not judged then).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, ROOT, ChildRun, make_jobs, mock_server, precompile, run_child

ZERO = ("--latency", "zero")
FIXED_50MS = (
    "--base-ms", "50", "--prefill-ms-per-token", "0", "--decode-ms-per-token", "0",
    "--jitter", "0",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Case:
    name: str
    server: tuple[str, ...]
    concurrency: int
    cpu_target: float | None  # CPU per request runner/bare, at most
    rps_target: float  # req/s runner/bare, at least


CASES = (
    Case("zero-64", ZERO, 64, 1.15, 0.9),
    Case("zero-256", ZERO, 256, 1.15, 0.9),
    Case("zero-1024", ZERO, 1024, 1.15, 0.9),
    Case("50ms-256", FIXED_50MS, 256, None, 0.9),
)


def run_bare(jobs: Path, url: str, conc: int) -> ChildRun:
    script = ROOT / "benchmarks/clients/minimal.py"
    r = run_child([PY, str(script), str(jobs), url, str(OUT / "bare.out.jsonl"), str(conc)])
    if r.returncode != 0:
        raise SystemExit(f"bare client failed: {r.stderr[-2000:]}")
    data = orjson.loads(r.stdout.strip().splitlines()[-1])
    if data["ok"] != data["requests"]:
        raise SystemExit(f"bare client: not every request succeeded: {data}")
    return r


def run_runner(jobs: Path, url: str, conc: int, n: int, tree: Path = ROOT) -> ChildRun:
    tag = OUT / ("runner" if tree == ROOT else "baseline")
    env = None if tree == ROOT else {**os.environ, "PYTHONPATH": str(tree)}
    r = run_child(
        [
            PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
            "--model", "mock-1", "--concurrency", str(conc), "--no-resume", "--cache", "none",
            "--progress", "off", "-o", f"{tag}.results.jsonl", "--latency",
            f"{tag}.latency.jsonl", "--summary", f"{tag}.summary.json",
        ],
        cwd=tree,
        env=env,
    )  # fmt: skip
    if r.returncode != 0:
        raise SystemExit(f"runner run failed ({r.returncode}): {r.stderr[-3000:]}")
    jobs_ok = orjson.loads(Path(f"{tag}.summary.json").read_bytes())["jobs"]
    if jobs_ok["ok"] != n:
        raise SystemExit(f"runner run: {jobs_ok} (expected {n} ok)")
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--case", action="append", choices=[c.name for c in CASES])
    ap.add_argument("--baseline-tree", type=Path, help="runner from this source tree as baseline")
    args = ap.parse_args()
    if args.pairs < 1:
        ap.error("--pairs must be >= 1")
    tree = args.baseline_tree.resolve() if args.baseline_tree else None
    if tree is not None and not (tree / "runner" / "__init__.py").is_file():
        ap.error(f"--baseline-tree {tree}: no runner/ package there")
    base = "bare" if tree is None else "base"

    def baseline(url: str, conc: int) -> ChildRun:
        if tree is None:
            return run_bare(jobs, url, conc)
        return run_runner(jobs, url, conc, n, tree)

    precompile()
    jobs = make_jobs(OUT / f"jobs-{args.jobs}.jsonl", args.jobs)
    n = args.jobs
    report: dict[str, object] = {"jobs": n, "pairs": args.pairs, "cases": {}}
    if tree is not None:
        report["baseline_tree"] = str(tree)
    met = True
    for case in CASES:
        if args.case and case.name not in args.case:
            continue
        rows = []
        with mock_server(*case.server) as (url, _pid):
            print(f"\n{case.name}: {n} jobs, concurrency {case.concurrency}", flush=True)
            print(f"{'pair':>4} {base + ' req/s':>10} {'runner req/s':>12} {'req/s ratio':>11} "
                  f"{base + ' us/req':>11} {'runner us/req':>13} {'CPU ratio':>9}")  # fmt: skip
            for i in range(args.pairs):
                if i % 2 == 0:
                    bare = baseline(url, case.concurrency)
                    mine = run_runner(jobs, url, case.concurrency, n)
                else:
                    mine = run_runner(jobs, url, case.concurrency, n)
                    bare = baseline(url, case.concurrency)
                row = {
                    "bare_rps": n / bare.wall_s,
                    "runner_rps": n / mine.wall_s,
                    "rps_ratio": bare.wall_s / mine.wall_s,
                    "bare_cpu_us": bare.cpu_s / n * 1e6,
                    "runner_cpu_us": mine.cpu_s / n * 1e6,
                    "cpu_ratio": mine.cpu_s / bare.cpu_s,
                    "bare_wall_s": bare.wall_s,
                    "runner_wall_s": mine.wall_s,
                    "bare_cpu_s": bare.cpu_s,
                    "runner_cpu_s": mine.cpu_s,
                }
                rows.append(row)
                print(
                    f"{i + 1:>4} {row['bare_rps']:>10,.0f} {row['runner_rps']:>12,.0f} "
                    f"{row['rps_ratio']:>10.2f}x {row['bare_cpu_us']:>11.0f} "
                    f"{row['runner_cpu_us']:>13.0f} {row['cpu_ratio']:>8.2f}x",
                    flush=True,
                )
        rps = statistics.median(r["rps_ratio"] for r in rows)
        cpu = statistics.median(r["cpu_ratio"] for r in rows)
        ok_rps = rps >= case.rps_target
        ok_cpu = case.cpu_target is None or cpu <= case.cpu_target
        met = met and ok_rps and ok_cpu
        cpu_goal = f" (target <= {case.cpu_target}x)" if case.cpu_target else ""
        if tree is not None:
            print(f"median req/s runner/base {rps:.2f}x; median CPU/request runner/base "
                  f"{cpu:.2f}x")  # fmt: skip
        else:
            print(f"median req/s runner/bare {rps:.2f}x (target >= {case.rps_target}x) "
                  f"{'met' if ok_rps else 'MISSED'}; median CPU/request runner/bare {cpu:.2f}x"
                  f"{cpu_goal} {'met' if ok_cpu else 'MISSED'}")  # fmt: skip
        report["cases"][case.name] = {  # type: ignore[index]
            "concurrency": case.concurrency,
            "median_rps_ratio": rps,
            "median_cpu_ratio": cpu,
            "pairs": rows,
        }
    name = "throughput.json" if tree is None else "throughput-vs-tree.json"
    (OUT / name).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    verdict = (
        "compared with the baseline tree"
        if tree
        else ("all targets met" if met else "some targets missed")
    )
    print(f"\n{verdict}; figures in {OUT / name}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
