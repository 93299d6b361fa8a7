"""Cost of keeping ``--order input`` through ``--retry-failed``: the end-of-run sort of R.

One run over N jobs against a zero-latency simulated provider that fails a share of requests
(``--fault-http-503``, one attempt each) leaves a results file with failures spread over it.
Each round then copies those outputs three times and runs ``--retry-failed`` on each copy
against a clean provider, in rotating order: ``--order input`` (ranks every key, rewrites R in
input order), the same with the sort switched off in the child (``InputOrder.sort`` a no-op:
what ``--order input`` cost before, the baseline for the sort), and ``--order completion``
(the retried lines appended; for reference). All send the same requests. Every round is printed.

    .venv/bin/python benchmarks/bench_order_resume.py [--jobs 100000] [--fail 0.05] [--rounds 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, make_jobs, mock_server, precompile, run_child


def outputs(tag: str) -> list[Path]:
    r = OUT / f"{tag}.results.jsonl"
    return [r, r.with_name(r.name + ".meta.json"), OUT / f"{tag}.latency.jsonl"]


NO_SORT = (
    "import sys, runner.sinks as s; s.InputOrder.sort = lambda self: None; "
    "from runner.cli import main; sys.exit(main(sys.argv[1:]))"
)


def run(jobs: Path, url: str, tag: str, *extra: str, sort: bool = True) -> tuple[float, float]:
    res, _meta, lat = outputs(tag)
    cmd = [PY, "-m", "runner"] if sort else [PY, "-c", NO_SORT]
    r = run_child(
        [
            *cmd, "run", str(jobs), "--provider", "openai", "--base-url", url,
            "--model", "mock-1", "--concurrency", "64", "--progress", "off", "-o", str(res),
            "--latency", str(lat), "--summary", str(OUT / f"{tag}.summary.json"), *extra,
        ]
    )  # fmt: skip
    if r.returncode not in (0, 1):
        raise SystemExit(f"runner run ({tag}) failed ({r.returncode}): {r.stderr[-3000:]}")
    return r.wall_s, r.cpu_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--fail", type=float, default=0.05)
    ap.add_argument("--rounds", dest="pairs", type=int, default=3)
    ns = ap.parse_args()
    precompile()
    jobs = make_jobs(OUT / f"order-resume-{ns.jobs}.jsonl", ns.jobs)
    with mock_server("--latency", "zero", "--fault-http-503", str(ns.fail), "--seed", "1") as (
        url,
        _,
    ):
        run(jobs, url, "order-base", "--no-resume", "--order", "input", "--max-attempts", "1")
    base = outputs("order-base")
    failed = sum(1 for x in base[0].open("rb") if orjson.loads(x)["error"])
    size = base[0].stat().st_size
    print(f"{ns.jobs} jobs, {failed} failed, results {size / 1e6:.1f} MB", flush=True)
    variants = [("input", ("--order", "input"), True), ("nosort", ("--order", "input"), False)]
    variants.append(("completion", ("--order", "completion"), True))
    extra: list[float] = []
    with mock_server("--latency", "zero") as (url, _):
        for pair in range(ns.pairs):
            got = {}
            for name, flags, sort in variants[pair % 3 :] + variants[: pair % 3]:
                tag = f"order-{name}"
                for src, dst in zip(base, outputs(tag), strict=True):
                    shutil.copyfile(src, dst)
                got[name] = run(jobs, url, tag, *flags, "--retry-failed", sort=sort)
            extra.append(got["input"][1] - got["nosort"][1])
            print(
                f"round {pair}: "
                + "; ".join(f"{k} {w:.2f} s wall {c:.2f} s CPU" for k, (w, c) in got.items())
                + f"; sort +{extra[-1]:.2f} s CPU ({extra[-1] / ns.jobs * 1e6:.1f} us/line)",
                flush=True,
            )
    ids = [orjson.loads(x)["custom_id"] for x in outputs("order-input")[0].open("rb")]
    assert ids == [f"q-{i}" for i in range(ns.jobs)], "not in input order"
    print(f"the sort's CPU (input - nosort): median {statistics.median(extra):+.2f} s")


if __name__ == "__main__":
    main()
