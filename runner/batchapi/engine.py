"""``runner run --via batch``: the jobs file through a provider batch API, resumable.

One pass: read the jobs, skip those with a result, plan the rest into chunks (one model per
chunk where the provider requires it, each cache group kept together and in order, split at the
provider's request and byte limits), then loop: submit the chunks that are ready, poll the ones
submitted (the interval grows while nothing changes), and when one ends write one result line
and one latency line per job through the same exactly-once sinks a direct run uses. Rows that a
later submission can fix (expired, cancelled, retriable errors, rows missing from a failed
batch) go into a new chunk until ``batch_max_attempts``; every other failure is a result.

A stop (SIGINT/SIGTERM) detaches: the batches keep running at the provider and the next run of
the same command reattaches through the journal (:mod:`runner.batchapi.journal`). With
``cancel_on_stop`` it cancels them first; their unfinished rows are resubmitted next time.

A journaled batch the provider answers 404 for (deleted, past retention, made with another key)
is never silently dropped or resent: the other batches are collected, then the run stops with
:class:`~runner.batchapi.wire.BatchNotFound` (exit 3) naming it and the journal, unless
``resubmit_lost_batches`` says to send its jobs again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from ..budget import RequestBudget
from ..config import DEFAULT_POLL_INTERVAL_S, RunConfig
from ..errors import ConfigError, Unavailable
from ..jobs import contexts_for, read_jobs
from ..models import BadLine, ErrorInfo, Job, LatencyRecord, Price, estimate_tokens
from ..outputs import OutputPlan, run_plan
from ..pipeline import RunOutcome
from ..providers._http import make_session
from ..providers.capabilities import batch_cache_config, capabilities_for
from ..results import ResultLine
from ..runtime import endpoint, mock_config
from ..sinks import Outputs, meta_path_of, open_outputs
from ..stats import SummaryBuilder
from ..stopsignals import not_ignored
from .journal import Chunk, Journal
from .wire import (
    RETRY_ROW_CODES,
    BatchAPI,
    BatchNotFound,
    BatchRejected,
    BatchView,
    CreateUncertain,
    ResultsGone,
    Row,
    control_headers,
    open_batch_api,
    spool_dir,
)

__all__ = [
    "DEFAULT_BATCH_DISCOUNT",
    "MAX_POLL_INTERVAL_S",
    "BatchLatencyRecord",
    "batch_price",
    "batch_prices",
    "batch_run_config",
    "run_batch",
]

DEFAULT_BATCH_DISCOUNT = 0.5  # OpenAI and Anthropic both bill batches at half the list price
MAX_POLL_INTERVAL_S = 120.0
BUILTIN_MOCK_POLL_S = 0.25
POLL_GROWTH = 1.5
_MAPPED_ID_BYTES = 32  # bound on the growth of an id mapped to "<chunk key>-<position>"
EXIT_OK, EXIT_FAILED = 0, 1
_MAX_UNCERTAIN = 6  # creates in a row with their answer lost before the run gives up (exit 75)
# Tests kill the process with SIGKILL at a named point to prove reattach (tests/batchapi/).
_KILL_AT = os.environ.get("RUNNER_BATCH_KILL_AT")


def _kill_point(name: str) -> None:
    if _KILL_AT == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(slots=True)
class BatchLatencyRecord(LatencyRecord):
    """A latency record of a job run inside a provider batch (no per-request latency exists)."""

    submitted_at: float | None = None
    completed_at: float | None = None
    batch_id: str | None = None


def batch_price(price: Price | None) -> Price | None:
    """``price`` scaled by its ``batch_discount`` (default 0.5): what a batch row is billed."""
    if price is None:
        return None
    d = DEFAULT_BATCH_DISCOUNT if price.batch_discount is None else price.batch_discount

    def scaled(v: float | None) -> float | None:
        return None if v is None else v * d

    return Price(
        input=price.input * d,
        output=price.output * d,
        cached_input=scaled(price.cached_input),
        cache_write=scaled(price.cache_write),
        batch_discount=1.0,
    )


def batch_run_config(config: RunConfig) -> RunConfig:
    """The config a ``--via batch`` run sends and prices with: a warm batch takes the provider's
    longer cache TTL where it has one (Anthropic's hour: a batch can take far longer than a
    short TTL), and its writes are billed at that TTL's rate (docs/BATCH.md)."""
    return batch_cache_config(config) if config.cache == "warm" else config


