"""Memory: peak RSS of `runner run` on a 1,000,000-job file against a 100,000-job file.

Both run against the zero-latency simulated provider; peak RSS comes from the kernel's
accounting of the child process (wait4), so it covers the whole run.

    .venv/bin/python benchmarks/bench_memory.py [--small 100000] [--large 1000000]

Targets: peak RSS on the large file < 200 MB and within 1.25x of the small file's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, make_jobs, mock_server, runner_run


def measure(n: int, url: str) -> tuple[float, float, int]:
    jobs = make_jobs(OUT / f"jobs-{n}.jsonl", n, max_tokens=4)
    tag = f"mem-{n}"
    r, s = runner_run(jobs, url, tag, concurrency=128, timeout=1800)
    for suffix in ("results", "latency"):
        (OUT / f"{tag}.{suffix}.jsonl").unlink()  # gigabytes we do not need to keep
    return r.max_rss_mb, r.wall_s, int(s["jobs"]["ok"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=100_000)
    ap.add_argument("--large", type=int, default=1_000_000)
    args = ap.parse_args()
    with mock_server("--latency", "zero") as (url, _pid):
        small = measure(args.small, url)
        large = measure(args.large, url)
    print(f"{'jobs':>10}{'peak RSS MB':>14}{'wall s':>10}{'ok':>10}")
    for n, (rss, wall, ok) in ((args.small, small), (args.large, large)):
        print(f"{n:>10}{rss:>14.1f}{wall:>10.1f}{ok:>10}")
    ratio = large[0] / small[0]
    print(f"large/small peak RSS ratio {ratio:.3f} (target <= 1.25; large < 200 MB)")
    (OUT / "memory.json").write_bytes(
        orjson.dumps(
            {"small": [args.small, *small], "large": [args.large, *large], "ratio": ratio},
            option=orjson.OPT_INDENT_2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
