"""``runner bench``: generate load against a chat endpoint and measure it.

Two load shapes, each run once per value of ``--sweep``:

* closed loop (``--concurrency N``): N workers, each sending its next request as soon as the
  previous one has answered. Measures latency at a fixed number of requests in flight.
* open loop (``--rate R``): arrivals at precomputed times drawn from a seeded Poisson (or gamma,
  ``--burstiness k``) process, each launched without waiting for earlier ones. Measures latency at
  an offered rate. When ``--max-in-flight`` requests are already out, the scheduler waits for a
  slot; every dispatch's lateness against its scheduled time is recorded so a client that cannot
  keep up shows up as lateness and a lower achieved rate, never as silently better latency.

Warm-up requests run as a separate phase before the measured one and appear in neither the
latency file nor the summary. Requests are sent once (no retries): a failure is a measurement.
Token counts come from the server's ``usage``, never from counting stream chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import math
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from .config import PROVIDERS, RunConfig, file_arg, load_config, model_arg
from .errors import ConfigError, InputError, RunnerError
from .models import Attempt, Job, LatencyRecord
from .providers import open_backend
from .report import add_slo_arguments, render_summary, slo_from_args
from .runtime import endpoint, event_loop_run, mock_config
from .sinks import write_summary
from .stats import Distribution, SummaryBuilder

if TYPE_CHECKING:
    from .pipeline import Backend  # the run's backend protocol; bench sends one attempt a job

__all__ = [
    "BenchSpec",
    "BenchStats",
    "Phase",
    "add_arguments",
    "arrival_offsets",
    "main",
    "parse_sweep",
    "run_bench",
    "synthetic_jobs",
    "synthetic_text",
]

CHARS_PER_TOKEN = 4
DEFAULT_REQUESTS = 100
DEFAULT_MAX_IN_FLIGHT = 1000
# The built-in mock's latency model when bench starts it: small but non-zero, shaped like a real
# server (first token after a fixed delay, then a steady decode), so TTFT and ITL are meaningful.
DEFAULT_MOCK_TTFT_MS = 20.0
DEFAULT_MOCK_DECODE_MS = 2.0
LATENESS_THRESHOLD_MS = 1.0  # dispatches later than this count as late
WRITE_BATCH = 256  # latency lines buffered before a write
_MAX_SPIN = 1_000_000  # bound on loop turns spent finishing a sub-millisecond wait


# ---------------------------------------------------------------------------------------------
# Workload generation (pure, seeded)


def parse_sweep(text: str) -> list[float]:
    """``"1,2,4,8"`` -> ``[1.0, 2.0, 4.0, 8.0]``; every value must be a positive number."""
    values: list[float] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        try:
            v = float(item)
        except ValueError:
            raise ConfigError(f"--sweep: {item!r} is not a number") from None
        if not math.isfinite(v) or v <= 0:
            raise ConfigError(f"--sweep: values must be > 0, got {item}")
        values.append(v)
    if not values:
        raise ConfigError("--sweep: give at least one value")
    return values


def arrival_offsets(
    rate: float, *, seed: int, arrival: str = "poisson", burstiness: float = 1.0
) -> Iterator[float]:
    """Endless scheduled arrival times in seconds from the start, with mean ``rate`` per second.

    Inter-arrival gaps are gamma distributed with shape ``burstiness`` and mean ``1 / rate``:
    shape 1 is the Poisson process, below 1 is burstier (coefficient of variation
    ``1 / sqrt(k)``), above 1 is smoother. ``"constant"`` spaces arrivals exactly.
    """
    if rate <= 0:
        raise ConfigError(f"rate must be > 0, got {rate}")
    if burstiness <= 0:
        raise ConfigError(f"burstiness must be > 0, got {burstiness}")
    if arrival not in ("poisson", "gamma", "constant"):
        raise ConfigError(f"arrival must be poisson, gamma or constant, got {arrival!r}")
    if arrival == "constant":
        gap = 1.0 / rate
        for i in itertools.count():
            yield i * gap
    rng = random.Random(seed)
    t = 0.0
    shape = 1.0 if arrival == "poisson" else burstiness
    scale = 1.0 / (rate * shape)
    while True:
        yield t
        t += rng.gammavariate(shape, scale)


_WORDS = (
    "the of and to in is that for it as with was on be by this are from at or an have not "
    "which data model system value time process result table report market energy water city "
    "policy study method network signal memory budget contract river forest engine theory"
).split()


def _corpus(seed: int, chars: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < chars:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


def synthetic_text(tokens: int, rng: random.Random, corpus: str, *, head: str = "") -> str:
    """About ``tokens`` tokens of English-looking text: ``CHARS_PER_TOKEN * tokens`` characters.

    ``head`` is put first (a unique request tag keeps distinct prompts from sharing a cacheable
    prefix by accident); the rest is a seeded slice of ``corpus``.
    """
    n = max(0, tokens * CHARS_PER_TOKEN)
    if n <= len(head):
        return head[:n]
    need = n - len(head)
    if len(corpus) <= need:
        body = (corpus + " ") * (need // (len(corpus) + 1) + 1)
        return head + body[:need]
    start = rng.randrange(len(corpus) - need)
    return head + corpus[start : start + need]


def synthetic_jobs(
    *,
    count: int | None,
    prompt_tokens: int,
    output_tokens: int,
    seed: int,
    ignore_eos: bool = False,
    shared_prefix_tokens: int = 0,
    groups: int = 1,
    id_prefix: str = "bench",
    model: str | None = None,
) -> Iterator[Job]:
    """Seeded synthetic jobs; ``count=None`` is endless (for ``--duration``).

    With ``shared_prefix_tokens`` K > 0, ``groups`` G system prompts of K tokens are made once and
    each job draws one of them, followed by a unique question of ``prompt_tokens`` tokens.
    """
    rng = random.Random(seed)
    corpus = _corpus(seed, max(65536, 2 * CHARS_PER_TOKEN * (prompt_tokens + 8)))
    params: dict[str, Any] = {"max_tokens": output_tokens}
    if ignore_eos:
        # vLLM and SGLang honour these; they make every reply exactly output_tokens long.
        params["ignore_eos"] = True
        params["min_tokens"] = output_tokens
    prefixes: list[str] = []
    if shared_prefix_tokens > 0:
        prng = random.Random(seed + 1)
        prefixes = [
            synthetic_text(shared_prefix_tokens, prng, corpus, head=f"Context {g}. ")
            for g in range(groups)
        ]
    counter: Iterable[int] = range(count) if count is not None else itertools.count()
    for i in counter:
        question = synthetic_text(prompt_tokens, rng, corpus, head=f"[{id_prefix} {i}] ")
        messages: tuple[dict[str, Any], ...]
        if prefixes:
            g = rng.randrange(len(prefixes))
            messages = (
                {"role": "system", "content": prefixes[g]},
                {"role": "user", "content": question},
            )
            group: str | None = f"bench-g{g}"
            prefix_len, prefix_chars = 1, len(prefixes[g])
        else:
            messages = ({"role": "user", "content": question},)
            group, prefix_len, prefix_chars = None, 0, 0
        yield Job(
            custom_id=f"{id_prefix}-{i}",
            line=i + 1,
            messages=messages,
            prefix_len=prefix_len,
            group=group,
            cache_id=group,
            model=model,
            params=params,
            prompt_chars=prefix_chars + len(question),
            prefix_chars=prefix_chars,
        )


def replay_jobs(jobs: Sequence[Job], count: int | None, *, id_prefix: str = "") -> Iterator[Job]:
    """Cycle through a loaded jobs file; repeats get a ``#k`` suffix so ids stay unique."""
    if not jobs:
        return
    counter: Iterable[int] = range(count) if count is not None else itertools.count()
    n = len(jobs)
    for i in counter:
        job = jobs[i % n]
        rounds = i // n
        cid = job.custom_id if rounds == 0 else f"{job.custom_id}#{rounds}"
        if id_prefix:
            cid = f"{id_prefix}{cid}"
        if cid != job.custom_id:
            job = dataclasses.replace(job, custom_id=cid)
        yield job


