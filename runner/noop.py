"""A re-run that finds every job already done: what it leaves of the summary and the metrics.

A scheduler runs the same command again after a success (an hourly cron over a daily input, an
Airflow retry, a Kubernetes Job restarted after its run had finished): the resume skips every
job and sends nothing. The summary of such an invocation has the whole output's counts, tokens,
cost and percentiles (rebuilt from the latency file, :mod:`runner.totals`), but its wall time,
rates and ``this_run`` are zeros, and users read the real run's figures from the file. So:

* the summary file is left as it is when it already describes this output: the same job counts,
  errors, tokens, model and exit code, and a run that was not stopped (its cost, ``this_run``,
  wall time and rates stay those of the run that did the work; the cost is not compared: the
  rebuilt one lacks an explicit cache's storage and sums in another order). Otherwise (no
  summary, an unreadable one, one of an interrupted run or of other counts, say after a
  ``kill -9`` before the summary was written) it is written as for any resumed run. The token
  cost (``billed`` and ``uncached``, rebuilt from the tokens at this invocation's prices) is
  compared to a rounding's tolerance: a re-run with a corrected price must not keep the old
  price's cost in the file while its table prints the new one. A shard's
  summary is always written (the merge of ``--workers`` reads it as the invocation's record);
  the merged summary of ``--workers`` is kept by the same rule (runner/workers.py);
* the metrics (textfile and Pushgateway) follow the summary file, exported after it
  (:meth:`runner.observe.Observer.export`): when it is kept they keep every figure of the run
  that did the work; only
  ``runner_exit_code`` and ``runner_last_success_timestamp_seconds`` move: the invocation ran
  and, on exit 0, succeeded, so an alert on "no success in 24 h" stays quiet while the schedule
  keeps running, and fires when it stops. When it is rewritten (a corrected price) they are
  the rewritten summary's, so the textfile's cost is the file's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

__all__ = ["batch_summary_kept", "keep_summary", "nothing_sent", "summary_describes"]

# What a summary says about the output as a whole (runner.totals rebuilds them on a resume).
_WHOLE_OUTPUT = ("exit_code", "model", "tokens", "not_sent")
_JOB_COUNTS = ("total", "ok", "failed", "by_error")


def keep_summary(path: Path, summary: dict[str, Any], *, to_stdout: bool = False) -> bool:
    """Whether the summary file at ``path`` is left as it is instead of being written with
    ``summary``: the one rule of a plain run, the merge of ``--workers`` and ``--via batch``.

    True for an invocation that sent nothing and whose summary the file already is (see the
    module's docstring; a ``--via batch`` summary by :func:`batch_summary_kept`, any other by
    :func:`nothing_sent` and :func:`summary_describes`); never for ``-`` (standard output has
    no earlier summary). A kept file is said in ``summary["summary_kept"]`` (the table's "nothing
    sent" line; the key is in no file), except when ``to_stdout``: the summary also goes to
    standard output, which would then print a key that no summary file has.
    """
    if str(path) == "-":
        return False
    if summary.get("via") == "batch":
        kept = batch_summary_kept(path, summary)
    else:
        kept = nothing_sent(summary) and summary_describes(path, summary)
    if kept and not to_stdout:
        summary["summary_kept"] = str(path)
    return kept


def nothing_sent(summary: Mapping[str, Any]) -> bool:
    """Whether this invocation resumed an output whose every job was done, sending nothing."""
    run = summary.get("this_run")
    if not isinstance(run, Mapping) or summary.get("stopped") or summary.get("not_sent"):
        return False
    return bool(run["ok"] == 0 and run["failed"] == 0 and run["skipped_resumed"] > 0)


def summary_describes(path: Path, summary: Mapping[str, Any]) -> bool:
    """Whether the summary file at ``path`` already says what ``summary`` says of the output
    as a whole (job counts, errors, tokens, model, exit code) and was not stopped."""
    old = _earlier(path)
    if old is None or not isinstance(old.get("jobs"), dict):
        return False
    jobs, new_jobs = old["jobs"], summary["jobs"]
    return (
        all(jobs.get(k) == new_jobs.get(k) for k in _JOB_COUNTS)
        and all(old.get(k) == summary.get(k) for k in _WHOLE_OUTPUT)
        and _same_token_cost(old.get("cost"), summary.get("cost"))
    )


def _earlier(path: Path) -> dict[str, Any] | None:
    """The summary file at ``path``, when it is one of a run that was not stopped."""
    try:
        old = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return old if isinstance(old, dict) and not old.get("stopped") else None


def _same_token_cost(old: Any, new: Any) -> bool:
    """Whether two summaries' token costs agree, up to the summing order's rounding (the
    explicit caches' creation and storage, which a rebuild lacks, are other keys)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return bool(old == new)  # both without prices; a price added or dropped is a change
    try:
        return all(
            abs(float(old[k]) - float(new[k])) <= 1e-6 + 1e-6 * abs(float(new[k]))
            for k in ("billed", "uncached")
        )
    except (KeyError, TypeError, ValueError):
        return False


def batch_summary_kept(path: Path, summary: Mapping[str, Any]) -> bool:
    """Whether a ``--via batch`` invocation that found every job written (no batch created,
    found or collected) leaves the summary file at ``path`` as it is: one of an earlier batch
    invocation of this output, not stopped. Its own counts (``this_run``) are all zeros."""
    jobs, batch = summary.get("jobs"), summary.get("batch")
    if not isinstance(jobs, Mapping) or not isinstance(batch, Mapping):
        return False
    own = summary.get("this_run", jobs)
    idle = (
        not summary.get("stopped")
        and isinstance(own, Mapping)
        and own.get("ok") == own.get("failed") == 0
        and jobs.get("skipped_resumed", 0) > 0
        and not (batch.get("batches_created") or batch.get("batches_recovered"))
        and not batch.get("pending_jobs")
    )
    if not idle:
        return False
    old = _earlier(path)
    if old is None or old.get("via") != "batch":
        return False
    old_jobs, old_batch = old.get("jobs"), old.get("batch")
    return (
        isinstance(old_jobs, dict)
        and isinstance(old_batch, dict)
        and old_jobs.get("total") == jobs.get("total")
        and old_batch.get("provider") == batch.get("provider")
        and old_batch.get("batches_total") == batch.get("batches_total")
    )
