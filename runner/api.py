"""The embeddable entry point: ``await runner.run(jobs, config)``.

The CLI is a thin layer over :func:`run`, so a scheduler task or a notebook gets exactly the
behaviour of ``runner run`` without shelling out.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path

from .config import RunConfig
from .errors import AuthError, ConfigError, InputError
from .jobs import load_contexts, read_jobs
from .limits import RateController
from .models import BadLine, Job
from .pipeline import Engine, LiveStats, RunOutcome, Sink
from .progress import make_progress
from .providers import open_backend
from .sinks import default_paths, open_outputs, write_summary

__all__ = ["count_lines", "run"]


def count_lines(path: Path) -> int:
    """Non-blank-ish line count for the progress total (a fast newline count, no parsing)."""
    n = 0
    last = b"\n"
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


@contextlib.asynccontextmanager
async def _target(config: RunConfig) -> AsyncIterator[str]:
    """The base URL to talk to: the configured one, or a built-in mock on a free loopback port."""
    if config.base_url:
        yield config.base_url.rstrip("/")
        return
    from .mock import MockConfig, serve

    try:
        mock_config = MockConfig(**dict(config.mock))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[mock] options: {exc}") from exc
    async with serve(mock_config) as url:
        yield url


async def run(
    jobs: Iterable[Job | BadLine] | Path | str,
    config: RunConfig,
    *,
    sink: Sink | None = None,
    handle_signals: bool = False,
    on_tick: Callable[[LiveStats], None] | None = None,
) -> RunOutcome:
    """Run a batch and return its outcome (summary, exit code, why it stopped early).

    :param jobs: a JSONL path, or an iterable of :class:`~runner.models.Job` (and
        :class:`~runner.models.BadLine`) such as :func:`runner.jobs.read_jobs` yields.
    :param config: the run configuration; outputs default to files next to the jobs file.
    :param sink: where results go; by default the results/latency files of the config, opened
        for resume (done jobs are skipped).
    :param handle_signals: install SIGINT/SIGTERM handlers that drain and stop (the CLI does).
    :param on_tick: called about five times a second with live counters.
    """
    jobs_path: Path | None = None
    items: Iterable[Job | BadLine]
    if isinstance(jobs, str | Path):
        jobs_path = Path(jobs)
        contexts = (
            load_contexts(config.contexts, max_line_bytes=config.max_line_bytes)
            if config.contexts
            else {}
        )
        items = read_jobs(jobs_path, contexts=contexts, max_line_bytes=config.max_line_bytes)
    else:
        items = jobs
    api_key = config.api_key()
    display = None
    if on_tick is None and jobs_path is not None:
        display = make_progress(config.progress)
    async with contextlib.AsyncExitStack() as stack:
        if sink is None:
            if jobs_path is None and config.output is None:
                raise ConfigError("an output path is needed when jobs are not read from a file")
            outputs = open_outputs(config, jobs_path=jobs_path, model=config.model)
            stack.callback(outputs.close)
            sink = outputs
        base_url = await stack.enter_async_context(_target(config))
        backend = await stack.enter_async_context(
            open_backend(config, base_url=base_url, api_key=api_key)
        )
        if config.base_url:
            problem = await backend.probe()
            if problem is not None:
                if problem.fatal:
                    raise AuthError(f"pre-flight check of {base_url} failed: {problem.message}")
                raise ConfigError(f"pre-flight check of {base_url} failed: {problem.message}")
        engine = Engine(
            config,
            backend=backend,
            sink=sink,
            limiter=RateController(concurrency=config.concurrency, rpm=config.rpm, tpm=config.tpm),
            jobs_name=str(jobs_path) if jobs_path else "jobs",
            on_tick=on_tick or (display.tick if display else None),
            release_on_first_byte=config.provider == "anthropic",
        )
        if display is not None and jobs_path is not None:  # a display implies a jobs file
            try:
                engine.stats.total = count_lines(jobs_path)
            except OSError as exc:
                raise InputError(f"{jobs_path}: cannot read: {exc.strerror}") from exc
        if handle_signals:
            _install_signals(engine)
        try:
            outcome = await engine.run(items)
        finally:
            if display is not None:
                display.close(engine.stats)
            if handle_signals:
                _remove_signals()
        if jobs_path is not None:
            summary_path = config.summary or default_paths(jobs_path, config)[2]
            write_summary(summary_path, outcome.summary)
        elif config.summary is not None:
            write_summary(config.summary, outcome.summary)
        return outcome


def _install_signals(engine: Engine) -> None:
    loop = asyncio.get_running_loop()
    seen = 0

    def on_signal(signum: int) -> None:
        nonlocal seen
        seen += 1
        # The second signal stops at once; files stay consistent since writes are whole lines.
        engine.request_stop("signal", 128 + signum, hard=seen > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)


def _remove_signals() -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