# ---------------------------------------------------------------------------------------------
# Statistics specific to bench (TPOT, ITL, goodput and the docs/FORMATS.md summary: runner.stats)


@dataclass(slots=True)
class BenchStats:
    """What only the load generator can know: how late each open-loop dispatch went out."""

    late_ms: Distribution = field(default_factory=Distribution)
    late: int = 0  # dispatches later than LATENESS_THRESHOLD_MS
    peak_in_flight: int = 0
    last_offset_s: float = 0.0  # open loop: schedule time of the last dispatch
    last_dispatch_s: float = 0.0  # open loop: when it actually went out


# ---------------------------------------------------------------------------------------------
# The load generators


@dataclass(frozen=True, slots=True, kw_only=True)
class Phase:
    """One measured (or warm-up) run: which jobs, which load shape."""

    mode: str  # closed | open
    concurrency: int = 1  # closed loop workers
    rate: float | None = None  # open loop mean arrivals per second
    arrival: str = "poisson"
    burstiness: float = 1.0
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    duration_s: float | None = None  # stop issuing after this long
    seed: int = 0


def _cache_key(job: Job, use: bool) -> str | None:
    return job.group if use and job.group else None


def make_record(
    job: Job, attempt: Attempt, *, queued_at: float, started_at: float, ended_at: float
) -> LatencyRecord:
    """A latency line from one attempt; ``queued_at`` is the scheduled arrival (open loop).

    The run's builder; bench's ``total_ms`` counts from the arrival, so it includes the wait.
    """
    return LatencyRecord.of_attempt(
        job,
        attempt,
        attempts=1,
        queued_at=queued_at,
        started_at=started_at,
        ended_at=ended_at,
        queue_ms=max(0.0, (started_at - queued_at) * 1000.0),
        total_ms=(ended_at - queued_at) * 1000.0,
    )


