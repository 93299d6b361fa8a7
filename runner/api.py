"""The embeddable entry points: ``await runner.run(jobs, config)`` and ``await runner.batch(...)``.

The CLI is a thin layer over :func:`run`, so a scheduler task or a notebook gets exactly the
behaviour of ``runner run`` without shelling out. :func:`batch` runs jobs held in memory on the
same engine and scheduling and returns their results instead of writing files.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import loading
from ._records import Record
from .config import RunConfig
from .errors import (
    TRANSIENT_ERROR_CODES,
    AuthError,
    ConfigError,
    InputError,
    SinkError,
    Unavailable,
)
from .jobs import contexts_for, count_jobs, count_lines, read_jobs
from .limits import RateController
from .models import BadLine, Context, Job, LatencyRecord
from .observe import Observer, write_summary_to
from .outputs import OutputPlan, check_outputs, run_plan
from .partstate import remove_state, write_state
from .pipeline import Engine, Limiter, LiveStats, RunOutcome, Sink
from .preflight import check_prices
from .progress import make_progress
from .providers import HTTPBackend, open_backend
from .results import ResultLine
from .retry import RetryPolicy
from .runtime import endpoint
from .sinks import MetaCacheJournal, Outputs, open_outputs
from .stopsignals import not_ignored
from .totals import describe_run, iso_utc, this_run_of, whole_output
from .urls import public_url

if TYPE_CHECKING:  # imported where used: a plain run needs neither before its first request
    from .explicit_cache import ExplicitCaches
    from .shards import ShardPicker, ShardSpec

__all__ = ["BatchResult", "batch", "count_lines", "run"]


async def run(
    jobs: Iterable[Job | BadLine] | Path | str,
    config: RunConfig,
    *,
    sink: Sink | None = None,
    handle_signals: bool = False,
    on_tick: Callable[[LiveStats], None] | None = None,
    config_path: Path | None = None,
    meter_provider: Any = None,
    policy: RetryPolicy | None = None,
    on_start: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run a batch and return its outcome (summary, exit code, why it stopped early).

    :param jobs: a JSONL path, or an iterable of :class:`~runner.models.Job` (and
        :class:`~runner.models.BadLine`) such as :func:`runner.jobs.read_jobs` yields.
    :param config: the run configuration; outputs default to files next to the jobs file.
    :param sink: where results go; by default the results/latency files of the config, opened
        for resume (done jobs are skipped).
    :param handle_signals: install SIGINT/SIGTERM handlers that drain and stop (the CLI does).
    :param on_tick: called about five times a second with live counters.
    :param config_path: the config file the config came from, so that no output may overwrite it.
    :param meter_provider: an OpenTelemetry ``MeterProvider`` (the host's own) to record the
        GenAI metrics into, instead of the OTLP exporter ``otel_endpoint`` would set up.
    :param policy: retry and backoff policy; by default ``RetryPolicy(max_attempts=...)`` from
        the config (tests pass one with millisecond backoff).
    :param on_start: called once every check below has passed, just before the first job is
        read: the CLI says there which provider answers, so that an error that stops the run
        before it starts is the only message.

    Before anything is opened for writing the run checks every output path (none may be an
    input or another output, all must be writable), the inputs, the prices ``max_cost`` needs
    and the provider (probe); only then are outputs locked, checked for resume and truncated.

    A progress display is shown only when ``config.progress`` asks for one (``bar``/``log``),
    or for ``auto`` when ``handle_signals`` says this is the command line: a library call is
    quiet by default.
    """
    if config.via == "batch":  # the provider's batch API (runner/batchapi/)
        return await _run_batch(jobs, config, sink, handle_signals, config_path, on_start)
    return await _run_direct(
        jobs,
        config,
        sink=sink,
        handle_signals=handle_signals,
        on_tick=on_tick,
        config_path=config_path,
        meter_provider=meter_provider,
        policy=policy,
        on_start=on_start or _nothing,
    )


