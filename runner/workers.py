"""``runner run --workers N``: all cores of one machine, one run.

The parent starts N child processes of the same command, each ``--shard K/N`` with its own
event loop (see :mod:`runner.shards`), shows one progress view over all of them, and merges
their outputs into the run's usual results, latency and summary files when all have finished
(:mod:`runner.merge`). Running the same command again resumes every shard, then merges again.

**One limit.** With ``redis_url`` the children share the key's budget through Redis like any
other processes. Without it they share it through a small state file next to the results,
``R.limits.json``, which each child updates under ``flock`` once per lease
(:class:`runner.redis_limits.FileStore`, the same GCRA and lease rules as the Redis store), so
the configured and learned RPM/TPM, and any 429 pause, stay global to the host.

Signals: SIGINT/SIGTERM/SIGHUP are passed on to every child (each drains and writes its
summary); the parent then exits with the children's worst code and does not merge. Each child
has a process group of its own, so a signal sent to the parent's group (Ctrl-C, Airflow's or
a shell's ``kill -- -PGID``) reaches it once, from the parent: twice, the second was the
"stop at once" that throws the answers in flight away.

**Cheap children.** On Linux a worker is a ``fork`` of the parent, which has already imported
the run's modules (aiohttp, the providers, the engine: about 0.4 s of CPU per interpreter here),
so N workers cost one start-up, not N + 1; the child runs the same command line through
:func:`runner.cli.main` and leaves with ``os._exit``. Elsewhere (or if the parent has threads)
a worker is a new ``python -m runner`` process. The merged summary's ``workers`` section gives
the CPU seconds of the parent, of each worker and of the merge, where a run's time went.
"""

from __future__ import annotations

import gc
import glob
import os
import re
import resource
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from .config import RunConfig
from .errors import ConfigError
from .merge import MERGED_SUFFIX, merge, shard_finished
from .pipeline import LiveStats
from .progress import make_progress
from .report import render_summary
from .shards import ShardSpec, shard_path
from .sinks import default_paths
from .stopsignals import not_ignored
from .totals import add_records

__all__ = ["run_workers"]

POLL_S = 0.2
_FORK = sys.platform == "linux"  # fork without exec is only safe where it is the norm


class _Child:
    """One worker process: its pid, and once reaped its exit code and CPU seconds."""

    __slots__ = ("code", "cpu_s", "forked", "pid")

    def __init__(self, pid: int, *, forked: bool) -> None:
        self.pid = pid
        self.forked = forked
        self.code: int | None = None
        self.cpu_s = 0.0

    def poll(self, flags: int = os.WNOHANG) -> int | None:
        if self.code is None:
            pid, status, usage = os.wait4(self.pid, flags)
            if pid:
                self.code = os.waitstatus_to_exitcode(status)
                self.cpu_s = usage.ru_utime + usage.ru_stime
        return self.code

    def wait(self) -> int | None:
        return self.poll(0)


def _start(args: list[str]) -> _Child:
    """A worker running ``runner ARGS``: forked where that is safe, else a new interpreter."""
    if _FORK and threading.active_count() == 1:
        sys.stdout.flush()
        sys.stderr.flush()
        gc.freeze()  # the parent's objects stay out of the child's collector (and shared)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            os.setpgid(0, 0)  # signals reach it once, forwarded: see _supervise
            _die_with(parent)
            _child(args)
        return _Child(pid, forked=True)
    argv = [sys.executable, "-m", "runner", *args]
    return _Child(os.posix_spawn(sys.executable, argv, os.environ, setpgroup=0), forked=False)


