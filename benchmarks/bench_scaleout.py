"""Scaling out: one shared limit over processes and hosts, Redis faults, shards, --workers.

    python benchmarks/bench_scaleout.py rate        # 4 hosts, mock at 1,200 RPM (and TPM case)
    python benchmarks/bench_scaleout.py fault       # Redis killed and restarted mid-run
    python benchmarks/bench_scaleout.py shards      # 50 x 200 split 4 ways vs one run; kill -9
    python benchmarks/bench_scaleout.py workers     # --workers 2 vs --workers 1, CPU split
    python benchmarks/bench_scaleout.py all

Hosts are network namespaces when this machine allows them (tests/scaleout.py), else loopback.
Every figure is printed as measured, one line per run; results also go to
bench-out/scaleout-*.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _sched
from _common import OUT, PY, ROOT, cpu_seconds, make_jobs, mock_server, run_child
from scaleout import hosts, start_mock, start_redis

SCALE = OUT / "scaleout"


def _write(path: Path, prefix: str, n: int, max_tokens: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        for i in range(n):
            job: dict[str, Any] = {"id": f"{prefix}-{i}", "query": f"Question {i} of {prefix}?"}
            if max_tokens:
                job["params"] = {"max_tokens": max_tokens}
            fh.write(orjson.dumps(job) + b"\n")
    return path


def _records(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in path.read_bytes().splitlines()]


def _sent(rec: dict[str, Any]) -> float:
    return float(rec["started_at"]) + float(rec["limiter_ms"]) / 1000.0


def _stats(prefix: list[str], url: str) -> dict[str, Any]:
    base = url.rsplit("/v1", 1)[0]
    code = (
        "import urllib.request,sys;"
        f"sys.stdout.write(urllib.request.urlopen('{base}/stats').read().decode())"
    )
    out = subprocess.run([*prefix, PY, "-c", code], capture_output=True, timeout=20, check=True)
    stats: dict[str, Any] = json.loads(out.stdout)
    return stats


# -- the shared limit ------------------------------------------------------------------------


def fleet(
    kind: str,
    *,
    n: int = 4,
    jobs_each: int,
    policy: str = "fail_closed",
    fault_at: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """n runner processes, each told 10x the mock's limit, sharing it through one Redis."""
    d = SCALE / f"{kind}-{policy}{'-fault' if fault_at else ''}"
    d.mkdir(parents=True, exist_ok=True)
    if kind == "rpm":
        mock_flags = ["--rpm", "1200"]
        told = ["--rpm", "12000"]
        max_tokens = None
    else:
        mock_flags = ["--tpm", "60000"]
        told = ["--tpm", "600000"]
        max_tokens = 50
    mock_flags += ["--base-ms", "40", "--decode-ms-per-token", "1"]
    with hosts(n) as h:
        redis = start_redis(h.server, h.server_ip)
        mock = start_mock(h.server, h.server_ip, *mock_flags)
        logs = []
        try:
            procs = []
            for k, prefix in enumerate(h.clients):
                jobs = _write(d / f"p{k}.jsonl", f"p{k}", jobs_each, max_tokens)
                cmd = [*prefix, PY, "-m", "runner", "run", str(jobs), "--provider", "openai"]
                cmd += ["--base-url", mock.url, *told, "--redis-url", redis.url]
                cmd += ["--redis-policy", policy, "--progress", "off", "--no-resume"]
                log = open(d / f"p{k}.log", "wb")
                logs.append(log)
                procs.append(subprocess.Popen(cmd, cwd=ROOT, stderr=log, stdout=log))
            t_start = time.time()
            at10: dict[str, Any] = {}

            def snapshot() -> None:
                time.sleep(10.0)
                at10.update(_stats(h.server, mock.url))

            th = threading.Thread(target=snapshot)
            th.start()
            if fault_at is not None:
                time.sleep(fault_at[0])
                os.kill(redis.proc.pid, signal.SIGKILL)
                redis.proc.wait()
                print(f"  redis killed at {time.time() - t_start:.1f}s", flush=True)
                time.sleep(fault_at[1] - fault_at[0])
                redis = start_redis(h.server, h.server_ip, port=redis.port)
                print(f"  redis restarted at {time.time() - t_start:.1f}s", flush=True)
            codes = [p.wait(900) for p in procs]
            th.join()
            end = _stats(h.server, mock.url)
        finally:
            mock.stop()
            redis.stop()
            for log in logs:
                log.close()
        namespaces = h.namespaces
    recs = [_records(d / f"p{k}.latency.jsonl") for k in range(n)]
    ids = [orjson.loads(x)["custom_id"] for k in range(n)
           for x in (d / f"p{k}.results.jsonl").read_bytes().splitlines()]  # fmt: skip
    sums = [orjson.loads((d / f"p{k}.summary.json").read_bytes()) for k in range(n)]
    first = min(_sent(r) for rs in recs for r in rs)
    t0 = first + 10.0
    t1 = min(max(_sent(r) for r in rs) for rs in recs)  # all n still sending
    inside = [r for rs in recs for r in rs if t0 <= _sent(r) <= t1]
    minutes = (t1 - t0) / 60.0
    tokens = sum((r.get("prompt_tokens") or 0) + (r.get("completion_tokens") or 0) for r in inside)
    after = end["requests"] - at10.get("requests", 0)
    out = {
        "kind": kind,
        "policy": policy,
        "namespaces": namespaces,
        "processes": n,
        "exit_codes": codes,
        "window_s": round(t1 - t0, 1),
        "aggregate_rpm": round(len(inside) / minutes, 1) if minutes > 0 else None,
        "aggregate_tpm": round(tokens / minutes, 1) if minutes > 0 else None,
        "requests_after_10s": after,
        "429_after_10s": end["rate_limited"] - at10.get("rate_limited", 0),
        "429_total": end["rate_limited"],
        "jobs": n * jobs_each,
        "results": len(ids),
        "lost": n * jobs_each - len(set(ids)),
        "duplicated": len(ids) - len(set(ids)),
        "shared_limit": [s.get("shared_limit") for s in sums],
        "log_lines": [
            line
            for k in range(n)
            for line in (d / f"p{k}.log").read_text().splitlines()
            if "shared limit store" in line
        ],
    }
    return out


