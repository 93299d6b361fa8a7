"""Cost of watching a run: JSON logs + /metrics server + textfile vs. a plain run, same workload.

Alternates a plain `runner run` and one with `--log-format json --metrics-port 0
--metrics-textfile F` over the same 20,000-job file against the same zero-latency simulated
provider, several pairs in one invocation, and compares the whole child process's CPU time
(user + system from os.wait4) per request. Every pair is printed, not only the best.

    .venv/bin/python benchmarks/bench_observe.py [--jobs 20000] [--pairs 4]

Target: the observed run costs at most 3% more CPU per request than the plain one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, make_jobs, mock_server, runner_run


def observer_share(jobs: Path, url: str, concurrency: int) -> float:
    """Fraction of one observed run's profiled CPU spent in the observer and what it calls
    (runner/observe.py, logs.py, metrics.py, prometheus_client, logging): a noise-free
    complement to the whole-process pairs, which a loaded machine makes noisy."""
    import asyncio
    import cProfile
    import pstats

    from runner.api import run
    from runner.config import RunConfig

    cfg = RunConfig(
        provider="openai", base_url=url, model="mock-1", concurrency=concurrency,
        resume=False, progress="off", cache="none", log_format="json", metrics_port=0,
        metrics_textfile=OUT / "observe-profile.prom", output=OUT / "observe-profile.results.jsonl",
        latency=OUT / "observe-profile.latency.jsonl", summary=OUT / "observe-profile.summary.json",
    )  # fmt: skip
    prof = cProfile.Profile()
    prof.enable()
    asyncio.run(run(jobs, cfg))
    prof.disable()
    stats = pstats.Stats(prof)
    total = 0.0
    ours = 0.0
    marks = ("runner/observe.py", "runner/logs.py", "runner/metrics.py", "prometheus_client",
             "logging/__init__.py")  # fmt: skip
    for (filename, _line, _name), row in stats.stats.items():  # type: ignore[attr-defined]
        tottime = row[2]
        total += tottime
        if any(m in filename for m in marks):
            ours += tottime
    print(f"profiled: observer and what it calls {ours:.4f} s of {total:.3f} s", flush=True)
    return ours / total if total else 0.0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument(
        "--profile", action="store_true", help="also profile one observed run in-process"
    )
    args = ap.parse_args()
    jobs = make_jobs(OUT / f"jobs-{args.jobs}.jsonl", args.jobs)
    prom = OUT / "observe.prom"
    observed = ["--log-format", "json", "--metrics-port", "0", "--metrics-textfile", str(prom)]
    rows = []
    with mock_server("--latency", "zero") as (url, _pid):
        runner_run(jobs, url, "observe-warmup", concurrency=args.concurrency)  # page cache
        for i in range(args.pairs):
            # Alternate which goes first so drift in machine load does not favour one side.
            order = [("plain", []), ("observed", observed)]
            if i % 2:
                order.reverse()
            got = {}
            for tag, extra in order:
                r, s = runner_run(jobs, url, f"observe-{tag}", *extra, concurrency=args.concurrency)
                assert s["jobs"]["ok"] == args.jobs, s["jobs"]
                got[tag] = r.cpu_s / args.jobs * 1e6  # CPU microseconds per request
                if tag == "observed":
                    events = [orjson.loads(x) for x in r.stderr.splitlines()]  # all must parse
                    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
                    fams = {f.name for f in text_string_to_metric_families(prom.read_text())}
                    assert "runner_requests" in fams
            ratio = got["observed"] / got["plain"]
            rows.append((got["plain"], got["observed"], ratio))
            print(
                f"pair {i + 1}: plain {got['plain']:.1f} us/req, observed {got['observed']:.1f} "
                f"us/req, ratio {ratio:.4f}",
                flush=True,
            )
        share = observer_share(jobs, url, args.concurrency) if args.profile else None
    ratios = [r for _, _, r in rows]
    print(
        orjson.dumps(
            {
                "jobs": args.jobs,
                "pairs": [{"plain_us": p, "observed_us": o, "ratio": r} for p, o, r in rows],
                "median_ratio": statistics.median(ratios),
                "target": "<= 1.03",
                "observer_share_of_cpu_profiled": share,
            },
            option=orjson.OPT_INDENT_2,
        ).decode()
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