Sink = Callable[[LatencyRecord], None]

# Every duration is measured on perf_counter (monotonic); records carry unix timestamps, so one
# anchor taken at import turns the one into the other without a second, steppable clock.
_PERF0 = time.perf_counter()
_WALL0 = time.time()


def _wall(perf: float) -> float:
    return _WALL0 + (perf - _PERF0)


async def _send_one(
    backend: Backend, job: Job, sink: Sink, *, cache_key: bool, queued_at: float | None
) -> None:
    started = _wall(time.perf_counter())
    attempt = await backend.send(job, cache_key=_cache_key(job, cache_key))
    ended = _wall(time.perf_counter())
    sink(
        make_record(
            job,
            attempt,
            queued_at=started if queued_at is None else queued_at,
            started_at=started,
            ended_at=ended,
        )
    )


async def run_closed(
    backend: Backend, jobs: Iterator[Job], phase: Phase, sink: Sink, *, cache_key: bool = False
) -> None:
    """``phase.concurrency`` workers each sending back-to-back until the jobs (or time) run out."""
    loop = asyncio.get_running_loop()
    deadline = None if phase.duration_s is None else loop.time() + phase.duration_s

    async def worker() -> None:
        # One shared iterator: the event loop is single-threaded, so next() needs no lock.
        for job in jobs:
            if deadline is not None and loop.time() >= deadline:
                return
            await _send_one(backend, job, sink, cache_key=cache_key, queued_at=None)

    async with asyncio.TaskGroup() as tg:
        for _ in range(phase.concurrency):
            tg.create_task(worker())