def _nothing() -> None:
    pass


async def _run_direct(
    jobs: Iterable[Job | BadLine] | Path | str,
    config: RunConfig,
    *,
    sink: Sink | None,
    handle_signals: bool,
    on_tick: Callable[[LiveStats], None] | None,
    config_path: Path | None,
    meter_provider: Any,
    policy: RetryPolicy | None = None,
    on_start: Callable[[], None] = _nothing,
) -> RunOutcome:
    started_at = time.time()
    jobs_path: Path | None = None
    items: Iterable[Job | BadLine]
    shard: ShardSpec | None = None
    also_stdout = config.summary_to_stdout
    if isinstance(jobs, str | Path):
        jobs_path = Path(jobs)
        config, shard = _shard_setup(config, jobs_path)
    also_stdout = also_stdout and shard is not None  # a shard's summary file plus stdout
    # Every output path is decided and checked before anything is opened for writing.
    plan = run_plan(config, jobs_path, own_sink=sink is None)  # the one plan of this run
    summary_path = _summary_path(
        config, jobs_path, own_sink=sink is None, config_path=config_path, plan=plan
    )
    _refuse_while_batches_run(jobs, config, plan)
    if jobs_path is not None:
        if jobs_path.is_dir():
            raise InputError(f"{jobs_path}: is a directory, not a jobs file")
        contexts = contexts_for(config)
        pick = None if shard is None else _picker(shard, contexts)
        items = read_jobs(
            jobs_path,
            contexts=contexts,
            max_line_bytes=config.max_line_bytes,
            keep=None if pick is None else pick.maybe,  # another shard's jobs are never built
        )
        items = items if pick is None else pick.filter(items)
        check_prices(config, jobs_path)
    else:
        assert not isinstance(jobs, str | Path)
        items = jobs
    api_key = config.api_key()
    # Logs, metrics and OpenTelemetry for operators: see runner/observe.py.
    observer = Observer(config, jobs_path=jobs_path, meter_provider=meter_provider)
    display = None
    wants = config.progress != "auto" or handle_signals
    if on_tick is None and jobs_path is not None and wants and observer.text_display:
        display = make_progress(config.progress, interval_s=config.log_interval_s)
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(observer.close)
        base_url = await stack.enter_async_context(endpoint(config))
        backend = await stack.enter_async_context(
            open_backend(config, base_url=base_url, api_key=api_key)
        )
        if config.base_url:
            await _preflight(backend, base_url, config if wants else replace(config, quiet=True))
        await _check_redis(config, base_url=base_url, api_key=api_key)  # before any output
        outputs = None
        fresh_state = False  # write S.state for the merge (runner/partstate.py)
        if sink is None:
            # Only now, with every pre-flight check passed, may an output be truncated.
            outputs = open_outputs(config, jobs_path=jobs_path, model=config.model, plan=plan)
            stack.callback(outputs.close)
            sink = outputs.sink  # the files, or the --order input wrapper over them
            _shard_manifest(shard, outputs, jobs_path, summary_path, config)
            fresh_state = _fresh_state(shard, outputs, summary_path)
        explicit = await _explicit_caches(config, backend, plan)
        sink = observer.wrap_sink(sink)
        limiter = await _limiter(stack, config, base_url=base_url, api_key=api_key)
        engine = Engine(
            config,
            backend=backend,
            sink=sink,
            limiter=limiter,
            jobs_name=str(jobs_path) if jobs_path else "jobs",
            on_tick=observer.chain(on_tick or (display.tick if display else None)),
            explicit=explicit,
            policy=policy,
        )
        if (display is not None or observer.active) and jobs_path is not None and shard is None:
            try:
                engine.stats.total = count_lines(jobs_path)
            except OSError as exc:
                raise InputError(f"{jobs_path}: cannot read: {exc.strerror}") from exc
        on_start()
        observer.start(engine, output=outputs.results_path if outputs is not None else None)
        if handle_signals:
            _install_signals(engine, display.note if display is not None else observer.stopping)
        try:
            outcome = await engine.run(items)
        finally:
            if explicit is not None:
                # Whatever ended the run (done, a signal, a guard, a defect): leave no cache.
                await explicit.shutdown()
            if display is not None:
                display.close(engine.stats)
            if handle_signals:
                _remove_signals()
        _add_cache_cost(outcome.summary, explicit, config)
        summary = outcome.summary
        whole = None  # the builder of the whole output's records, for the metrics' histograms
        if outputs is not None and outputs.skipped:
            outputs.finish()  # under --order input a resume also sorts R here, before the summary
            summary, whole = whole_output(outputs.latency_path, config, summary)
            # Only this invocation's caches are known: earlier ones' storage is not added.
            _add_cache_cost(summary, explicit, config)
        _count_not_sent(summary, jobs_path, config, shard, own_outputs=outputs is not None)
        outcome = _finish_outcome(
            outcome, summary, config, base_url=config.base_url, started_at=started_at
        )
        _scaling_summary(outcome.summary, shard, limiter)
        outcome = observer.finish(outcome)  # exit 75, the run_end event
        if summary_path is not None:
            try:
                _write_summary(summary_path, outcome.summary, outputs, shard, config)
                if outputs is not None and fresh_state:
                    write_state(summary_path, engine.accounts.summary, outputs.latency_path)
                if also_stdout:
                    write_summary_to(Path("-"), outcome.summary, one_line=_one_line(config))
            except SinkError as exc:
                # The figures are not lost: the caller still gets (and the CLI prints) them.
                outcome.summary["summary_error"] = str(exc)
                outcome = replace(outcome, exit_code=outcome.exit_code or exc.exit_code)
        # The final metrics after the summary: they say what the file on disk says.
        summary_file = summary_path is not None and str(summary_path) != "-"
        observer.export(outcome, summary_file=summary_file, whole=whole)
        return outcome