def _die_with(parent: int) -> None:  # pragma: no cover - runs in the forked worker
    """SIGTERM this worker when the parent dies (even by SIGKILL): it drains and stops like a
    forwarded SIGTERM, so no worker runs on unsupervised and a re-run resumes every shard."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _child(args: list[str]) -> None:  # pragma: no cover - runs in the forked worker
    code = 1
    try:
        # The signal handlers are the interpreter's own: the parent forwards signals only
        # after every worker is started.
        from .cli import main

        code = main(args)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - the worker must reach os._exit whatever happened
        traceback.print_exc()  # as an uncaught exception of `python -m runner` would
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Records:
    """Feeds the records a worker appends to its latency file (found through its manifest) to
    ``builder``, so the parent's progress shows the run's tokens, cache hits and errors."""

    __slots__ = ("builder", "offset", "path", "rest", "results")

    def __init__(self, results: Path, builder: Any) -> None:
        self.results = results
        self.builder = builder
        self.path: Path | None = None
        self.offset = 0
        self.rest = b""

    def poll(self) -> None:
        if self.path is None:
            from .shards import read_manifest

            try:
                self.path = self.results.parent / read_manifest(self.results)["latency"]
            except (ConfigError, KeyError):
                return
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.rest + data
        cut = data.rfind(b"\n") + 1
        self.rest = data[cut:]  # a line being written: read whole at the next poll
        add_records(self.builder, data[:cut].splitlines())


class _Tail:
    """Counts the lines a child has appended to its results file (one read per poll)."""

    __slots__ = ("lines", "offset", "path")

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def poll(self) -> int:
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self.offset:  # truncated by a --no-resume child
                    self.offset = self.lines = 0
                fh.seek(self.offset)
                data = fh.read(size - self.offset)
        except FileNotFoundError:
            return self.lines
        self.offset += len(data)
        self.lines += data.count(b"\n")
        return self.lines


def run_workers(
    jobs: Path, config: RunConfig, argv: Sequence[str], *, config_path: Path | None = None
) -> int:
    """Run ``argv`` (a ``runner run`` command line) as ``config.workers`` shard processes."""
    n = config.workers
    if config.shard is not None or config.shard_count is not None:
        raise ConfigError("--workers starts its own shards: drop --shard/--shard-count")
    shares = concurrency_shares(config.concurrency, n)
    from .api import _summary_path

    # The merge writes these paths: none may be an input, before any worker starts.
    _summary_path(config, jobs, own_sink=True, config_path=config_path)
    to_stdout = config.summary_to_stdout
    # With --summary -, each worker still writes its summary file (the merge reads it to know
    # the shard finished); the merged summary goes to a file and to standard output.
    results, latency, summary_path = default_paths(
        jobs, replace(config, summary=None) if to_stdout else config
    )
    marker = results.with_name(results.name + MERGED_SUFFIX)
    if config.resume and results.exists() and results.stat().st_size and not marker.exists():
        raise ConfigError(
            f"{results}: holds the results of a run without --workers; --workers merges its "
            "shards into that file: write elsewhere with -o, run without --workers to resume, "
            "or replace it with --no-resume"
        )
    if config.resume:
        _refuse_other_counts(results, n)
    from .jobs import contexts_for

    contexts_for(config)  # a bad contexts file is one error before any worker, not one each
    extra: list[str] = ["--summary", str(summary_path)] if to_stdout else []
    if config.log_format == "text":
        extra.append("--quiet")  # one summary table (the merged one), not one per worker
    extra.append("--as-worker")  # under -q the parent says exit 1 and a stop, once
    if not config.redis_url:
        extra += ["--limit-file", str(results.with_name(results.name + ".limits.json"))]
    if config.max_cost is not None:
        # One budget over the run: each worker guards its share (its worst case never crosses
        # it), so the workers together never spend more than --max-cost.
        extra += ["--max-cost", repr(config.max_cost / n)]
    specs = [ShardSpec(k, n) for k in range(n)]
    parts = [shard_path(results, s) for s in specs]
    # The run's own output lock, as a plain run on the same output takes it: either is refused
    # (exit 2) while the other writes. The workers lock their shards' outputs themselves.
    from .outputs import lock_of
    from .sinks import acquire_lock, release_lock

    results.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_of(results)
    lock_fd = acquire_lock(lock, results)
    try:
        return _run_locked(
            jobs,
            config,
            argv,
            results,
            specs,
            parts,
            shares,
            extra,
            summary_path,
            latency,
            to_stdout,
        )
    finally:
        release_lock(lock, lock_fd)


def _own_earlier_merge(marker: Path, parts: Sequence[Path]) -> bool:
    """Whether ``marker`` says its results are a merge of exactly these shard files: the
    shards have just resumed from those files (an input that only grew, jobs appended), so
    that merge is this run's own earlier output and the new merge replaces it."""
    try:
        was = orjson.loads(marker.read_bytes()).get("parts")
    except (OSError, orjson.JSONDecodeError, AttributeError):
        return False
    if not isinstance(was, list) or not all(isinstance(p, str) for p in was):
        return False
    return sorted(Path(p).resolve() for p in was) == sorted(p.resolve() for p in parts)