async def run_open(
    backend: Backend,
    jobs: Iterator[Job],
    phase: Phase,
    sink: Sink,
    *,
    stats: BenchStats,
    cache_key: bool = False,
) -> None:
    """Launch each job at its scheduled arrival time without waiting for earlier ones.

    At most ``phase.max_in_flight`` requests are out at once; past that the scheduler waits for a
    slot and the wait shows up in ``stats.late_ms`` (and in each record's ``queue_ms``).
    """
    if phase.rate is None:
        raise ConfigError("open loop needs a rate")
    slots = asyncio.Semaphore(phase.max_in_flight)
    tasks: set[asyncio.Task[None]] = set()
    failures: list[BaseException] = []
    in_flight = 0

    def done(task: asyncio.Task[None]) -> None:
        nonlocal in_flight
        tasks.discard(task)
        in_flight -= 1
        slots.release()
        # send() reports request failures in the Attempt; an exception here is a bug to surface.
        if not task.cancelled() and (exc := task.exception()) is not None:
            failures.append(exc)

    offsets = arrival_offsets(
        phase.rate, seed=phase.seed, arrival=phase.arrival, burstiness=phase.burstiness
    )
    # perf_counter paces the schedule (the loop's own clock may be millisecond-grained); the
    # records' arrival stamps come from the same clock through the module's anchor.
    clock = time.perf_counter
    t0 = clock()
    wall0 = _wall(t0)
    try:
        for job, offset in zip(jobs, offsets, strict=False):
            if failures or (phase.duration_s is not None and offset >= phase.duration_s):
                break
            due = t0 + offset
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
                # uvloop's timers have millisecond resolution and may fire up to that early:
                # yield to the loop (other requests keep flowing) until really due.
                for _ in range(_MAX_SPIN):
                    if clock() >= due:
                        break
                    await asyncio.sleep(0)
            await slots.acquire()
            now = clock()
            late_ms = (now - due) * 1000.0
            stats.late_ms.add(late_ms)
            if late_ms > LATENESS_THRESHOLD_MS:
                stats.late += 1
            stats.last_offset_s = offset
            stats.last_dispatch_s = now - t0
            in_flight += 1
            stats.peak_in_flight = max(stats.peak_in_flight, in_flight)
            task = asyncio.create_task(
                _send_one(backend, job, sink, cache_key=cache_key, queued_at=wall0 + offset)
            )
            tasks.add(task)
            task.add_done_callback(done)
        if tasks:
            await asyncio.wait(set(tasks))
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        raise failures[0]


# ---------------------------------------------------------------------------------------------
# One benchmark run: phases, outputs, summary


@dataclass(slots=True, kw_only=True)
class BenchSpec:
    """Everything one ``runner bench`` invocation needs besides the backend."""

    config: RunConfig
    phases: list[Phase]
    make_jobs: Callable[[int | None, str], Iterator[Job]]  # (count, id prefix) -> jobs
    requests: int | None
    warmup: int = 0
    cache_key: bool = False
    latency: Path | None = None
    slo_ms: dict[str, float] = field(default_factory=dict)  # goodput bounds: ttft/tpot/latency


def _label(phase: Phase) -> str:
    return f"c{phase.concurrency}" if phase.mode == "closed" else f"r{phase.rate:g}"


def _latency_path(base: Path | None, phase: Phase, many: bool) -> Path | None:
    if base is None or not many:
        return base
    return base.with_name(f"{base.stem}.{_label(phase)}{base.suffix}")


class _LatencyWriter:
    """Buffered orjson lines; bench writes its own file (no resume, no lock: a run is a run)."""

    __slots__ = ("_buf", "_fh")

    def __init__(self, path: Path | None) -> None:
        self._fh: IO[bytes] | None = open(path, "wb") if path is not None else None
        self._buf: list[bytes] = []

    def write(self, rec: LatencyRecord) -> None:
        if self._fh is None:
            return
        self._buf.append(orjson.dumps(rec))
        if len(self._buf) >= WRITE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self._fh is not None and self._buf:
            self._fh.write(b"\n".join(self._buf) + b"\n")
            self._buf.clear()
            self._fh.flush()

    def close(self) -> None:
        self.flush()
        if self._fh is not None:
            self._fh.close()