def _report_fleet(r: dict[str, Any], target: float, unit: str) -> None:
    got = r["aggregate_rpm" if unit == "rpm" else "aggregate_tpm"]
    rate429 = r["429_after_10s"] / r["requests_after_10s"] if r["requests_after_10s"] else 0.0
    print(
        f"{r['kind']}: {r['processes']} processes"
        f" ({'namespaces' if r['namespaces'] else 'loopback'})"
        f", window {r['window_s']} s: aggregate {got} {unit} = {got / target:.3f} of {target:.0f};"
        f" 429s after 10 s {r['429_after_10s']}/{r['requests_after_10s']} = {rate429:.2%}"
        f" (total {r['429_total']}); lost {r['lost']}, duplicated {r['duplicated']};"
        f" exit codes {r['exit_codes']}",
        flush=True,
    )


def bench_rate(args: argparse.Namespace) -> None:
    r = fleet("rpm", jobs_each=args.rpm_jobs)
    _report_fleet(r, 1200.0, "rpm")
    t = fleet("tpm", jobs_each=args.tpm_jobs)
    _report_fleet(t, 60000.0, "tpm")
    (OUT / "scaleout-rate.json").write_text(json.dumps({"rpm": r, "tpm": t}, indent=2))


def bench_fault(args: argparse.Namespace) -> None:
    res = {}
    for policy in ("fail_closed", "fail_open"):
        r = fleet("rpm", jobs_each=args.fault_jobs, policy=policy, fault_at=(8.0, 16.0))
        res[policy] = r
        outages = [s["outages"] for s in r["shared_limit"] if s]
        degraded = [s["degraded_s"] for s in r["shared_limit"] if s]
        print(
            f"fault ({policy}): exit codes {r['exit_codes']}, results {r['results']}/{r['jobs']},"
            f" lost {r['lost']}, duplicated {r['duplicated']}; outages per process {outages},"
            f" degraded_s {degraded}; 429s {r['429_total']}; log: {len(r['log_lines'])} lines,"
            f" e.g. {r['log_lines'][:2]}",
            flush=True,
        )
    (OUT / "scaleout-fault.json").write_text(json.dumps(res, indent=2))


# -- shards ------------------------------------------------------------------------------


