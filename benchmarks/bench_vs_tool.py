"""``runner bench`` next to an established load generator, on the same simulated provider.

The other tool is aiperf (NVIDIA's successor to genai-perf), installed from PyPI into its own
virtual environment (``.venv-bench``, created here on first use) so the project's dependencies
stay small. CI does not run this benchmark: it downloads a large tool and takes minutes.

Two parts, same workload for both tools (prompt ~256 tokens, 64 output tokens, streaming, server
token counts), same mock server process for both, one tool after the other:

(a) agreement: the mock with a realistic latency model (TTFT base 20 ms, 5 ms per output token)
    at a moderate fixed concurrency where neither client is the bottleneck; TTFT mean/p50,
    request throughput, latency and TPOT (aiperf calls it ITL) should agree within 5%.
(b) client ceiling: the mock answering at once (``--latency zero``); each tool sweeps concurrency
    upward and the best achieved request rate is its ceiling on this machine. The mock's own CPU
    use is reported next to each point: near 100% of a core means the server, not the client, was
    the limit, and the figure is a lower bound for that client.

aiperf needs a tokenizer to synthesise prompts; its built-in one downloads tiktoken data at run
time, which is impossible offline, so a small byte-level BPE is trained here on aiperf's own
bundled corpus and passed as a local tokenizer directory. Token counts in the metrics come from
the server's ``usage`` for both tools (``--use-server-token-count``).

If aiperf cannot be installed or run, the comparison falls back to a loop over the ``openai`` SDK
(streaming ``AsyncOpenAI`` under a semaphore), clearly labelled as a reference point, not a tool.

Usage: ``python benchmarks/bench_vs_tool.py [--quick]``; writes ``bench-out/bench_vs_tool.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import OUT, PY, ROOT, cpu_seconds, mock_server, run_child

VENV = ROOT / ".venv-bench"
TOOL = "aiperf"
TOOL_SPEC = "aiperf==0.13.0"
PROMPT_TOKENS = 256
OUTPUT_TOKENS = 64
MODEL = "mock-1"
REALISTIC = ["--base-ms", "20", "--decode-ms-per-token", "5", "--prefill-ms-per-token", "0"]
REALISTIC += ["--jitter", "0.05"]
AGREE_TOLERANCE = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- setup


def ensure_tool() -> str | None:
    """Install aiperf into .venv-bench if missing; the reason it is unusable, or None."""
    exe = VENV / "bin" / "aiperf"
    if exe.exists():
        return None
    log(f"creating {VENV} and installing {TOOL_SPEC} (first run only, a few minutes)")
    if not (VENV / "bin" / "python").exists():
        r = subprocess.run([PY, "-m", "venv", str(VENV)], capture_output=True, text=True)
        if r.returncode:
            return f"python -m venv failed: {r.stderr.strip()[-500:]}"
    r = subprocess.run(
        [str(VENV / "bin" / "pip"), "install", "-q", TOOL_SPEC], capture_output=True, text=True
    )
    if r.returncode or not exe.exists():
        return f"pip install {TOOL_SPEC} failed: {r.stderr.strip()[-800:]}"
    return None


_TOKENIZER_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import aiperf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = Path(aiperf.__file__).parent / "dataset/generator/assets/shakespeare.txt"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train([str(corpus)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(sys.argv[1])
    """
)