def _bench_extras(phase: Phase, stats: BenchStats, summary: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "mode": phase.mode,
        "concurrency": phase.concurrency if phase.mode == "closed" else None,
        "rate": phase.rate,
        "arrival": phase.arrival if phase.mode == "open" else None,
        "burstiness": phase.burstiness if phase.mode == "open" else None,
        "max_in_flight": phase.max_in_flight if phase.mode == "open" else None,
        "offered_rps": phase.rate,
        # Completed requests (ok or failed) per wall second, from the first dispatch to the last
        # answer: below offered_rps when the server, or this client, cannot keep up.
        "achieved_rps": summary["requests_per_s"],
    }
    if phase.mode == "open":
        issued = stats.late_ms.count
        # Rates over the gaps between the first and the last dispatch: the seeded schedule's own
        # rate (a finite sample of the offered rate) and the rate the client really dispatched at.
        gaps = issued - 1
        out["dispatch"] = {
            "issued": issued,
            "scheduled_rps": (
                round(gaps / stats.last_offset_s, 3) if stats.last_offset_s > 0 else None
            ),
            "issued_rps": (
                round(gaps / stats.last_dispatch_s, 3) if stats.last_dispatch_s > 0 else None
            ),
            "late_ms": stats.late_ms.summary(),
            "late_fraction": round(stats.late / issued, 4) if issued else 0.0,
            "late_threshold_ms": LATENESS_THRESHOLD_MS,
            "peak_in_flight": stats.peak_in_flight,
        }
    return out


async def _run_phase(
    backend: Backend, spec: BenchSpec, phase: Phase, latency: Path | None
) -> dict[str, Any]:
    builder = SummaryBuilder(spec.config.price(), slo_ms=spec.slo_ms or None)
    stats = BenchStats()
    if spec.warmup:
        # Warm connections and server caches; nothing from this phase is recorded.
        warm = Phase(mode="closed", concurrency=min(spec.warmup, _width(phase)))
        jobs = spec.make_jobs(spec.warmup, "warmup-")
        await run_closed(backend, jobs, warm, lambda rec: None, cache_key=spec.cache_key)

    writer = _LatencyWriter(latency)
    try:

        def sink(rec: LatencyRecord) -> None:
            writer.write(rec)
            builder.add(rec)

        jobs = spec.make_jobs(spec.requests, "")
        t0 = time.perf_counter()
        if phase.mode == "closed":
            await run_closed(backend, jobs, phase, sink, cache_key=spec.cache_key)
        else:
            await run_open(backend, jobs, phase, sink, stats=stats, cache_key=spec.cache_key)
        wall_s = time.perf_counter() - t0
    finally:
        writer.close()
    summary = builder.summary(wall_s=wall_s, retries=0, limiter_wait_s=0.0, skipped_resumed=0)
    summary["bench"] = _bench_extras(phase, stats, summary)
    return summary


def _width(phase: Phase) -> int:
    if phase.mode == "closed":
        return phase.concurrency
    return max(1, min(phase.max_in_flight, math.ceil(phase.rate or 1)))


async def run_bench(spec: BenchSpec, *, base_url: str | None) -> list[dict[str, Any]]:
    """Run every phase of ``spec`` against one backend; returns one summary per phase."""
    many = len(spec.phases) > 1
    width = max(_width_cap(p) for p in spec.phases)
    # The connector must allow every request bench may have in flight, or it silently queues.
    config = spec.config.with_overrides(
        concurrency=max(width, spec.config.concurrency), base_url=base_url or None
    )
    mock = None
    if not config.base_url:
        # The built-in mock, shaped like a real server unless [mock] / --mock-* say otherwise.
        defaults = {
            "base_ms": DEFAULT_MOCK_TTFT_MS,
            "decode_ms_per_token": DEFAULT_MOCK_DECODE_MS,
            "prefill_ms_per_token": 0.0,
            "cached_prefill_ms_per_token": 0.0,
            "models": (config.model,),
        }
        mock = mock_config(config, defaults)
    out: list[dict[str, Any]] = []
    async with (
        endpoint(config, mock) as url,
        open_backend(config, base_url=url, api_key=config.api_key()) as backend,
    ):
        for phase in spec.phases:
            summary = await _run_phase(
                backend, spec, phase, _latency_path(spec.latency, phase, many)
            )
            out.append(summary)
            print(_one_line(summary), file=sys.stderr, flush=True)
    return out


def _width_cap(phase: Phase) -> int:
    return phase.concurrency if phase.mode == "closed" else phase.max_in_flight


