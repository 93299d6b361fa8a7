"""A nightly Airflow task that calls runner's Python API in the worker (no subprocess).

``run_batch`` is plain Python, so it runs (and is tested) without Airflow; the DAG below is
defined only where Airflow is installed. Exit codes become Airflow's retry semantics: 0 returns
the summary (an XCom), 75 and an interruption raise a retriable error (the retry resumes), and
anything else fails the task without retries.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from runner import RunConfig, load_config, run
from runner.errors import RunnerError

EXIT_TRANSIENT = 75
RETRIABLE = {EXIT_TRANSIENT, 129, 130, 143}  # 129: SIGHUP, drained like SIGTERM

try:  # Airflow is only on the scheduler's workers
    from airflow.exceptions import AirflowFailException as PermanentRunError
except ImportError:  # pragma: no cover - depends on the environment

    class PermanentRunError(RuntimeError):  # type: ignore[no-redef]
        """Retrying cannot help (bad input, failed jobs, a guard)."""


class TransientRunError(RuntimeError):
    """Stopped by a transient condition: a retry later resumes the run."""


def run_batch(jobs: str, config_path: str | None = None, **overrides: Any) -> dict[str, Any]:
    """Run ``jobs`` with the config file and overrides; return the summary or raise."""
    config: RunConfig = load_config(Path(config_path) if config_path else None)
    # JSON events go to the task log through Airflow's own logging of stderr.
    config = config.with_overrides(log_format="json", progress="off", **overrides)
    try:
        outcome = asyncio.run(run(jobs, config))
    except RunnerError as exc:
        if exc.exit_code in RETRIABLE:
            raise TransientRunError(str(exc)) from exc
        raise PermanentRunError(f"exit {exc.exit_code}: {exc}") from exc
    if outcome.exit_code == 0:
        return outcome.summary
    if outcome.exit_code in RETRIABLE:
        raise TransientRunError(f"exit {outcome.exit_code}: stopped by {outcome.stopped}")
    raise PermanentRunError(f"exit {outcome.exit_code}: {outcome.summary['jobs']}")


try:
    from airflow.decorators import dag, task
except ImportError:  # pragma: no cover - depends on the environment
    dag = None

if dag is not None:  # pragma: no cover - needs Airflow

    @dag(
        schedule="15 2 * * *",
        start_date=datetime(2026, 1, 1),
        catchup=False,
        max_active_runs=1,  # never two runs on the same outputs
        default_args={"retries": 3, "retry_delay": timedelta(minutes=15)},
        tags=["runner"],
    )
    def runner_nightly() -> None:
        @task
        def batch() -> dict[str, Any]:
            return run_batch(
                "/srv/batch/jobs.jsonl",
                "/srv/batch/runner.toml",
                pushgateway="http://pushgateway.monitoring:9091",
                metrics_job="nightly",
            )

        batch()

    runner_nightly()