def _count_not_sent(
    summary: dict[str, Any],
    jobs_path: Path | None,
    config: RunConfig,
    shard: ShardSpec | None,
    *,
    own_outputs: bool,
) -> None:
    """Set ``not_sent`` of a stopped run's summary: the jobs of the file left without a result.

    The engine only knows the lines it read, and it reads a window ahead (16,384 jobs): a
    run of 20,000 jobs stopped after 16 said 16,376 not sent, and so did its summary file,
    ``run_end`` event and ``runner_jobs{state="pending"}``. Every job line gets exactly one
    result line, so the lines left are the file's job lines less the output's results (the
    summary's ``jobs.total``, every job of the output after a resume). A shard's lines (and
    a ``--workers`` worker's, a shard) are known only by parsing the whole file as the run
    does: done here, for a stopped run only, never on the way of one that finishes.
    """
    if not summary.get("stopped") or jobs_path is None or not own_outputs:
        return
    try:
        if shard is None:
            lines = count_jobs(jobs_path, config.max_line_bytes)
        else:
            from .shards import count_shard_jobs

            contexts = contexts_for(config)
            lines = count_shard_jobs(jobs_path, shard, contexts, config.max_line_bytes)
    except (InputError, OSError):
        return  # the file went away since: the lines read are all that is known
    left = lines - int(summary["jobs"]["total"])
    summary["not_sent"] = max(int(summary.get("not_sent") or 0), left)


def _one_line(config: RunConfig) -> bool:
    """``--summary -`` on one line among JSON log lines (:func:`write_summary_to`)."""
    return config.log_format == "json"


def _write_summary(
    path: Path,
    summary: dict[str, Any],
    outputs: Outputs | None,
    shard: ShardSpec | None,
    config: RunConfig,
) -> None:
    """Write the summary, except over the one of the run that did the work from a re-run that
    found every job done and sent nothing (runner/noop.py); the caller still gets this
    invocation's figures. A shard's is always written: the merge reads it as this
    invocation's record (its ``this_run``)."""
    if shard is None and outputs is not None and outputs.skipped:  # a whole-output summary
        from .noop import keep_summary

        if keep_summary(path, summary):
            return
    write_summary_to(path, summary, one_line=_one_line(config))