# ---------------------------------------------------------------------------------------------
# Presentation


def _pct(d: dict[str, float] | None, key: str) -> str:
    return "-" if not d else f"{d[key]:.1f}"


def _one_line(summary: dict[str, Any]) -> str:
    b = summary["bench"]
    what = f"c={b['concurrency']}" if b["mode"] == "closed" else f"rate={b['rate']:g}/s"
    jobs = summary["jobs"]
    line = (
        f"bench {what}: {jobs['ok']} ok, {jobs['failed']} failed, "
        f"{b['achieved_rps']:.1f} req/s, "
        f"{summary['throughput']['output_tokens_per_s']:.0f} out tok/s, "
        f"TTFT p50 {_pct(summary.get('ttft_ms'), 'p50')} ms, "
        f"latency p50 {_pct(summary.get('latency_ms'), 'p50')} ms"
    )
    d = b.get("dispatch")
    if d:
        line += f", late p99 {_pct(d['late_ms'], 'p99')} ms ({d['late_fraction'] * 100:.1f}% late)"
    return line


def sweep_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table, one row per run of a sweep."""
    head = (
        f"{'load':>10} {'ok':>7} {'fail':>5} {'req/s':>9} {'out tok/s':>10} "
        f"{'TTFT p50':>9} {'TTFT p99':>9} {'lat p50':>9} {'lat p99':>9} {'TPOT p50':>9} "
        f"{'late p99':>9} {'good/s':>8}"
    )
    rows = [head, "-" * len(head)]
    for s in summaries:
        b = s["bench"]
        load = f"c={b['concurrency']}" if b["mode"] == "closed" else f"r={b['rate']:g}"
        late = (b.get("dispatch") or {}).get("late_ms")
        good = s.get("goodput")
        good_rps = f"{good['requests_per_s']:.1f}" if good else "-"
        rows.append(
            f"{load:>10} {s['jobs']['ok']:>7} {s['jobs']['failed']:>5} "
            f"{b['achieved_rps']:>9.1f} {s['throughput']['output_tokens_per_s']:>10.0f} "
            f"{_pct(s.get('ttft_ms'), 'p50'):>9} {_pct(s.get('ttft_ms'), 'p99'):>9} "
            f"{_pct(s.get('latency_ms'), 'p50'):>9} {_pct(s.get('latency_ms'), 'p99'):>9} "
            f"{_pct(s.get('tpot_ms'), 'p50'):>9} {_pct(late, 'p99'):>9} "
            f"{good_rps:>8}"
        )
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``runner bench`` flags."""
    g = parser.add_argument_group("target")
    g.add_argument("-c", "--config", type=Path, help="RunConfig TOML (flags win over it)")
    g.add_argument("--base-url", help="server base URL (default: start the built-in mock here)")
    g.add_argument(
        "--provider",
        choices=PROVIDERS,
        help="wire protocol (default: the config's, else the mock's)",
    )
    g.add_argument(
        "--model", type=model_arg, help="model name sent in each request (default: the config's)"
    )
    g.add_argument("--api-key-env", help="environment variable holding the API key")
    g.add_argument("--timeout", type=float, help="per-request timeout, seconds")
    g.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream responses so TTFT and ITL are measured (default: on)",
    )
    g.add_argument("--mock-ttft-ms", type=float, help="built-in mock: base time to first token")
    g.add_argument("--mock-decode-ms", type=float, help="built-in mock: ms per output token")
    g.add_argument(
        "--mock-latency", choices=("model", "zero"), help="built-in mock: 'zero' = instant"
    )

    g = parser.add_argument_group("load")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--concurrency", type=int, help="closed loop: N requests always in flight")
    x.add_argument("--rate", type=float, help="open loop: mean arrivals per second")
    g.add_argument(
        "--arrival",
        choices=("poisson", "gamma", "constant"),
        default="poisson",
        help="open loop: inter-arrival distribution (default: poisson)",
    )
    g.add_argument(
        "--burstiness",
        type=float,
        default=1.0,
        help="gamma shape: <1 burstier, 1 = Poisson, >1 smoother",
    )
    g.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help="open loop: cap on requests out at once",
    )
    g.add_argument("--sweep", help="comma list of concurrencies (or of rates with --rate)")
    y = g.add_mutually_exclusive_group()
    y.add_argument(
        "--requests", type=int, help=f"measured requests per run (default {DEFAULT_REQUESTS})"
    )
    y.add_argument("--duration", type=float, help="issue requests for this many seconds per run")
    g.add_argument("--warmup", type=int, default=0, help="requests sent first and not measured")
    g.add_argument("--seed", type=int, default=0, help="seed for arrivals and prompts (default: 0)")

    g = parser.add_argument_group("workload")
    g.add_argument(
        "--prompt-tokens", type=int, default=256, help="synthetic prompt length (default: 256)"
    )
    g.add_argument(
        "--output-tokens", type=int, default=64, help="max_tokens of each request (default: 64)"
    )
    g.add_argument(
        "--ignore-eos",
        action="store_true",
        help="send ignore_eos/min_tokens so replies are exactly --output-tokens long",
    )
    g.add_argument(
        "--shared-prefix-tokens",
        type=int,
        default=0,
        help="K: each prompt starts with one of G shared K-token prefixes",
    )
    g.add_argument("--groups", type=int, default=1, help="G: number of shared prefixes")
    g.add_argument(
        "--cache-key", action="store_true", help="send prompt_cache_key per shared-prefix group"
    )
    g.add_argument("--jobs", type=Path, help="replay this jobs file instead of synthetic prompts")
    g.add_argument("--contexts", type=Path, help="contexts file for --jobs")

    g = parser.add_argument_group("output")
    g.add_argument(
        "--latency", type=file_arg, help="latency records (JSONL); per run .LABEL with --sweep"
    )
    g.add_argument("--summary", type=file_arg, help="summary JSON")
    add_slo_arguments(g)


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value:g}")