def _run_locked(
    jobs: Path,
    config: RunConfig,
    argv: Sequence[str],
    results: Path,
    specs: list[ShardSpec],
    parts: list[Path],
    shares: list[int],
    extra: list[str],
    summary_path: Path,
    latency: Path,
    to_stdout: bool,
) -> int:
    n = config.workers
    if config.resume:
        # An edited input (or another model) is refused here, once, exit 2 before any worker
        # starts: every worker would refuse its shard with the same words. One shard's outputs
        # say it for all; they were written from the same input.
        from .sinks import check_resume

        for part in parts:
            if part.exists():
                check_resume(part, jobs_path=jobs, contexts=config.contexts, model=config.model)
                break
    common = ["--workers", "1", "--progress", "off", *extra]
    groups = group_shares(config.max_active_groups, n)
    procs = []
    for spec, c, g in zip(specs, shares, groups, strict=True):
        # The last --concurrency / --max-active-groups on the command line wins: this share.
        own = ["--shard", str(spec), "--concurrency", str(c), "--max-active-groups", str(g)]
        procs.append(_start([*argv, *common, *own]))
    tails = [_Tail(p) for p in parts]
    started = time.time()
    code = _supervise(procs, tails, jobs, config, names=[str(s) for s in specs])
    # A worker that raised (a defect, exit 1 as any uncaught exception) left its shard unfinished:
    # no merge (it would refuse the unfinished shard with exit 2), and the re-run resumes it.
    crashed = [
        s
        for s, p, part in zip(specs, procs, parts, strict=True)
        if p.code == 1 and not shard_finished(part)
    ]
    if code not in (0, 1) or crashed:
        again = "; run the same command again to resume" if code in (75, 1) or code > 128 else ""
        said = f"a worker stopped with exit code {code}; not merging{again}"
        if crashed and code in (0, 1):
            which = ", ".join(str(s) for s in crashed)
            said = (
                f"the worker of shard {which} stopped with exit code 1 before finishing "
                f"(its error is above); not merging{again}"
            )
            code = 1
        _say(config, said)
        _log_unmerged_end(config, code, [shard_path(summary_path, s) for s in specs], started)
        return code
    cpu_parent = _cpu_self()

    def finish(summary: dict[str, Any], shards: Sequence[dict[str, Any] | None]) -> bool:
        summary["workers"] = {
            "processes": n,
            "forked": all(p.forked for p in procs),
            "cpu_s": {
                "parent": round(cpu_parent, 3),  # start-up, config, supervision
                "workers": [round(p.cpu_s, 3) for p in procs],
                "merge": round(_cpu_self() - cpu_parent, 3),
            },
        }
        summary["exit_code"] = 1 if summary["jobs"]["failed"] else code
        _this_run(summary, shards)  # the shards' summaries as the merge read them
        # A re-run that sent nothing keeps the summary of the run that did the work, as a
        # plain run does (runner/noop.py); it is written when it does not describe the output.
        from .noop import keep_summary

        return not keep_summary(summary_path, summary, to_stdout=to_stdout)

    marker = results.with_name(results.name + MERGED_SUFFIX)
    rep = merge(
        results,
        parts,
        # An earlier merge of these same shards; or --no-resume, which starts the output afresh
        # as a plain run's does (the workers had sent every job, then the merge refused, exit 2).
        force=not config.resume or _own_earlier_merge(marker, parts),
        price_of=config.price,  # each job at its own model's price, as a single run does
        paths=(latency, summary_path),
        order_by=jobs if config.order == "input" else None,
        finish=finish,  # the merged summary is written once, with the workers section
        distinct_ids=True,  # N shards of one input: each worker's reader claimed every id
    )
    code = int(rep.summary["exit_code"])
    if to_stdout:
        from .observe import write_summary_to

        write_summary_to(Path("-"), rep.summary, one_line=config.log_format == "json")
    if config.log_format == "json":
        from .logs import EventLog

        log = EventLog(sys.stderr, quiet=config.quiet)
        log.emit("merged", workers=n, results=str(results), summary=str(summary_path))
        # the run's end, over all the workers (each worker logs its own)
        log.run_end(code, rep.summary.get("stopped"), rep.summary, workers=n)
        log.close()
    elif not config.quiet:
        print(render_summary(rep.summary, title=f"run summary ({n} workers)"), file=sys.stderr)
        print(
            f"runner: merged {n} worker shards into {results} and {summary_path}", file=sys.stderr
        )
    elif code == 1:  # -q: a run whose jobs failed says so, as a single process does
        from .report import failed_line

        print(f"runner: error: {failed_line(rep.summary)}", file=sys.stderr)
    return code