def _shard_input(d: Path, contexts: int = 50, questions: int = 200) -> tuple[Path, Path]:
    d.mkdir(parents=True, exist_ok=True)
    ctx, jobs = d / "contexts.jsonl", d / "jobs.jsonl"
    with open(ctx, "wb") as fh:
        for c in range(contexts):
            text = f"Document {c}. " + " ".join(f"clause-{c}-{i}" for i in range(1400))
            fh.write(orjson.dumps({"cache_id": f"doc-{c}", "system": text}) + b"\n")
    with open(jobs, "wb") as fh:
        for q in range(questions):
            for c in range(contexts):
                job = {"id": f"d{c}-q{q}", "cache_id": f"doc-{c}", "query": f"Question {q}?"}
                fh.write(orjson.dumps({**job, "params": {"max_tokens": 8}}) + b"\n")
    return jobs, ctx


def _ids(path: Path) -> list[str]:
    return [orjson.loads(x)["custom_id"] for x in path.read_bytes().splitlines()]


def bench_shards(args: argparse.Namespace) -> None:
    d = SCALE / "shards"
    for p in d.glob("*"):
        p.unlink()
    jobs, ctx = _shard_input(d)
    flags = ["--latency", "zero"]
    res: dict[str, Any] = {}
    with mock_server(*flags) as (url, _pid):
        base = [PY, "-m", "runner", "run", str(jobs), "--contexts", str(ctx), "--provider"]
        base += ["openai", "--base-url", url, "--progress", "off"]

        def reset() -> None:
            req = urllib.request.Request(url.rsplit("/v1", 1)[0] + "/stats/reset?cache=1", b"")
            urllib.request.urlopen(req).read()

        reset()
        single = run_child([*base, "-o", str(d / "single.results.jsonl"), "--latency",
                            str(d / "single.latency.jsonl"), "--summary",
                            str(d / "single.summary.json")])  # fmt: skip
        s1 = orjson.loads((d / "single.summary.json").read_bytes())
        reset()
        procs = [subprocess.Popen([*base, "--shard", f"{k}/4"], cwd=ROOT,
                                  stderr=subprocess.DEVNULL) for k in range(4)]  # fmt: skip
        for child in procs:
            child.wait()
        parts = [str(d / f"jobs.shard-{k}-of-4.results.jsonl") for k in range(4)]
        m = run_child([PY, "-m", "runner", "merge", str(d / "merged.results.jsonl"), *parts])
        s4 = orjson.loads((d / "merged.summary.json").read_bytes())
        a, b = _ids(d / "single.results.jsonl"), _ids(d / "merged.results.jsonl")
        res["split"] = {
            "single_hit": s1["cache_hit_ratio"],
            "sharded_hit": s4["cache_hit_ratio"],
            "single_wall_s": round(single.wall_s, 2),
            "merge_rc": m.returncode,
            "same_ids": set(a) == set(b),
            "ids": len(b),
            "unique": len(set(b)),
        }
        print(
            f"shards: single hit {s1['cache_hit_ratio']:.4f}, 4 shards merged hit "
            f"{s4['cache_hit_ratio']:.4f} (diff "
            f"{abs(s1['cache_hit_ratio'] - s4['cache_hit_ratio']) * 100:.2f} points);"
            f" ids {len(b)} ({len(set(b))} unique), same set as the single run: {set(a) == set(b)}",
            flush=True,
        )
        # kill -9 one shard mid-run, then re-run that shard alone and merge
        for p in d.glob("jobs.shard-*"):
            p.unlink()
        reset()
        procs = [subprocess.Popen([*base, "--shard", f"{k}/4"], cwd=ROOT,
                                  stderr=subprocess.DEVNULL) for k in range(4)]  # fmt: skip
        victim = procs[2]
        res_file = d / "jobs.shard-2-of-4.results.jsonl"
        deadline = time.time() + 60
        # about 400 result lines: a shard well into its work
        while time.time() < deadline and (
            not res_file.exists() or res_file.stat().st_size < 300_000
        ):
            time.sleep(0.02)
        os.kill(victim.pid, signal.SIGKILL)
        for child in procs:
            child.wait()
        done_before = len(res_file.read_bytes().splitlines())
        first = run_child([PY, "-m", "runner", "merge", str(d / "m2.results.jsonl"), *parts])
        rerun = run_child([*base, "--shard", "2/4"])
        second = run_child([PY, "-m", "runner", "merge", str(d / "m2.results.jsonl"), *parts])
        c = _ids(d / "m2.results.jsonl")
        s2 = orjson.loads((d / "jobs.shard-2-of-4.summary.json").read_bytes())
        res["kill9"] = {
            "killed_with_results": done_before,
            "merge_before_rerun_rc": first.returncode,
            "merge_before_rerun_msg": first.stderr.strip().splitlines()[-1:],
            "rerun_rc": rerun.returncode,
            "rerun_skipped_resumed": s2["jobs"]["skipped_resumed"],
            "merge_after_rc": second.returncode,
            "ids": len(c),
            "unique": len(set(c)),
            "same_ids": set(c) == set(a),
        }
        print(f"shards kill -9: {res['kill9']}", flush=True)
    (OUT / "scaleout-shards.json").write_text(json.dumps(res, indent=2))