def _phases(ns: argparse.Namespace, config: RunConfig) -> list[Phase]:
    for name in ("concurrency", "rate", "max_in_flight", "requests", "duration", "burstiness"):
        _positive("--" + name.replace("_", "-"), getattr(ns, name))
    if ns.warmup < 0:
        raise ConfigError("--warmup must be >= 0")
    open_loop = ns.rate is not None
    values = parse_sweep(ns.sweep) if ns.sweep else None
    common: dict[str, Any] = {
        "arrival": ns.arrival,
        "burstiness": ns.burstiness,
        "max_in_flight": ns.max_in_flight,
        "duration_s": ns.duration,
        "seed": ns.seed,
    }
    if open_loop:
        rates = values or [ns.rate]
        return [Phase(mode="open", rate=r, **common) for r in rates]
    if values and any(v != int(v) for v in values):
        raise ConfigError("--sweep: concurrencies must be whole numbers (add --rate for rates)")
    levels = [int(v) for v in values] if values else [ns.concurrency or config.concurrency]
    return [Phase(mode="closed", concurrency=c, **common) for c in levels]


def _job_source(
    ns: argparse.Namespace, config: RunConfig
) -> Callable[[int | None, str], Iterator[Job]]:
    if ns.jobs is not None:
        from .jobs import contexts_for, read_jobs
        from .models import BadLine

        contexts = contexts_for(dataclasses.replace(config, contexts=ns.contexts))
        loaded: list[Job] = []
        bad = 0
        for item in read_jobs(ns.jobs, contexts=contexts, max_line_bytes=config.max_line_bytes):
            if isinstance(item, BadLine):
                bad += 1
            else:
                loaded.append(item)
        if bad:
            print(f"bench: skipped {bad} bad line(s) of {ns.jobs}", file=sys.stderr)
        if not loaded:
            raise InputError(f"{ns.jobs}: no usable jobs")
        # No count: once through the file (docs/BENCH.md), or cycled until --duration ends.
        once = None if ns.duration is not None else len(loaded)
        return lambda count, prefix: replay_jobs(
            loaded, once if count is None else count, id_prefix=prefix
        )

    for name in ("prompt_tokens", "output_tokens", "groups"):
        _positive("--" + name.replace("_", "-"), getattr(ns, name))
    if ns.shared_prefix_tokens < 0:
        raise ConfigError("--shared-prefix-tokens must be >= 0")

    def make(count: int | None, prefix: str) -> Iterator[Job]:
        return synthetic_jobs(
            count=count,
            prompt_tokens=ns.prompt_tokens,
            output_tokens=ns.output_tokens,
            # Warm-up prompts come from another seed so they never pre-cache measured ones.
            seed=ns.seed + (7919 if prefix else 0),
            ignore_eos=ns.ignore_eos,
            shared_prefix_tokens=ns.shared_prefix_tokens,
            groups=ns.groups,
            id_prefix=(prefix + "bench").rstrip("-") if prefix else "bench",
        )

    return make