def _this_run(summary: dict[str, Any], shards: Sequence[dict[str, Any] | None]) -> None:
    """This invocation beside the whole output's totals, as a single-process resume reports
    it (:func:`runner.totals.whole_output_summary`): ``this_run`` sums the workers' own
    ``this_run``; ``jobs.skipped_resumed``, ``wall_s`` and the per-second rates describe this
    invocation (the workers ran side by side: the longest one's wall), not the span from the
    first run's earliest job to the last answer.

    ``shards``: the workers' summaries as the merge read them (one read per file, not two);
    if any is unreadable or has no ``this_run``, the summary is left as the merge made it."""
    from .stats import rates, summed_cost
    from .totals import this_run_of

    runs = []
    for ps in shards:
        if not isinstance(ps, dict) or not isinstance(ps.get("this_run"), dict):
            return
        runs.append(ps["this_run"])
    if not runs:
        return
    tr = this_run_of(summary)  # the same keys, summed over the workers below
    tr["wall_s"] = wall = max(float(r.get("wall_s") or 0.0) for r in runs)
    tr.update(_summed(runs, ("ok", "failed", "skipped_resumed")))
    tr["by_error"] = _summed_errors(runs)
    tr["tokens"] = _summed([r.get("tokens") or {} for r in runs], summary["tokens"])
    tr["cost"] = summed_cost(r.get("cost") for r in runs)
    summary["this_run"] = tr
    summary["jobs"]["skipped_resumed"] = tr["skipped_resumed"]

    tokens = tr["tokens"]
    rate = rates(wall, tr["ok"], tr["failed"], tokens.get("prompt", 0), tokens.get("completion", 0))
    summary["wall_s"] = rate["wall_s"]
    summary["requests_per_s"] = rate["requests_per_s"]
    summary["throughput"] = {**summary.get("throughput", {}), **rate["throughput"]}
    summary.pop("wall", None)  # the merge's busy time of the whole output: not this wall


#: Workers per CPU past which ``--workers N`` is refused (exit 2). One worker's event loop
#: already keeps its whole share of ``--concurrency`` in flight on one core, so workers past
#: the CPU count add processes (memory, shard files, a longer merge), never throughput; at
#: more than four per CPU each gets under a quarter of a core: a command copied from a larger
#: machine, or the number meant for ``--concurrency``.
MAX_WORKERS_PER_CPU = 4


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask: a container's or ``taskset``'s
    share), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def check_worker_count(n: int, cpus: int) -> str | None:
    """A warning when ``n`` workers are more than ``cpus``, else None.

    :raises ConfigError: ``n`` is above :data:`MAX_WORKERS_PER_CPU` per CPU.
    """
    if n > MAX_WORKERS_PER_CPU * cpus:
        raise ConfigError(
            f"--workers {n}: at most {MAX_WORKERS_PER_CPU} per CPU ({cpus} CPU"
            f"{'s' * (cpus != 1)} here, so {MAX_WORKERS_PER_CPU * cpus}); each worker would "
            "get under a quarter of a core, and one already keeps its share of --concurrency "
            f"in flight: use --workers {cpus} (--concurrency sets the requests in flight)"
        )
    if n > cpus:
        return (
            f"--workers {n} is more than the {cpus} CPU{'s' * (cpus != 1)} this process may "
            "use: the workers take turns on them, adding processes but not throughput"
        )
    return None