def _shard_setup(config: RunConfig, jobs_path: Path) -> tuple[RunConfig, ShardSpec | None]:
    """The shard this run is (runner/shards.py), with its own tagged output paths."""
    if config.shard is None and config.shard_count is None:
        return config, None  # resolve_shard's answer, without importing runner.shards
    from .shards import apply_shard, resolve_shard

    shard = resolve_shard(config, os.environ)
    if shard is None:
        return config, None
    return apply_shard(config, jobs_path, shard), shard


def _picker(shard: ShardSpec, contexts: Mapping[str, Context]) -> ShardPicker:
    from .shards import ShardPicker

    return ShardPicker(shard, contexts)


def _shard_manifest(
    shard: ShardSpec | None,
    outputs: Outputs,
    jobs_path: Path | None,
    summary_path: Path | None,
    config: RunConfig,
) -> None:
    if shard is None or jobs_path is None or summary_path is None:
        return
    from .shards import write_manifest

    write_manifest(
        outputs.results_path,
        spec=shard,
        jobs_path=jobs_path,
        latency=outputs.latency_path,
        summary=summary_path,
        model=config.model,
        order=config.order,
        contexts=config.contexts,
    )


def _fresh_state(shard: ShardSpec | None, outputs: Outputs, summary_path: Path | None) -> bool:
    """A shard's earlier ``S.state`` is void now; whether this run may write one at its end:
    only when its latency file starts empty, so that its builder covers every record."""
    if shard is None or summary_path is None or str(summary_path) == "-":
        return False
    remove_state(summary_path)
    try:
        return outputs.latency_path.stat().st_size == 0
    except OSError:
        return False


async def _check_redis(config: RunConfig, *, base_url: str, api_key: str | None) -> None:
    """Redis accepting runner's credentials is a pre-flight check: refused, exit 2 before any
    output is opened (``--no-resume`` truncated the last results first)."""
    if config.redis_url:
        from .redis_limits import check_redis

        await check_redis(config, base_url=base_url, api_key=api_key)


async def _limiter(
    stack: contextlib.AsyncExitStack, config: RunConfig, *, base_url: str, api_key: str | None
) -> Limiter:
    local = RateController(concurrency=config.concurrency, rpm=config.rpm, tpm=config.tpm)
    if not (config.redis_url or config.limit_file):
        return local
    from .redis_limits import open_shared_limiter  # one budget over processes and hosts

    return await stack.enter_async_context(
        open_shared_limiter(config, base_url=base_url, api_key=api_key, local=local)
    )


def _scaling_summary(summary: dict[str, Any], shard: ShardSpec | None, limiter: Limiter) -> None:
    if shard is not None:
        summary["shard"] = {"index": shard.index, "count": shard.count}
    report = getattr(limiter, "report", None)
    if report is not None:
        summary["shared_limit"] = report()


async def _explicit_caches(
    config: RunConfig, backend: object, plan: OutputPlan | None
) -> ExplicitCaches | None:
    """Explicit caches per group when the provider has them and caching is on; what an
    interrupted run left behind is adopted or deleted first."""
    # A store has create_cache: the plain check keeps runner.explicit_cache out of other runs.
    if config.cache != "warm" or not hasattr(backend, "create_cache"):
        return None
    from .explicit_cache import CacheStore, ExplicitCaches, run_tag

    if not isinstance(backend, CacheStore):
        return None
    results = plan.results if plan is not None else None
    explicit = ExplicitCaches(
        backend,
        tag=run_tag(results if results is not None else "in-memory"),
        concurrency=config.concurrency,
        min_ttl_s=config.explicit_ttl_s,
        journal=MetaCacheJournal(results) if results is not None else None,
    )
    await explicit.recover()
    return explicit