def _check_paths(ns: argparse.Namespace, phases: Sequence[Phase]) -> None:
    """No output may be an input (the jobs, contexts or config file) or another output: the
    same rule and check as ``runner run`` (:func:`runner.outputs.check_outputs`, exit 2)."""
    from .outputs import check_outputs

    many = len(phases) > 1
    outputs = [
        ("the latency file (--latency)", path)
        for path in dict.fromkeys(_latency_path(ns.latency, p, many) for p in phases)
        if path is not None
    ]
    if ns.summary is not None:
        outputs.append(("the summary (--summary)", ns.summary))
    inputs = [
        ("the jobs file", ns.jobs),
        ("the contexts file", ns.contexts),
        ("the config file", ns.config),
    ]
    check_outputs(outputs, inputs)


def build_spec(ns: argparse.Namespace) -> BenchSpec:
    """Config file + flags -> a validated spec (raises ``ConfigError`` / ``InputError``)."""
    config = load_config(ns.config)
    mock = dict(config.mock)
    for flag, key in (
        ("mock_ttft_ms", "base_ms"),
        ("mock_decode_ms", "decode_ms_per_token"),
        ("mock_latency", "latency"),
    ):
        if getattr(ns, flag) is not None:
            mock[key] = getattr(ns, flag)
    config = config.with_overrides(
        provider=ns.provider,
        base_url=ns.base_url,
        model=ns.model,
        api_key_env=ns.api_key_env,
        timeout=ns.timeout,
        stream=ns.stream,
        mock=mock,
        max_attempts=1,
    )
    requests = ns.requests
    if requests is None and ns.duration is None:
        requests = DEFAULT_REQUESTS if ns.jobs is None else None
    phases = _phases(ns, config)
    _check_paths(ns, phases)
    return BenchSpec(
        config=config,
        phases=phases,
        make_jobs=_job_source(ns, config),
        requests=requests,
        warmup=ns.warmup,
        cache_key=ns.cache_key,
        latency=ns.latency,
        slo_ms=slo_from_args(ns),
    )


def main(ns: argparse.Namespace) -> int:
    """``runner bench``: 0 if every measured request succeeded, 1 if any failed, 2 on bad input."""
    try:
        spec = build_spec(ns)
        if getattr(ns, "argv", ()) is None:  # a process of its own (runner.cli.main() without argv)
            from .gcpolicy import gen0_threshold, tune

            # a pause of the collector is time the latency records would count as the server's
            tune(gen0_threshold(max(_width_cap(p) for p in spec.phases)))
        summaries = _run(spec, ns.base_url)
    except RunnerError as exc:
        print(f"runner bench: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        print(f"runner bench: {exc}", file=sys.stderr)
        return 2
    if len(summaries) == 1:
        print(render_summary(summaries[0]), file=sys.stderr)
        doc: Any = summaries[0]
    else:
        doc = {"sweep": summaries}
    print(sweep_table(summaries), file=sys.stderr)
    if ns.summary is not None:
        write_summary(ns.summary, doc)
    return 0 if all(s["jobs"]["failed"] == 0 for s in summaries) else 1


def _run(spec: BenchSpec, base_url: str | None) -> list[dict[str, Any]]:
    return event_loop_run(run_bench(spec, base_url=base_url))