def ensure_tokenizer() -> Path:
    """A local tokenizer directory for aiperf (see the module docstring for why)."""
    path = OUT / "aiperf-tokenizer"
    if not (path / "tokenizer.json").exists():
        r = subprocess.run(
            [str(VENV / "bin" / "python"), "-c", _TOKENIZER_SCRIPT, str(path)],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            raise RuntimeError(f"could not build the tokenizer: {r.stderr[-800:]}")
    return path


# --------------------------------------------------------------------------------------- clients


def _mock_util(pid: int, before: float, seconds: float) -> float:
    return round((cpu_seconds(pid) - before) / seconds, 3) if seconds > 0 else 0.0


def run_runner(
    url: str, mock_pid: int, *, concurrency: int, requests: int, warmup: int
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = Path(tmp) / "summary.json"
        before = cpu_seconds(mock_pid)
        child = run_child(
            [PY, "-m", "runner", "bench", "--base-url", url, "--model", MODEL,
             "--concurrency", str(concurrency), "--requests", str(requests),
             "--warmup", str(warmup), "--prompt-tokens", str(PROMPT_TOKENS),
             "--output-tokens", str(OUTPUT_TOKENS), "--summary", str(summary_path)]
        )  # fmt: skip
        if child.returncode != 0 or not summary_path.exists():
            raise RuntimeError(f"runner bench failed: {child.stderr[-1500:]}")
        s = orjson.loads(summary_path.read_bytes())
    ok = s["jobs"]["ok"]
    return {
        "tool": "runner bench",
        "concurrency": concurrency,
        "requests": s["jobs"]["total"],
        "ok": ok,
        "duration_s": s["wall_s"],
        "rps": s["requests_per_s"],
        "ttft_mean": s["ttft_ms"]["mean"],
        "ttft_p50": s["ttft_ms"]["p50"],
        "latency_mean": s["latency_ms"]["mean"],
        "latency_p50": s["latency_ms"]["p50"],
        "tpot_mean": s["tpot_ms"]["mean"],
        "prompt_tokens_mean": round(s["tokens"]["prompt"] / max(ok, 1), 1),
        "output_tokens_mean": round(s["tokens"]["completion"] / max(ok, 1), 1),
        "client_cpu_s": round(child.cpu_s, 2),
        "process_wall_s": round(child.wall_s, 2),
        "mock_cpu_util": _mock_util(mock_pid, before, s["wall_s"]),
    }


def run_aiperf(
    url: str, mock_pid: int, *, concurrency: int, requests: int, warmup: int, tokenizer: Path
) -> dict[str, Any]:
    root_url = url.removesuffix("/v1")  # aiperf appends /v1/chat/completions itself
    with tempfile.TemporaryDirectory() as tmp:
        before = cpu_seconds(mock_pid)
        child = run_child(
            [str(VENV / "bin" / "aiperf"), "profile", "--model", MODEL, "--url", root_url,
             "--endpoint-type", "chat", "--streaming", "--concurrency", str(concurrency),
             "--request-count", str(requests), "--warmup-request-count", str(warmup),
             "--isl", str(PROMPT_TOKENS), "--isl-stddev", "0",
             "--osl", str(OUTPUT_TOKENS), "--osl-stddev", "0",
             "--tokenizer", str(tokenizer), "--use-server-token-count", "--random-seed", "0",
             "--ui", "none", "--no-server-metrics", "--no-gpu-telemetry",
             "--artifact-dir", tmp],
            timeout=300,
        )  # fmt: skip
        export = Path(tmp) / "profile_export_aiperf.json"
        if child.returncode != 0 or not export.exists():
            raise RuntimeError(f"aiperf failed: {(child.stdout + child.stderr)[-1500:]}")
        d = orjson.loads(export.read_bytes())
    duration = d["benchmark_duration"]["avg"]
    return {
        "tool": "aiperf",
        "concurrency": concurrency,
        "requests": int(d["request_count"]["avg"]),
        "ok": int(d["request_count"]["avg"] - (d.get("error_request_count") or {}).get("avg", 0)),
        "duration_s": round(duration, 3),
        "rps": round(d["request_throughput"]["avg"], 3),
        "ttft_mean": round(d["time_to_first_token"]["avg"], 3),
        "ttft_p50": round(d["time_to_first_token"]["p50"], 3),
        "latency_mean": round(d["request_latency"]["avg"], 3),
        "latency_p50": round(d["request_latency"]["p50"], 3),
        # aiperf's "inter token latency" is (latency - TTFT) / (output tokens - 1): our TPOT
        "tpot_mean": round(d["inter_token_latency"]["avg"], 3),
        "prompt_tokens_mean": round(d["input_sequence_length"]["avg"], 1),
        "output_tokens_mean": round(d["output_sequence_length"]["avg"], 1),
        "client_cpu_s": round(child.cpu_s, 2),
        "process_wall_s": round(child.wall_s, 2),
        "mock_cpu_util": _mock_util(mock_pid, before, duration),
    }


def sdk_child(url: str, concurrency: int, n: int) -> None:
    """The reference loop, run in a child process: streaming ``AsyncOpenAI`` under a semaphore."""
    import asyncio

    from openai import AsyncOpenAI

    async def run() -> None:
        client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0)
        sem = asyncio.Semaphore(concurrency)
        ttft: list[float] = []
        lat: list[float] = []
        out: list[int] = []
        filler = "word " * (PROMPT_TOKENS * 4 // 5)

        async def one(i: int) -> None:
            async with sem:
                t0 = time.perf_counter()
                first = None
                usage = None
                stream = await client.chat.completions.create(
                    model=MODEL,
                    stream=True,
                    max_tokens=OUTPUT_TOKENS,
                    stream_options={"include_usage": True},
                    messages=[{"role": "user", "content": f"[sdk {i}] {filler}"}],
                )
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter()
                    if chunk.usage:
                        usage = chunk.usage
                end = time.perf_counter()
                ttft.append(((first or end) - t0) * 1000)
                lat.append((end - t0) * 1000)
                out.append(usage.completion_tokens if usage else 0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
        await client.close()
        print(orjson.dumps({"wall_s": wall, "ttft": ttft, "lat": lat, "out": out}).decode())

    asyncio.run(run())


def run_sdk(
    url: str, mock_pid: int, *, concurrency: int, requests: int, warmup: int
) -> dict[str, Any]:
    import statistics

    before = cpu_seconds(mock_pid)
    child = run_child([PY, __file__, "--sdk-child", url, str(concurrency), str(requests)])
    if child.returncode != 0:
        raise RuntimeError(f"openai SDK loop failed: {child.stderr[-1500:]}")
    d = orjson.loads(child.stdout.strip().splitlines()[-1])
    wall = d["wall_s"]
    tpots = [
        (la - t) / (o - 1) for la, t, o in zip(d["lat"], d["ttft"], d["out"], strict=True) if o > 1
    ]
    return {
        "tool": "openai SDK loop (reference, not a benchmark tool)",
        "concurrency": concurrency,
        "requests": requests,
        "ok": len(d["lat"]),
        "duration_s": round(wall, 3),
        "rps": round(requests / wall, 3),
        "ttft_mean": round(statistics.fmean(d["ttft"]), 3),
        "ttft_p50": round(statistics.median(d["ttft"]), 3),
        "latency_mean": round(statistics.fmean(d["lat"]), 3),
        "latency_p50": round(statistics.median(d["lat"]), 3),
        "tpot_mean": round(statistics.fmean(tpots), 3) if tpots else None,
        "prompt_tokens_mean": None,
        "output_tokens_mean": round(statistics.fmean(d["out"]), 1),
        "client_cpu_s": round(child.cpu_s, 2),
        "process_wall_s": round(child.wall_s, 2),
        "mock_cpu_util": _mock_util(mock_pid, before, wall),
    }


# --------------------------------------------------------------------------------------- report

COLS = (
    ("tool", "tool", 14),
    ("c", "concurrency", 5),
    ("ok", "ok", 6),
    ("req/s", "rps", 9),
    ("TTFT mean", "ttft_mean", 10),
    ("TTFT p50", "ttft_p50", 9),
    ("lat mean", "latency_mean", 9),
    ("TPOT mean", "tpot_mean", 10),
    ("prompt tok", "prompt_tokens_mean", 11),
    ("out tok", "output_tokens_mean", 8),
    ("client CPU s", "client_cpu_s", 13),
    ("mock CPU", "mock_cpu_util", 9),
)


def table(rows: list[dict[str, Any]]) -> str:
    def cell(v: Any, w: int) -> str:
        if v is None:
            return "-".rjust(w)
        if isinstance(v, float):
            return f"{v:.2f}".rjust(w)
        return str(v)[:w].rjust(w)

    head = " ".join(name.rjust(w) for name, _, w in COLS)
    lines = [head, "-" * len(head)]
    lines += [" ".join(cell(r.get(key), w) for _, key, w in COLS) for r in rows]
    return "\n".join(lines)


def rel_diff(a: float, b: float) -> float:
    return abs(a - b) / b if b else float("inf")


# --------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer requests and sweep points")
    ap.add_argument("--agree-concurrency", type=int, default=4)
    ap.add_argument("--no-tool", action="store_true", help="skip aiperf: SDK reference only")
    ap.add_argument(
        "--sdk-child", nargs=3, metavar=("URL", "CONCURRENCY", "N"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.sdk_child:
        url, c, n = args.sdk_child
        sdk_child(url, int(c), int(n))
        return 0
    t_start = time.perf_counter()
    OUT.mkdir(exist_ok=True)

    why = "skipped (--no-tool)" if args.no_tool else ensure_tool()
    other: Any
    tokenizer = None
    if why is None:
        try:
            tokenizer = ensure_tokenizer()
        except RuntimeError as exc:
            why = str(exc)
    if why is None and tokenizer is not None:
        tok = tokenizer

        def other(url: str, pid: int, **kw: Any) -> dict[str, Any]:
            return run_aiperf(url, pid, tokenizer=tok, **kw)

        other_name = TOOL
    else:
        log(f"aiperf unusable, falling back to the openai SDK reference loop: {why}")
        other, other_name = run_sdk, "openai SDK loop"

    n_agree = 200 if args.quick else 300
    levels = [8, 64] if args.quick else [4, 16, 64, 256]
    # runner bench gets more requests so its runs last seconds too, not a fraction of one
    n_runner_b, n_other_b = (3000, 800) if args.quick else (10000, 1500)
    result: dict[str, Any] = {
        "other_tool": other_name,
        "other_tool_unusable_because": why,
        "workload": {
            "prompt_tokens": PROMPT_TOKENS,
            "output_tokens": OUTPUT_TOKENS,
            "stream": True,
            "model": MODEL,
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
    }

    # (a) agreement: other tool, then runner, then the other tool again, so drift shows up
    log(f"(a) agreement at concurrency {args.agree_concurrency}, {n_agree} requests each")
    with mock_server(*REALISTIC) as (url, pid):
        kw = {"concurrency": args.agree_concurrency, "requests": n_agree, "warmup": 16}
        rows_a = [
            other(url, pid, **kw),
            run_runner(url, pid, **kw),
            other(url, pid, **kw),
            run_runner(url, pid, **kw),
        ]
    print("\n(a) agreement, mock: TTFT 20 ms + 5 ms/token, jitter 5%")
    print(table(rows_a))
    agree: dict[str, Any] = {}
    for metric in ("ttft_mean", "ttft_p50", "rps", "latency_mean", "tpot_mean"):
        o = sum(r[metric] for r in rows_a[0::2]) / 2
        r_ = sum(r[metric] for r in rows_a[1::2]) / 2
        d = rel_diff(r_, o)
        agree[metric] = {"runner": round(r_, 3), "other": round(o, 3), "rel_diff": round(d, 4),
                         "within_5pct": d <= AGREE_TOLERANCE}  # fmt: skip
    for metric, v in agree.items():
        verdict = "ok" if v["within_5pct"] else "MISS"
        print(
            f"  {metric:<13} runner {v['runner']:>9.2f}  {other_name} {v['other']:>9.2f}  "
            f"diff {v['rel_diff'] * 100:5.1f}%  {verdict}"
        )
    result["agreement"] = {"rows": rows_a, "metrics": agree}

    # (b) client ceiling: zero-latency mock, concurrency sweep per tool
    log(f"(b) client ceiling, zero-latency mock, concurrency {levels}")
    rows_b: list[dict[str, Any]] = []
    with mock_server("--latency", "zero") as (url, pid):
        for c in levels:
            rows_b.append(run_runner(url, pid, concurrency=c, requests=n_runner_b, warmup=50))
        for c in levels:
            rows_b.append(other(url, pid, concurrency=c, requests=n_other_b, warmup=50))
    print("\n(b) client ceiling, mock answers at once (mock CPU ~1.0 = the server is the limit)")
    print(table(rows_b))
    best_r = max((r for r in rows_b if r["tool"] == "runner bench"), key=lambda r: r["rps"])
    best_o = max((r for r in rows_b if r["tool"] != "runner bench"), key=lambda r: r["rps"])
    ratio = best_r["rps"] / best_o["rps"] if best_o["rps"] else float("inf")
    print(f"  ceiling: runner bench {best_r['rps']:.0f} req/s (c={best_r['concurrency']}, mock "
          f"CPU {best_r['mock_cpu_util']:.2f}), {other_name} {best_o['rps']:.0f} req/s "
          f"(c={best_o['concurrency']}, mock CPU {best_o['mock_cpu_util']:.2f}): "
          f"ratio {ratio:.1f}x (target >= 2x: {'ok' if ratio >= 2 else 'MISS'})")  # fmt: skip
    result["ceiling"] = {
        "rows": rows_b,
        "runner_best_rps": best_r["rps"],
        "other_best_rps": best_o["rps"],
        "ratio": round(ratio, 2),
        "runner_limited_by_mock": best_r["mock_cpu_util"] >= 0.9,
    }
    result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    (OUT / "bench_vs_tool.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    log(f"wrote {OUT / 'bench_vs_tool.json'} in {result['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