def _add_cache_cost(
    summary: dict[str, Any], explicit: ExplicitCaches | None, config: RunConfig
) -> None:
    """Creation and storage of explicit caches (this invocation's), and the saving net of both."""
    if explicit is None:
        return
    price = config.price()
    info = explicit.cost(price)
    summary["explicit_caches"] = info
    cost = summary.get("cost")
    if not cost or price is None:
        return
    write_rate = price.input if price.cache_write is None else price.cache_write
    create = info["create_tokens"] * write_rate / 1e6
    storage = info["storage_usd"]
    total = cost["billed"] + create + storage
    cost["cache_create"] = round(create, 8)
    cost["storage"] = round(storage, 10)
    cost["billed_total"] = round(total, 8)
    cost["saving_net"] = round(1.0 - total / cost["uncached"], 6) if cost["uncached"] else 0.0


PROBE_RETRY_DELAYS_S = (0.5, 1.5)  # an unreachable provider gets two more tries, then exit 75


async def _preflight(backend: HTTPBackend, base_url: str, config: RunConfig) -> None:
    """Probe the provider: a bad key stops the run (exit 3), a wrong URL is a config error
    (exit 2), and a provider still unreachable after retries is transient (exit 75); one that
    answers 503 (loading its model) is waited for (runner/loading.py)."""
    tries = polls = 0
    loading_since: float | None = None
    while (problem := await backend.probe()) is not None:
        if problem.code == loading.LOADING_CODE:
            now = time.monotonic()
            if loading_since is None:
                loading_since = now
                loading.say_waiting(
                    config, public_url(base_url), problem.message, loading.LOADING_WAIT_S
                )
            elif now - loading_since >= loading.LOADING_WAIT_S:
                raise Unavailable(
                    f"pre-flight check of {public_url(base_url)} failed: still not ready after "
                    f"{now - loading_since:.0f} s ({problem.message}); run again later"
                )
            await asyncio.sleep(loading.poll_delay(polls))
            polls += 1
            continue
        if problem.code not in TRANSIENT_ERROR_CODES or tries == len(PROBE_RETRY_DELAYS_S):
            break
        await asyncio.sleep(PROBE_RETRY_DELAYS_S[tries])
        tries += 1
    if problem is None:
        loading.say_unlisted(config, backend.listed_models)
        return
    base_url = public_url(base_url)
    if problem.code in TRANSIENT_ERROR_CODES:
        raise Unavailable(
            f"pre-flight check of {base_url} failed: the provider is unreachable after "
            f"{tries + 1} attempts ({problem.message}){loading.local_hint(base_url)}; run again "
            "later"
        )
    if problem.fatal:
        raise AuthError(f"pre-flight check of {base_url} failed: {problem.message}")
    raise ConfigError(f"pre-flight check of {base_url} failed: {problem.message}")


def _summary_path(
    config: RunConfig,
    jobs_path: Path | None,
    *,
    own_sink: bool,
    config_path: Path | None,
    plan: OutputPlan | None = None,
) -> Path | None:
    """:func:`_check_paths`, where ``--summary -`` (standard output) is no file to check."""
    if plan is None:
        plan = run_plan(config, jobs_path, own_sink=own_sink)
    if config.summary_to_stdout:
        plain = replace(config, summary=None)
        _check_paths(plain, jobs_path, plan, own_sink=own_sink, config_path=config_path)
        return Path("-")
    return _check_paths(config, jobs_path, plan, own_sink=own_sink, config_path=config_path)