def batch_prices(config: RunConfig) -> Callable[[str | None], Price | None]:
    """Each model's price for a batch row under ``config``: the one pricing rule of a batch
    run's summary and of ``validate --via batch``'s estimate."""
    run_config = batch_run_config(config)
    return lambda model: batch_price(run_config.price(model))


async def run_batch(
    jobs_path: Path,
    config: RunConfig,
    *,
    handle_signals: bool = False,
    log: TextIO | None = None,
    plan: OutputPlan | None = None,
    on_start: Callable[[], None] | None = None,
) -> RunOutcome:
    """Run ``jobs_path`` through the provider's batch API; returns like :func:`runner.run`.

    :param handle_signals: SIGINT/SIGTERM detach (or cancel, with ``cancel_on_stop``) and return.
    :param log: where the per-poll progress lines go (stderr unless ``progress`` is ``off``).
    :param plan: the output plan (:func:`runner.outputs.run_plan`), if already made.
    :param on_start: called once the checks have passed and the outputs are open
        (:func:`runner.run`'s).
    """
    config = batch_run_config(config)
    if config.base_url is None and config.poll_interval == DEFAULT_POLL_INTERVAL_S:
        # The built-in mock ends a batch within seconds: a 10 s first poll would only wait.
        config = replace(config, poll_interval=BUILTIN_MOCK_POLL_S)
    contexts = contexts_for(config)
    api_key = config.api_key()
    # The built-in mock's config is checked before any file is opened.
    mock = None if config.base_url else mock_config(config)
    items = read_jobs(jobs_path, contexts=contexts, max_line_bytes=config.max_line_bytes)
    # Like a direct run: the command line shows progress unless told not to; a library call
    # only when asked; never as text among JSON log lines.
    wants = config.progress in ("bar", "log") or (config.progress == "auto" and handle_signals)
    if log is None and wants and not config.quiet and config.log_format != "json":
        log = sys.stderr
    if plan is None:
        plan = run_plan(config, jobs_path)
        assert plan is not None
    outputs = open_outputs(config, jobs_path=jobs_path, model=config.model, plan=plan)
    if on_start is not None:
        on_start()
    try:
        async with contextlib.AsyncExitStack() as stack:
            base_url = await stack.enter_async_context(endpoint(config, mock))
            session = make_session(config, headers=control_headers(config, api_key))
            stack.push_async_callback(session.close)
            api = open_batch_api(config, session, base_url=base_url, api_key=api_key)
            api.spool_dir = spool_dir(outputs.results_path)
            run = BatchRun(config, api, outputs, log=log)
            if handle_signals:
                _install_signals(run)
                stack.callback(_remove_signals)
            outcome = await run.run(items)
    finally:
        outputs.close()
    lost = run.lost_error()
    from ..observe import write_summary_to  # the summary file, or stdout for ``--summary -``

    summary_path = config.summary or plan.summary
    from ..noop import keep_summary

    # A re-run that found every job written keeps the summary of the run that did the work.
    if not keep_summary(summary_path, outcome.summary):
        write_summary_to(summary_path, outcome.summary, one_line=config.log_format == "json")
    if config.log_format == "json":
        # No observer runs here (no per-request events), but a JSON log still gets its end.
        from ..logs import EventLog

        sm = outcome.summary
        events = EventLog(sys.stderr, quiet=config.quiet)
        events.run_end(outcome.exit_code, outcome.stopped, sm, via="batch")
        events.close()
    if lost is not None:
        raise lost  # after the summary: the other batches' results and counts are kept
    return outcome