# -- workers -----------------------------------------------------------------------------


def _busy(row: dict[str, Any]) -> float:
    """Cores the run and the mock kept busy on average: with two free cores and a perfect
    split, --workers 2 would show 2.0; what is missing is time a core sat idle."""
    return float(row["runner_cpu_s"] + row["mock_cpu_s"]) / float(row["wall_s"])


_SPIN = """
import time
t = time.process_time()
x = 0
for i in range(4_000_000):
    x += i * i
print(time.process_time() - t)
"""


def _pair_probe() -> tuple[float, float]:
    """CPU seconds of a fixed pure-Python loop alone, and the slower of two copies run at once.

    Not the runner: the machine. On this VM two busy processes at once sometimes each run up to
    a quarter slower than one alone (the host's sharing of the two virtual cores), which is
    what ``--workers 2`` asks of it; the probe beside each round says which state it was in.
    """
    alone = float(subprocess.run([PY, "-c", _SPIN], capture_output=True, text=True).stdout)
    two = [subprocess.Popen([PY, "-c", _SPIN], stdout=subprocess.PIPE, text=True) for _ in "ab"]
    return alone, max(float(p.communicate()[0]) for p in two)


def _run_queue_s(pid: int) -> float:
    """Seconds ``pid`` has spent runnable but waiting for a core (``/proc/PID/schedstat``)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def bench_workers(args: argparse.Namespace) -> None:
    """``--workers 2`` against ``--workers 1``, alternately, with where the CPU went.

    Per run: wall time and requests/s of the whole ``runner run`` process (tree), its CPU
    (``wait4`` of the command: the parent and every worker), the mock's CPU (from /proc), and
    for ``--workers 2`` the split the merged summary's ``workers`` section records: the parent
    (start-up, config, supervision), each worker, the merge. ``ceiling`` is the ratio these CPU
    figures allow when the two cores are this benchmark's alone: one process takes at least its
    own CPU time (``max(runner, (runner + mock) / 2)``); with two workers the parent starts up
    alone, the workers and the mock share the two cores, and the merge runs alone after them:
    ``parent + (workers + mock) / 2 + merge``. ``cores busy`` is the CPU of the run and the
    mock over the wall time: how much of the two cores each run kept working. ``mock waited``
    is the time the mock was runnable but had no core (three busy processes on two cores);
    ``pair probe`` is the machine's own slow-down for two busy processes (:func:`_pair_probe`).
    """
    jobs = make_jobs(SCALE / "workers" / "jobs.jsonl", args.worker_jobs)
    rows = []
    with mock_server("--latency", "zero") as (url, mock_pid):
        variants: list[tuple[int, str | None]] = [(1, None), (2, None)]
        if args.nice0:
            variants += [(1, "0"), (2, "0")]
        for rnd in range(args.rounds):
            for w, nice in variants:
                out = SCALE / "workers" / f"w{w}.results.jsonl"
                for p in out.parent.glob(f"w{w}.*"):
                    p.unlink()
                load = os.getloadavg()[0]
                c0 = cpu_seconds(mock_pid)
                q0 = _run_queue_s(mock_pid)
                summary_path = out.with_name(f"w{w}.summary.json")
                r = run_child([PY, "-m", "runner", "run", str(jobs), "--provider", "openai",
                               "--base-url", url, "--progress", "off", "--no-resume",
                               "--concurrency", "128", "--workers", str(w), "-o", str(out),
                               "--summary", str(summary_path),
                               "--latency", str(out.with_name(f"w{w}.latency.jsonl")),
                               *(["--nice", nice] if nice is not None else [])])  # fmt: skip
                mock_cpu = cpu_seconds(mock_pid) - c0
                mock_wait = _run_queue_s(mock_pid) - q0
                if r.returncode != 0:
                    raise SystemExit(r.stderr[-2000:])
                summary = orjson.loads(summary_path.read_bytes())
                row: dict[str, Any] = {
                    "round": rnd,
                    "workers": w,
                    "nice": "auto" if nice is None else nice,
                    "load1": round(load, 2),
                    "wall_s": round(r.wall_s, 3),
                    "req_per_s": round(args.worker_jobs / r.wall_s, 1),
                    "runner_cpu_s": round(r.cpu_s, 2),
                    "mock_cpu_s": round(mock_cpu, 2),
                    "mock_waited_s": round(mock_wait, 2),
                }
                if w > 1:
                    row["split_cpu_s"] = summary["workers"]["cpu_s"]
                    row["forked"] = summary["workers"]["forked"]
                    alone, pair = _pair_probe()
                    row["pair_probe"] = round(pair / alone, 3)
                rows.append(row)
                print(f"workers: {row}", flush=True)
    ratios = []
    for rnd in range(args.rounds):
        one, two = (r for r in rows if r["round"] == rnd and r["nice"] == "auto")
        split = two["split_cpu_s"]
        w1_bound = max(one["runner_cpu_s"], (one["runner_cpu_s"] + one["mock_cpu_s"]) / 2)
        w2_bound = split["parent"] + (sum(split["workers"]) + two["mock_cpu_s"]) / 2
        w2_bound += split["merge"]
        ratio = two["req_per_s"] / one["req_per_s"]
        ratios.append(ratio)
        print(
            f"workers round {rnd}: --workers 2 / --workers 1 = {ratio:.3f}"
            f" ({two['req_per_s']} vs {one['req_per_s']} req/s, load {one['load1']}/"
            f"{two['load1']}); CPU s: --workers 1 runner {one['runner_cpu_s']}, mock"
            f" {one['mock_cpu_s']}; --workers 2 parent {split['parent']} + workers"
            f" {' + '.join(str(x) for x in split['workers'])} + merge {split['merge']}"
            f" = {two['runner_cpu_s']} ({two['runner_cpu_s'] / one['runner_cpu_s'] - 1:+.1%}),"
            f" mock {two['mock_cpu_s']}; ceiling on 2 free cores {w1_bound / w2_bound:.3f};"
            f" cores busy (runner + mock CPU / wall) {_busy(one):.2f} / {_busy(two):.2f};"
            f" mock waited for a core {one['mock_waited_s']} / {two['mock_waited_s']} s;"
            f" pair probe {two['pair_probe']:.2f}x CPU of one alone",
            flush=True,
        )
    print(f"workers: --workers 2 / --workers 1 req/s per round: {[round(x, 3) for x in ratios]}")
    if args.nice0:
        # The same rounds at the priority the benchmark started with (runner/cpu.py lowers a
        # run beside a local server, such as this mock, to nice 5 by default).
        def rate(rnd: int, w: int, nice: str) -> float:
            return next(
                float(r["req_per_s"])
                for r in rows
                if r["round"] == rnd and r["workers"] == w and r["nice"] == nice
            )

        for label, pairs in (
            ("--workers 2 / --workers 1, both --nice 0",
             [rate(k, 2, "0") / rate(k, 1, "0") for k in range(args.rounds)]),
            ("--workers 2, nice auto / --nice 0",
             [rate(k, 2, "auto") / rate(k, 2, "0") for k in range(args.rounds)]),
            ("--workers 1, nice auto / --nice 0",
             [rate(k, 1, "auto") / rate(k, 1, "0") for k in range(args.rounds)]),
        ):  # fmt: skip
            print(f"workers: {label} per round: {[round(x, 3) for x in pairs]}", flush=True)
    traces = _sched_traces(args, jobs) if args.sched_trace else None
    (OUT / "scaleout-workers.json").write_text(
        json.dumps({"rows": rows, "ratios": ratios, "sched_traces": traces})
    )


def _sched_traces(args: argparse.Namespace, jobs: Path) -> list[dict[str, Any]] | None:
    """One ``--workers 1`` and one ``--workers 2`` run under ``perf sched record`` (after the
    rounds, so the tracing's own cost is in no ratio): per process, CPU time and time runnable
    without a core; the cores' idle time, and how much of it passed while a process was
    runnable and had no core (see ``_sched.py``)."""
    if not _sched.available():
        print("workers sched trace: `perf sched record` does not work here; skipped", flush=True)
        return None
    out_rows = []
    traced: list[tuple[int, str | None]] = [(1, None), (2, None)]
    if args.nice0:
        traced.append((2, "0"))
    with mock_server("--latency", "zero") as (url, mock_pid):
        for w, nice in traced:
            d = SCALE / "workers" / "trace"
            d.mkdir(parents=True, exist_ok=True)
            for p in d.iterdir():
                p.unlink()
            cmd = [PY, "-m", "runner", "run", str(jobs), "--provider", "openai", "--base-url", url,
                   "--progress", "off", "--no-resume", "--concurrency", "128", "--workers", str(w),
                   "-o", str(d / "t.results.jsonl"),
                   *(["--nice", nice] if nice is not None else [])]  # fmt: skip
            r = run_child(_sched.record(cmd, d / "perf.data"))
            if r.returncode != 0:
                raise SystemExit(r.stderr[-2000:])
            split = _sched.parse(_sched.timehist(d / "perf.data"))
            tree = _sched.command_tree(d / "perf.data")
            mock = split.tasks[mock_pid]
            runner = sorted((t for pid, t in split.tasks.items() if pid in tree and t.cpu_s > 0.01),
                            key=lambda t: -t.cpu_s)  # fmt: skip
            us = 1e6 / args.worker_jobs
            row = {
                "workers": w,
                "nice": "auto" if nice is None else nice,
                "wall_s": round(split.wall_s, 3),
                "idle_s": round(split.idle_s, 3),
                "idle_while_waiting_s": round(split.idle_while_waiting_s, 3),
                "mock": {"cpu_s": round(mock.cpu_s, 3), "waited_s": round(mock.waited_s, 3)},
                "runner": [
                    {"cpu_s": round(t.cpu_s, 3), "waited_s": round(t.waited_s, 3)} for t in runner
                ],
            }
            out_rows.append(row)
            cpu = sum(t.cpu_s for t in runner)
            flag = "" if nice is None else f" --nice {nice}"
            print(
                f"workers sched trace --workers {w}{flag}: wall {split.wall_s:.2f} s over"
                f" {split.cpus}"
                f" CPUs; CPU per request: runner {cpu * us:.0f} us"
                f" ({' + '.join(f'{t.cpu_s:.2f}' for t in runner)} s), mock"
                f" {mock.cpu_s * us:.0f} us ({mock.cpu_s:.2f} s); runnable without a core:"
                f" runner {' + '.join(f'{t.waited_s:.2f}' for t in runner)} s, mock"
                f" {mock.waited_s:.2f} s; cores idle {split.idle_s:.2f} s, of which"
                f" {split.idle_while_waiting_s:.2f} s while a process was runnable beside it",
                flush=True,
            )
    return out_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("what", choices=["rate", "fault", "shards", "workers", "all"])
    ap.add_argument("--rpm-jobs", type=int, default=360, help="jobs per process, RPM case")
    ap.add_argument("--tpm-jobs", type=int, default=300, help="jobs per process, TPM case")
    ap.add_argument("--fault-jobs", type=int, default=150)
    ap.add_argument("--worker-jobs", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--nice0",
        action="store_true",
        help="workers: each round also runs both with --nice 0 (the policy's effect)",
    )
    ap.add_argument(
        "--sched-trace",
        action="store_true",
        help="workers: also trace one run of each with `perf sched` (where the cores went)",
    )
    args = ap.parse_args()
    SCALE.mkdir(parents=True, exist_ok=True)
    todo = ["rate", "fault", "shards", "workers"] if args.what == "all" else [args.what]
    for what in todo:
        {"rate": bench_rate, "fault": bench_fault, "shards": bench_shards,
         "workers": bench_workers}[what](args)  # fmt: skip


if __name__ == "__main__":
    main()