async def _run_batch(
    jobs: Iterable[Job | BadLine] | Path | str,
    config: RunConfig,
    sink: Sink | None,
    handle_signals: bool,
    config_path: Path | None,
    on_start: Callable[[], None] | None,
) -> RunOutcome:
    if not isinstance(jobs, str | Path) or sink is not None:
        raise ConfigError("--via batch reads a jobs file and writes the default sinks")
    plan = run_plan(config, Path(jobs))
    _summary_path(config, Path(jobs), own_sink=True, config_path=config_path, plan=plan)
    from .batchapi.engine import run_batch

    return await run_batch(
        Path(jobs), config, handle_signals=handle_signals, plan=plan, on_start=on_start
    )


def _refuse_while_batches_run(
    jobs: Iterable[Job | BadLine] | Path | str, config: RunConfig, plan: OutputPlan | None
) -> None:
    """A direct run onto outputs whose provider batches are not collected would send their jobs
    a second time (docs/BATCH.md)."""
    if isinstance(jobs, str | Path) and config.resume and plan is not None:
        from .batchapi.journal import refuse_direct_while_in_flight

        refuse_direct_while_in_flight(plan.results)


def _check_paths(
    config: RunConfig,
    jobs_path: Path | None,
    plan: OutputPlan | None,
    *,
    own_sink: bool,
    config_path: Path | None,
) -> Path | None:
    """Check every path the run writes (see :mod:`runner.outputs`); the summary's, if any."""
    inputs = [
        ("the jobs file", jobs_path),
        ("the contexts file", config.contexts),
        ("the config file", config_path),
    ]
    # The metrics textfile is written at the end, over whatever it names: checked like the rest.
    textfile = config.metrics_textfile
    extra = [] if textfile is None else [("the metrics textfile (--metrics-textfile)", textfile)]
    if own_sink or jobs_path is not None:
        assert plan is not None  # run_plan makes one whenever the run owns its outputs
        summary = ("the summary (--summary)", plan.summary)
        check_outputs([*(plan.labelled() if own_sink else [summary]), *extra], inputs)
        return plan.summary
    if config.summary is not None:
        check_outputs([("the summary (--summary)", config.summary), *extra], inputs)
    elif extra:
        check_outputs(extra, inputs)
    return config.summary


def _finish_outcome(
    outcome: RunOutcome,
    summary: dict[str, Any],
    config: RunConfig,
    *,
    base_url: str | None,
    started_at: float,
) -> RunOutcome:
    """Add who/when/why to the summary; the exit code is 1 while any job in the output failed."""
    run_summary = outcome.summary
    code = outcome.exit_code
    if code == 0 and summary["jobs"]["failed"]:
        code = 1  # an earlier invocation's permanent failures are still in the output
    if outcome.stopped == "endpoint" and run_summary["jobs"]["ok"] == 0:
        code = 2  # a wrong URL found by the first requests is a configuration error
    done = summary["jobs"]["ok"] + summary["jobs"]["failed"]
    out: dict[str, Any] = {
        "started_at": iso_utc(started_at),
        "ended_at": iso_utc(time.time()),
        **describe_run(config, base_url=base_url),
        "exit_code": code,
        **summary,
    }
    out["stopped"] = outcome.stopped
    out["this_run"] = this_run_of(run_summary)
    out["limiter_wait_summed"] = True  # limiter_wait_s adds every request's wait
    out["limiter_wait_mean_ms"] = (
        round(summary["limiter_wait_s"] * 1000.0 / done, 3) if done else 0.0
    )
    return replace(outcome, summary=out, exit_code=code)


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class BatchResult(Record):
    """One job's outcome from :func:`batch`: its result line (parsed) and its latency record."""

    custom_id: str | None
    result: dict[str, Any]  # the Batch output shape: id, custom_id, response, error (, metadata)
    record: LatencyRecord

    @property
    def ok(self) -> bool:
        return self.result.get("error") is None

    @property
    def body(self) -> Any:
        """The provider's response body, or None when no response arrived."""
        response = self.result.get("response")
        return response.get("body") if isinstance(response, dict) else None