class BatchRun:
    """The state of one ``--via batch`` invocation."""

    def __init__(
        self, config: RunConfig, api: BatchAPI, outputs: Outputs, *, log: TextIO | None
    ) -> None:
        self.config = config
        self.api = api
        self.outputs = outputs
        self.log = log
        self.list_price = config.price()
        # Each job at its own model's batch price (a batch may mix models: one per chunk).
        self.summary = SummaryBuilder(None, price_of=batch_prices(config))
        self.max_requests = min(config.batch_max_requests or api.max_requests, api.max_requests)
        self.max_bytes = min(config.batch_max_bytes or api.max_bytes, api.max_bytes)
        self.jobs: dict[str, Job] = {}
        self.ok = self.failed = self.skipped = 0
        self.creates = 0
        self.recovered = 0  # batches found by the lookup after a lost create, confirmed ours
        self._lost: dict[str, str] = {}  # chunk key -> the 404 message, this invocation
        self.stop_signal: int | None = None
        self._wake = asyncio.Event()
        self._seq = 0
        self._run_tag = os.urandom(6).hex()
        self._uncertain = 0  # creates in a row whose answer was lost
        self.journal = Journal.load(outputs.results_path, provider=api.shape, run_id=self._run_tag)

    def request_stop(self, signum: int) -> None:
        self.stop_signal = signum
        self._wake.set()

    # -- the run -------------------------------------------------------------------------------

    async def run(self, items: Iterable[Job | BadLine]) -> RunOutcome:
        t0 = time.perf_counter()
        self._admit(items)
        interval = self.config.poll_interval
        while self._live() and self.stop_signal is None:
            changed = await self._submit_ready()
            changed |= await self._poll()
            if self.stop_signal is not None or not self._live():
                break
            interval = self.config.poll_interval if changed else interval * POLL_GROWTH
            interval = min(interval, max(MAX_POLL_INTERVAL_S, self.config.poll_interval))
            self._progress(interval)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
        stopped = None
        code = EXIT_FAILED if self.failed else EXIT_OK
        if self._lost and self.stop_signal is None:
            code = BatchNotFound.exit_code
        if self.stop_signal is not None:
            stopped, code = "signal", 128 + self.stop_signal
            await self._on_stop()
        self.outputs.flush()
        summary = self._summary(time.perf_counter() - t0, stopped)
        if self.skipped:
            summary = self._whole_output(summary)
            # As for a direct run (README, exit codes): exit 1 while any job in the output
            # failed, an earlier invocation's failures included.
            if code == EXIT_OK and summary["jobs"]["failed"]:
                code = EXIT_FAILED
        else:
            # The invocation is the whole output: ``this_run`` is there all the same, as a
            # direct run's always is (README, Output), so a reader finds it on the first run.
            from ..totals import this_run_of

            summary["this_run"] = this_run_of(summary)
        return RunOutcome(summary, code, stopped)

    def _whole_output(self, run: dict[str, Any]) -> dict[str, Any]:
        """After a resume, the summary of every job in the output, as a direct run's (README,
        Output), with this invocation's own counts in ``this_run``. It counted this invocation
        alone: a batch run detached by SIGTERM and collected by the retry said ``ok: 20`` of
        40 jobs answered, with 20 jobs' tokens and cost."""
        from ..totals import this_run_of, whole_output

        whole, builder = whole_output(
            self.outputs.latency_path, self.config, run, price_of=batch_prices(self.config)
        )
        at_list = builder.billed_uncached(self.config.price)
        if at_list is not None:
            billed, uncached = at_list
            at = {"billed_usd": round(billed, 6), "uncached_usd": round(uncached, 6)}
            whole["batch"] = {**run["batch"], "at_list_price": at}
        whole["this_run"] = this_run_of(run)
        return whole

    def _live(self) -> list[Chunk]:
        """Active chunks this invocation can still move: not a batch found missing (404), nor
        waiting for one (the followers of a missing primer batch)."""
        if not self._lost:
            return self.journal.active()
        return [
            c
            for c in self.journal.active()
            if c.key not in self._lost and not any(k in self._lost for k in c.after)
        ]

    def lost_error(self) -> BatchNotFound | None:
        """The error naming every batch found missing (404) and left so, if any."""
        if not self._lost or self.stop_signal is not None:
            return None
        journal = meta_path_of(self.outputs.results_path)
        parts = []
        for key, message in self._lost.items():
            chunk = self.journal.by_key(key)
            assert chunk is not None
            pending = sum(1 for cid in chunk.ids if cid in self.jobs)
            parts.append(f"batch {chunk.batch_id} (chunk {key}, {pending} jobs; {message})")
        return BatchNotFound(
            f"{'; '.join(parts)}: not found at the provider (404: deleted, past its retention, "
            f"or created with another API key or base URL). Its jobs are neither written nor "
            f"sent again; the journal is {journal} (`runner status "
            f"{self.outputs.results_path}`). If the batch is gone, run the same command with "
            "--resubmit-lost-batches to send its jobs again (billed twice if it still runs "
            "under another key)"
        )

    def _admit(self, items: Iterable[Job | BadLine]) -> None:
        """Skip jobs already written, answer bad lines, plan chunks for the rest."""
        for item in items:
            # A bad line's result is keyed by its id when it has one, else by its line.
            cid = item.custom_id
            if self.outputs.sink.done(item.line if cid is None else cid):
                self.skipped += 1
                continue
            if isinstance(item, BadLine):
                self._write(cid, item.line, None, None, None, None, "invalid_input", item.message)
                continue
            self.jobs[item.custom_id] = item
        in_flight = {cid for c in self.journal.active() for cid in c.ids}
        fresh = [j for cid, j in self.jobs.items() if cid not in in_flight]
        self.journal.chunks.extend(self._plan(fresh, attempt=1))
        self.journal.save()
        self.outputs.flush()

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, jobs: list[Job], *, attempt: int) -> list[Chunk]:
        """Chunks for ``jobs``: by model (where required), groups together and in order."""
        by_model: dict[str, list[Job]] = {}
        for j in jobs:
            model = (j.model or self.config.model) if self.api.one_model_per_batch else "*"
            by_model.setdefault(model, []).append(j)
        chunks: list[Chunk] = []
        for model, js in by_model.items():
            groups: dict[str | None, list[Job]] = {}
            for j in js:
                groups.setdefault(j.group, []).append(j)
            primers: list[Job] = []
            if self._primes() and attempt == 1:
                for g, members in groups.items():
                    if g is not None and len(members) > 1 and self._cacheable(members[0]):
                        primers.append(members.pop(0))
            first = self._pack(model, "primer", [[p] for p in primers], attempt, [])
            after = [c.key for c in first]
            chunks += first
            chunks += self._pack(model, "jobs", list(groups.values()), attempt, after)
        return chunks

    def _primes(self) -> bool:
        # Where a prefix cached by a normal call is not read by batches (Anthropic), each
        # group's first request goes ahead in a batch of primers (one per group).
        return self.config.cache == "warm" and capabilities_for(self.config).batch_primes_groups

    def _cacheable(self, job: Job) -> bool:
        return RequestBudget.for_run(self.config).cacheable(estimate_tokens(job.prefix_chars))

    def _pack(
        self, model: str, kind: str, groups: list[list[Job]], attempt: int, after: list[str]
    ) -> list[Chunk]:
        out: list[Chunk] = []
        ids: list[str] = []
        size = 0

        def close() -> None:
            nonlocal ids, size
            if ids:
                key = self.journal.new_key()
                chunk = Chunk(key=key, kind=kind, model=model, attempt=attempt, ids=ids)
                chunk.after = list(after)
                sent = [self.api.sent_id(c, i) for i, c in enumerate(ids)]
                if sent != ids or not self.api.find_is_exact:
                    # Some ids are not allowed on the wire, or a batch found after a lost create
                    # can be told from another only by its rows' ids: send every one by
                    # position under the chunk's key (its run's random tag), so a mapped id can
                    # never collide with a job's own id, and no other chunk's (or run's, even
                    # of the same jobs file) batch carries the same ids.
                    sent = [f"{key}-{i}" for i in range(len(ids))]
                chunk.sent = None if sent == ids else sent
                out.append(chunk)
            ids, size = [], 0

        # A mapped id ("<chunk key>-<position>") may be longer than the id it replaces.
        slack = _MAPPED_ID_BYTES if self.api.maps_ids else 0
        for members in groups:
            sizes = [len(self._item(j, 0)) + 1 + slack for j in members]
            # Keep a group in one batch when it fits in an empty one (the cache is per batch).
            if ids and (
                len(ids) + len(members) > self.max_requests or size + sum(sizes) > self.max_bytes
            ):
                close()
            for j, n in zip(members, sizes, strict=True):
                if ids and (len(ids) + 1 > self.max_requests or size + n > self.max_bytes):
                    close()
                if n > self.max_bytes:
                    raise ConfigError(
                        f"job {j.custom_id} alone is {n} bytes, over the batch limit of "
                        f"{self.max_bytes} bytes"
                    )
                ids.append(j.custom_id)
                size += n
        close()
        return out

    def _cache_key(self, job: Job) -> str | None:
        if self.config.cache != "warm" or job.group is None:
            return None
        return job.group[:64]

    def _item(self, job: Job, index: int) -> bytes:
        return self.api.item(job, self.api.sent_id(job.custom_id, index), self._cache_key(job))

    # -- submitting ----------------------------------------------------------------------------

    async def _submit_ready(self) -> bool:
        changed = False
        for chunk in list(self.journal.active()):
            if self.stop_signal is not None:
                break
            if chunk.state == "submitted" or not self.journal.ready(chunk):
                continue
            await self._submit(chunk)
            changed = True
        return changed

    async def _submit(self, chunk: Chunk) -> None:
        j, api = self.journal, self.api
        metadata = {"runner_run": j.run_id, "runner_chunk": chunk.key}
        known = {c.batch_id for c in j.chunks if c.batch_id}
        known.update(b for c in j.chunks for b in c.foreign)
        if chunk.state == "creating":
            assert chunk.creating_at is not None
            found = await api.find(
                metadata=metadata,
                sent_at=chunk.creating_at,
                total=len(chunk.ids),
                known=known,
            )
            if found is not None:
                self._note(f"reattached {chunk.key} to {found}, whose create answer was lost")
                chunk.batch_id, chunk.state = found, "submitted"
                # Found by size only: its rows' ids are checked before any is used.
                chunk.verify = not api.find_is_exact
                if not chunk.verify:
                    self.recovered += 1
                chunk.submitted_at = chunk.creating_at
                j.save()
                return
            chunk.state = "uploaded" if chunk.file_id else "planned"
        # Jobs written meanwhile (or gone from the input) are not sent again.
        keep = [i for i, cid in enumerate(chunk.ids) if cid in self.jobs]
        if len(keep) < len(chunk.ids):
            sent = chunk.sent_ids()
            chunk.ids = [chunk.ids[i] for i in keep]
            chunk.sent = [sent[i] for i in keep] if chunk.sent is not None else None
            chunk.file_id = None
            chunk.state = "planned"
            if not chunk.ids:
                chunk.state, chunk.note = "done", "nothing left to send"
                j.save()
                return
        # The input goes through a temporary file, never whole in memory (up to 200-256 MB).
        fd, name = tempfile.mkstemp(prefix=".runner-batch-", suffix=".jsonl", dir=api.spool_dir)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                api.write_input(
                    fh,
                    (
                        api.item(self.jobs[cid], sid, self._cache_key(self.jobs[cid]))
                        for cid, sid in zip(chunk.ids, chunk.sent_ids(), strict=True)
                    ),
                )
            if api.needs_upload and not chunk.file_id:
                chunk.state = "uploading"
                j.save()
                _kill_point("upload")
                chunk.file_id = await api.upload(f"{chunk.key}.jsonl", path)
                chunk.state = "uploaded"
                j.save()
            chunk.state, chunk.creating_at = "creating", time.time()
            j.save()
            _kill_point("creating")  # journaled as creating, never created: nothing to adopt
            try:
                view = await api.create(file_id=chunk.file_id, path=path, metadata=metadata)
            except CreateUncertain as exc:
                # The batch may exist: the chunk stays journaled as creating, and the next pass
                # looks it up before any second create (the path a crash here takes).
                self._uncertain += 1
                if self._uncertain >= _MAX_UNCERTAIN:
                    raise Unavailable(f"{exc}; run again later (it will be looked up)") from None
                self._note(f"{chunk.key}: {exc}; looking it up before sending it again")
                return
            except BatchRejected:
                # Refused: no batch exists, so the next run must not look for one.
                chunk.state = "uploaded" if chunk.file_id else "planned"
                j.save()
                raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        _kill_point("create")  # created, not journaled: the next run must find it, not resubmit
        self._uncertain = 0
        self.creates += 1
        chunk.batch_id, chunk.state, chunk.status = view.id, "submitted", view.status
        chunk.submitted_at = view.created_at or chunk.creating_at
        j.save()
        self._note(f"submitted {chunk.key} ({chunk.kind}, {len(chunk.ids)} jobs) as {view.id}")

    # -- polling and collecting ----------------------------------------------------------------

    async def _poll(self) -> bool:
        changed = False
        for chunk in self.journal.active():
            if chunk.state != "submitted" or self.stop_signal is not None:
                continue
            if chunk.key in self._lost:
                continue
            assert chunk.batch_id is not None
            try:
                view = await self.api.get(chunk.batch_id)
            except BatchNotFound as exc:
                self._missing(chunk, str(exc))
                changed = True
                continue
            _kill_point("poll")
            if view.status != chunk.status or view.counts != chunk.counts:
                chunk.status, chunk.counts = view.status, view.counts
                self.journal.save()
                changed = True
            if view.ended:
                await self._collect(chunk, view)
                changed = True
        return changed

    async def _collect(self, chunk: Chunk, view: BatchView) -> None:
        """Write every row of an ended batch; plan its fixable rows; mark it done (one save)."""
        if chunk.verify and not await self._ours(chunk, view):
            return
        by_sent = dict(zip(chunk.sent_ids(), chunk.ids, strict=True))
        seen: set[str] = set()
        again: list[Job] = []
        last = chunk.attempt >= self.config.batch_max_attempts
        submitted = chunk.submitted_at
        ended = view.ended_at or time.time()
        written = self.ok + self.failed
        gone: str | None = None
        try:
            async for row in self.api.rows(view):
                cid = by_sent.get(row.sent_id)
                if cid is None or cid in seen:
                    continue  # not ours, or a duplicate row: never a second result
                seen.add(cid)
                job = self.jobs.get(cid)
                if job is None:
                    continue  # written by an earlier run that died before marking it done
                if row.error is not None and not last and _fixable(row.error):
                    again.append(job)
                    continue
                self._write_row(job, row, chunk, submitted, ended)
                if len(seen) == 2:
                    self.outputs.flush()
                    _kill_point("download")  # some rows written, the chunk not yet marked done
        except ResultsGone as exc:
            # Every re-run would stop here and never collect the other batches. The requests
            # ran (and were billed): each becomes a result, resubmitted only by --retry-failed.
            gone = str(exc)
        missing = [cid for cid in chunk.ids if cid not in seen and cid in self.jobs]
        if missing:
            err = _missing_error(view, len(missing))
            if gone is not None:
                err = ErrorInfo(
                    "results_gone",
                    f"{gone}: batch {view.id} ended but its results are gone at the provider "
                    "(deleted or past retention); not resubmitted, as the request may have been "
                    "billed: --retry-failed sends it again",
                    True,
                )
            for cid in missing:
                if not last and gone is None and err.retriable:
                    again.append(self.jobs[cid])
                else:
                    job = self.jobs[cid]
                    self._write(
                        cid, job.line, job, None, chunk, (submitted, ended), err.code, err.message
                    )
        self.outputs.flush()  # results are the commit record: durable before the journal says so
        chunk.state, chunk.ended_at = "done", ended
        if again:
            retry = self._plan(again, attempt=chunk.attempt + 1)
            self.journal.chunks.extend(retry)
            chunk.note = f"{len(again)} rows resubmitted in {', '.join(c.key for c in retry)}"
        self.journal.save()
        self._note(
            f"{chunk.key} {view.status}: {self.ok + self.failed - written} written"
            + (f", {len(again)} to resubmit" if again else "")
        )

    async def _ours(self, chunk: Chunk, view: BatchView) -> bool:
        """Whether a batch adopted by time and size is the chunk's: its rows' ids are exactly
        the ids the chunk sent. If not, it is set aside and the chunk looked up again."""
        got: set[str] = set()
        async for row in self.api.rows(view):
            got.add(row.sent_id)
        if got == set(chunk.sent_ids()):
            chunk.verify = False
            self.recovered += 1
            return True
        assert chunk.batch_id is not None
        self._note(
            f"{chunk.batch_id} is not {chunk.key}'s batch (other requests): left alone, "
            "looking again"
        )
        chunk.foreign.append(chunk.batch_id)
        chunk.batch_id, chunk.status, chunk.counts = None, None, {}
        chunk.state, chunk.verify = "creating", False
        self.journal.save()
        return False

    def _missing(self, chunk: Chunk, message: str) -> None:
        """A journaled batch answers 404: kept in the journal and reported at the end, or, with
        ``resubmit_lost_batches``, marked ``lost`` and its unwritten jobs planned again."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        if chunk.verify:
            # A tentative match (never confirmed ours) that vanished: look the chunk up again.
            assert chunk.batch_id is not None
            chunk.foreign.append(chunk.batch_id)
            chunk.batch_id, chunk.status, chunk.counts = None, None, {}
            chunk.state, chunk.verify = "creating", False
            self.journal.save()
            return
        if not self.config.resubmit_lost_batches:
            chunk.note = f"not found at the provider (404) on {when}"
            self.journal.save()
            self._lost[chunk.key] = message
            self._note(f"{chunk.batch_id} ({chunk.key}) not found at the provider (404)")
            return
        jobs = [self.jobs[cid] for cid in chunk.ids if cid in self.jobs]
        chunk.state, chunk.ended_at = "lost", time.time()
        chunk.note = f"not found at the provider (404) on {when}; --resubmit-lost-batches"
        if chunk.attempt >= self.config.batch_max_attempts:
            for job in jobs:
                self._write(
                    job.custom_id,
                    job.line,
                    job,
                    None,
                    chunk,
                    (chunk.submitted_at, time.time()),
                    "batch_lost",
                    f"batch {chunk.batch_id} not found at the provider (404), on the last of "
                    "batch_max_attempts submissions; --retry-failed sends it again",
                )
            self.outputs.flush()
        elif jobs:
            retry = self._plan(jobs, attempt=chunk.attempt + 1)
            self.journal.chunks.extend(retry)
            chunk.note += f": {len(jobs)} jobs resubmitted in {', '.join(c.key for c in retry)}"
        self.journal.save()
        self._note(f"{chunk.batch_id} ({chunk.key}) not found (404): {chunk.note}")

    def _write_row(
        self, job: Job, row: Row, chunk: Chunk, submitted: float | None, ended: float
    ) -> None:
        err = row.error
        response = (
            None
            if row.status is None
            else {"status_code": row.status, "request_id": row.request_id, "body": row.body}
        )
        self._write(
            job.custom_id,
            job.line,
            job,
            response,
            chunk,
            (submitted, ended),
            None if err is None else err.code,
            None if err is None else err.message,
            usage_row=row,
        )

    def _write(
        self,
        cid: str | None,
        line: int,
        job: Job | None,
        response: dict[str, Any] | None,
        chunk: Chunk | None,
        times: tuple[float | None, float] | None,
        code: str | None,
        message: str | None,
        *,
        usage_row: Row | None = None,
    ) -> None:
        now = time.time()
        submitted, ended = times if times is not None else (None, now)
        rec = BatchLatencyRecord(
            custom_id=cid,
            cache_id=job.cache_id if job is not None else None,
            cache_role=("primer" if chunk.kind == "primer" else "follower")
            if chunk is not None and job is not None and job.group is not None
            else "none",
            outcome="ok" if code is None else "error",
            status=response["status_code"] if response is not None else None,
            attempts=chunk.attempt if chunk is not None else 0,
            queued_at=submitted or ended,
            started_at=None,
            ended_at=ended,
            latency_ms=None,
            total_ms=max(ended - submitted, 0.0) * 1000.0 if submitted else 0.0,
            error_code=code,
            submitted_at=submitted,
            completed_at=ended if chunk is not None else None,
            batch_id=chunk.batch_id if chunk is not None else None,
            model=(job.model or self.config.model) if job is not None else None,
        )
        if usage_row is not None:
            rec.request_id = usage_row.request_id
            u = usage_row.usage
            if u is not None:
                rec.prompt_tokens = u.prompt_tokens
                rec.cached_tokens = u.cached_tokens
                rec.cache_write_tokens = u.cache_write_tokens
                rec.completion_tokens = u.completion_tokens
        self._seq += 1
        result = ResultLine(
            (usage_row.row_id if usage_row is not None else None)
            or f"batch_req_{self._run_tag}{self._seq:08x}",
            cid,
            line,
            None if response is None else response["status_code"],
            None if response is None else response["request_id"],
            None if response is None else response["body"],
            code,
            message,
        )
        self.outputs.sink.write(result, rec)
        self.summary.add(rec)
        if cid is not None:
            self.jobs.pop(cid, None)
        if code is None:
            self.ok += 1
        else:
            self.failed += 1

    # -- stop, progress, summary ---------------------------------------------------------------

    async def _on_stop(self) -> None:
        if not self.config.cancel_on_stop:
            self._note("stopped: batches keep running; run the same command again to reattach")
            return
        for chunk in self.journal.active():
            if chunk.state == "submitted" and chunk.batch_id and not chunk.verify:
                # (a batch adopted but not yet verified may be another run's: never cancelled)
                with contextlib.suppress(Exception):
                    view = await self.api.cancel(chunk.batch_id)
                    chunk.status = view.status
                    chunk.note = "cancel requested"
        self.journal.save()
        self._note("stopped: cancel requested; run the same command again to collect and resubmit")

    def _note(self, text: str) -> None:
        if self.log is not None:
            print(f"runner batch: {text}", file=self.log, flush=True)

    def _progress(self, interval: float) -> None:
        active = [c for c in self.journal.active() if c.state == "submitted"]
        waiting = len(self.journal.active()) - len(active)
        parts = [
            f"{c.batch_id} {c.status} {self.api.settled(c.counts)}/{len(c.ids)}" for c in active[:4]
        ]
        more = f" (+{len(active) - 4} more)" if len(active) > 4 else ""
        self._note(
            f"{self.ok + self.failed} written, {len(self.jobs)} pending; "
            f"{len(active)} batches running{more}{': ' if parts else ''}{'; '.join(parts)}"
            f"{f'; {waiting} waiting' if waiting else ''}; next poll in {interval:.3g}s"
        )

    def _summary(self, wall: float, stopped: str | None) -> dict[str, Any]:
        s = self.summary
        summary = s.summary(
            wall_s=wall, retries=0, limiter_wait_s=0.0, skipped_resumed=self.skipped
        )
        summary["stopped"] = stopped
        summary["not_sent"] = 0 if stopped is None else len(self.jobs)
        list_cost: dict[str, float] | None = None
        at_list = s.billed_uncached(self.config.price)
        if at_list is not None:
            billed, uncached = at_list
            list_cost = {"billed_usd": round(billed, 6), "uncached_usd": round(uncached, 6)}
        discount = (
            None
            if self.list_price is None
            else self.list_price.batch_discount or DEFAULT_BATCH_DISCOUNT
        )
        summary["via"] = "batch"
        summary["batch"] = {
            "provider": self.api.shape,
            "discount": discount,
            "batches_created": self.creates,
            "batches_recovered": self.recovered,
            "batches_total": sum(1 for c in self.journal.chunks if c.batch_id),
            "pending_jobs": len(self.jobs),
            "at_list_price": list_cost,
        }
        return summary


def _fixable(err: ErrorInfo) -> bool:
    return err.code in RETRY_ROW_CODES or err.retriable


# OpenAI's codes for a batch that failed validation: the same input fails the same way again.
_INVALID_INPUT_CODES = frozenset(
    {
        "invalid_json_line",
        "invalid_request",
        "invalid_file_format",
        "missing_required_parameter",
        "model_not_found",
        "mismatched_model",
        "mismatched_endpoint",
        "invalid_url",
        "duplicate_custom_id",
        "empty_file",
        "too_many_tasks",
    }
)


def _missing_error(view: BatchView, n: int) -> ErrorInfo:
    for e in view.errors:
        if e.get("code"):
            code = str(e["code"])
            message = str(e.get("message") or code)
            line = e.get("line")
            if isinstance(line, int):
                message += f" (line {line} of the batch input)"
            # A validation failure (an error that names a line, or a known input code) is
            # not resubmitted: every attempt would upload, wait and fail the same way.
            invalid = code in _INVALID_INPUT_CODES or isinstance(line, int)
            return ErrorInfo(code, message, code in RETRY_ROW_CODES or not invalid)
    if view.status == "failed":
        return ErrorInfo("batch_failed", f"batch {view.id} failed", True)
    return ErrorInfo("missing_row", f"batch {view.id} ({view.status}) returned no row", True)


def _install_signals(run: BatchRun) -> None:
    loop = asyncio.get_running_loop()
    for sig in not_ignored((signal.SIGINT, signal.SIGTERM)):  # runner/stopsignals.py
        loop.add_signal_handler(sig, run.request_stop, int(sig))


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