def concurrency_shares(concurrency: int, n: int) -> list[int]:
    """Each worker's share of ``--concurrency``: the run's requests in flight stay at most the
    configured number in total, as in one process (a provider or server that allows C
    concurrent requests is not sent N x C). A remainder goes one each to the first workers."""
    if concurrency < n:
        raise ConfigError(
            f"--workers {n} with --concurrency {concurrency}: the workers share the "
            f"concurrency and each needs at least one request in flight: use --concurrency "
            f">= {n} or --workers <= {concurrency}"
        )
    return [concurrency // n + (k < concurrency % n) for k in range(n)]


def group_shares(groups: int, n: int) -> list[int]:
    """Each worker's share of ``max_active_groups``: the shards hold different groups, so the
    groups open at the provider at once stay at most the configured number over all workers,
    as in one process (a bounded provider cache is not asked to hold N x G prefixes). Each
    worker opens at least one, so with fewer groups than workers the run may open N."""
    return [max(1, groups // n + (k < groups % n)) for k in range(n)]


def _refuse_other_counts(results: Path, n: int) -> None:
    """Shards of the same output with another N hold paid answers this run could not resume
    from (a job's shard depends on N): starting N new shards would send every job again."""
    probe = shard_path(results, ShardSpec(0, 1)).name
    head, _, tail = probe.partition(ShardSpec(0, 1).tag)
    found = re.compile(re.escape(head) + r"shard-\d+-of-(\d+)" + re.escape(tail) + "$")
    counts = set()
    for p in results.parent.glob(glob.escape(head) + "shard-*-of-*" + glob.escape(tail)):
        m = found.match(p.name)
        if m and int(m.group(1)) != n and p.stat().st_size:
            counts.add(int(m.group(1)))
    if counts:
        other = min(counts)
        raise ConfigError(
            f"{results}: its shards were written by --workers {other}; run with --workers "
            f"{other} to resume them, or start afresh with --no-resume (every job is sent again)"
        )


def _log_unmerged_end(config: RunConfig, code: int, summaries: list[Path], since: float) -> None:
    """Under ``--log-format json``, the ``run_end`` (``workers: N``) of a run whose workers did
    not all finish (a signal, exit 75, a guard), so that every invocation ends with one, as
    after a merge: the figures are the sums of the summaries the workers wrote in this
    invocation (a worker killed before writing its own is left out)."""
    if config.log_format != "json":
        return
    found: list[dict[str, Any]] = []
    for path in summaries:
        try:
            if path.stat().st_mtime < since:
                continue  # an earlier invocation's
            found.append(orjson.loads(path.read_bytes()))
        except (OSError, orjson.JSONDecodeError):
            continue
    jobs = [s["jobs"] for s in found]
    tokens = [s.get("tokens") or {} for s in found]
    summary = {
        "jobs": {
            **_summed(jobs, ("total", "ok", "failed", "skipped_resumed")),
            "by_error": _summed_errors(jobs),
        },
        "not_sent": sum(int(s.get("not_sent") or 0) for s in found),
        "tokens": _summed(tokens, dict.fromkeys(k for t in tokens for k in t)),
    }
    stopped = next((s["stopped"] for s in found if s.get("stopped")), None)
    from .logs import EventLog

    log = EventLog(sys.stderr, quiet=config.quiet)
    log.run_end(code, stopped, summary, workers=config.workers)
    log.close()


def _summed(sections: Sequence[Mapping[str, Any]], keys: Iterable[str]) -> dict[str, int]:
    """``keys`` of the workers' summary sections (``jobs``, ``this_run``, ``tokens``), each
    summed over them; a key a section lacks counts 0."""
    return {k: sum(int(s.get(k) or 0) for s in sections) for k in keys}


def _summed_errors(sections: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """The sections' ``by_error`` counts added up, by error code."""
    by_error: dict[str, int] = {}
    for s in sections:
        for err, n in (s.get("by_error") or {}).items():
            by_error[err] = by_error.get(err, 0) + int(n)
    return dict(sorted(by_error.items()))


def _say(config: RunConfig, said: str) -> None:
    """The parent's word on its workers, on stderr: under ``--log-format json`` an error event
    (every stderr line one JSON object, as the workers' own), else a ``runner:`` line."""
    if config.log_format == "json":
        from .logs import note_line

        note_line(said, error=True, quiet=config.quiet)
    else:
        print(f"runner: {said}", file=sys.stderr)


def _exit_code(p: _Child) -> int:
    """A reaped worker's exit code as a shell reports it: a worker killed by a signal (the OOM
    killer's SIGKILL) is 128 + the signal, not the negative number waitstatus gives."""
    return 1 if p.code is None else 128 - p.code if p.code < 0 else p.code


def _wait_any(procs: list[_Child]) -> None:
    """Block until some worker has ended (left for :meth:`_Child.poll` to reap)."""
    alive = [p for p in procs if p.poll() is None]
    if not alive:
        return
    waitid = getattr(os, "waitid", None)
    if waitid is None:  # pragma: no cover - no waitid on this platform: in order, as before
        alive[0].wait()
        return
    try:
        # WNOWAIT: the worker stays a zombie until poll() reaps it with its CPU time (wait4)
        info = waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return
    if info is None or all(info.si_pid != p.pid for p in alive):
        time.sleep(POLL_S)  # a child of the host's, not a worker: do not spin on it


def _tell_lost(
    procs: list[_Child], told: set[int], names: Sequence[str], config: RunConfig
) -> None:
    """Say at once that a worker died (not after the others finish their shards, which
    may be an hour later): nothing will be merged, and the same command resumes."""
    for i, p in enumerate(procs):
        if i in told or p.poll() is None:
            continue
        told.add(i)
        code = _exit_code(p)
        if code in (0, 1):
            continue  # finished, or some jobs failed: the merge decides
        name = f"shard {names[i]}" if i < len(names) else f"pid {p.pid}"
        how = (
            f"was killed by signal {code - 128} (exit {code})"
            if code > 128
            else f"stopped with exit {code}"
        )
        left = sum(q.poll() is None for q in procs)
        said = (
            f"the worker of {name} {how}; the {left} other worker(s) finish their "
            "shards, then nothing is merged: run the same command again to resume"
            if left
            else f"the worker of {name} {how}"
        )
        _say(config, said)


def _supervise(
    procs: list[_Child],
    tails: list[_Tail],
    jobs: Path,
    config: RunConfig,
    *,
    names: Sequence[str] = (),
) -> int:
    stop = {"n": 0}
    told: set[int] = set()
    # As a plain run: no text progress under -q or among JSON events (Observer.text_display).
    text = config.log_format == "text" and not config.quiet

    def forward(signum: int, _frame: object) -> None:
        stop["n"] += 1
        if stop["n"] == 1 and text:
            # The workers run with -q in text mode: the stop is said once, here, as a plain
            # run says it (JSON workers log their own "stopping"). os.write: a print here could
            # land inside the progress display's own write to stderr.
            name = signal.Signals(signum).name
            again = "Ctrl-C again" if signum == signal.SIGINT else f"a second {name}"
            os.write(2, (
                f"runner: stopping after {name}: the workers finish their requests in flight "
                f"(at most {config.drain_s:g} s); {again} stops at once, re-sending them on "
                "the next run\n"
            ).encode())  # fmt: skip
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signum)

    # a signal ignored at the start (nohup's SIGHUP) stays ignored: runner/stopsignals.py
    stops = not_ignored((signal.SIGINT, signal.SIGTERM, signal.SIGHUP))
    old = {s: signal.signal(s, forward) for s in stops}
    display = make_progress(config.progress, interval_s=config.log_interval_s) if text else None
    stats = LiveStats()
    records: list[_Records] = []
    if display is not None:
        from .api import count_lines
        from .stats import SummaryBuilder

        stats.total = count_lines(jobs)
        stats.started = time.perf_counter()
        stats.tokens_from = builder = SummaryBuilder(None)
        records = [_Records(t.path, builder) for t in tails]

    def show() -> None:  # only with a display
        assert display is not None
        stats.done = sum(t.poll() for t in tails)
        for r in records:
            r.poll()
        if stats.tokens_from is not None:
            stats.failed = stats.tokens_from.failed
        stats.workers = sum(p.poll() is None for p in procs)
        display.tick(stats)  # after the last worker: the last figures, a log line if one is due

    try:
        if display is None:  # nothing to show: wake when a worker ends, not on a timer
            while any(p.poll() is None for p in procs):
                _wait_any(procs)  # a signal runs forward() and the wait goes on (PEP 475)
                if not stop["n"]:
                    _tell_lost(procs, told, names, config)
        while any(p.poll() is None for p in procs):
            time.sleep(POLL_S)
            if not stop["n"]:
                _tell_lost(procs, told, names, config)
            if display is not None:
                show()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if display is not None:
            show()
            display.close(stats)
    codes = [_exit_code(p) for p in procs]  # all reaped by the loop
    if stop["n"] and any(c not in (0, 1) for c in codes):
        return next(c for c in codes if c not in (0, 1))
    bad = [c for c in codes if c not in (0, 1)]
    return max(bad) if bad else max(codes)