class _MemorySink:
    """Keeps results in memory, in input order (nothing is resumed, nothing written)."""

    __slots__ = ("results",)

    def __init__(self) -> None:
        self.results: list[tuple[int, BatchResult]] = []

    def done(self, custom_id: str | int) -> bool:
        return False

    def write(self, result: ResultLine, record: LatencyRecord) -> None:
        # Raw bodies travel as orjson fragments; a caller wants plain objects.
        parsed = orjson.loads(result.to_json())
        self.results.append((result.line, BatchResult(result.custom_id, parsed, record)))

    def flush(self) -> None:
        pass


async def batch(
    jobs: Iterable[Job | Mapping[str, Any]],
    config: RunConfig,
    *,
    on_tick: Callable[[LiveStats], None] | None = None,
) -> list[BatchResult]:
    """Run jobs held in memory and return one :class:`BatchResult` per job, in input order.

    The same engine, cache scheduling, limits, retries and guards as :func:`run`; no file is
    read or written (``config.summary`` aside, when set), and no progress is shown unless
    ``on_tick`` is given. A job that fails is a result with an ``error``, never an exception.

    :param jobs: :class:`~runner.models.Job` objects or plain dicts in either input shape
        (``{"id": "q1", "query": "..."}``, see :meth:`Job.from_dict`); a dict that is not a
        valid job becomes an ``invalid_input`` result. Positions (1-based) replace line numbers.
    :param config: provider, model, limits...; ``config.contexts`` names the contexts file
        for compact jobs that carry a ``cache_id``.
    """
    from .jobs import parse_job

    contexts = contexts_for(config)

    def items() -> Iterable[Job | BadLine]:
        for pos, item in enumerate(jobs, 1):
            if isinstance(item, Job):
                yield dataclasses.replace(item, line=pos) if item.line != pos else item
                continue
            try:
                yield parse_job(item, line=pos, contexts=contexts, where="jobs")
            except InputError as exc:
                cid = item.get("custom_id", item.get("id")) if isinstance(item, Mapping) else None
                yield BadLine(pos, cid if isinstance(cid, str) and cid else None, None, str(exc))

    sink = _MemorySink()
    await run(items(), config, sink=sink, on_tick=on_tick)
    sink.results.sort(key=lambda pair: pair[0])
    return [r for _, r in sink.results]


def _install_signals(engine: Engine, say: Callable[..., None] | None = None) -> None:
    """Drain on the first stop signal, stop at once on the second; ``say(message, **fields)``
    tells at once what the drain waits for (the display's note or the ``stopping`` event)."""
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        if seen == 1 and say is not None:
            # The drain can take as long as the slowest reply: say why nothing seems to happen,
            # before a second Ctrl-C throws the in-flight (paid) answers away. A pod's or
            # unit's log names the signal that came (a SIGTERM there is no Ctrl-C). With none
            # in flight (a run waiting on its rate limit) the stop is said all the same: a
            # user who saw nothing pressed Ctrl-C again.
            name, n, drain_s = (
                signal.Signals(signum).name,
                engine.stats.in_flight,
                engine.config.drain_s,
            )
            again = "Ctrl-C again" if signum == signal.SIGINT else f"a second {name}"
            said = (
                f"stopping: waiting for {n} requests in flight (at most {drain_s:g} s) after "
                f"{name}; {again} stops at once, re-sending them on the next run"
                if n
                else f"stopping after {name}: no requests in flight, writing the summary"
            )
            say(said, signal=name, in_flight=n, drain_s=drain_s)
        # The second signal stops at once; files stay consistent since writes are whole lines.
        engine.request_stop("signal", 128 + signum, hard=seen > 1)

    for sig in not_ignored(_STOP_SIGNALS):  # nohup's ignored SIGHUP stays ignored
        loop.add_signal_handler(sig, on_signal, sig)


# SIGHUP (the terminal closed, a session ended) drains like SIGTERM, exit 129: by default it
# killed the run at once, throwing away the answers in flight and the summary.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.remove_signal_handler(sig)
