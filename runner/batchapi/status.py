"""``runner status OUTPUT``: the batch journal of a results file, read without changing it."""

from __future__ import annotations

import errno
import time
from pathlib import Path

from ..config import RunConfig
from ..errors import ConfigError
from ..providers._http import make_session
from ..runstatus import counted, merged_lines, pending_lines, run_lines, run_output, unmerged_lines
from ..sinks import meta_path_of, read_meta_section
from .journal import SECTION, Chunk
from .wire import BatchNotFound, BatchView, control_headers, open_batch_api

__all__ = ["fetch_live", "journaled_batches", "render_status"]


def _count_lines(path: Path) -> int:
    try:
        return counted(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ELOOP):  # no file (or a symlink loop): no lines
            return 0
        raise


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def render_status(results: Path, live: dict[str, BatchView] | None = None) -> str:
    """A table of every batch chunk of ``results`` (no lock taken, nothing written).

    :param live: the provider's current view of batches, by id (``runner status --live``);
        without it the table shows the state last journaled.
    """
    given, results = results, run_output(results)  # a symlink to a run's results: that run's
    if not meta_path_of(results).exists():
        merged = merged_lines(results, _count_lines(results))
        if merged is not None:  # `runner merge`'s output (or --workers' merged one)
            return "\n".join(merged) + "\n"
        pending = pending_lines(results, _count_lines(results))
        if pending is not None:  # a --workers run before its merge: its lock says who
            return "\n".join(pending) + "\n"
        unmerged = unmerged_lines(results)
        if unmerged is not None:  # the name shards were given (-o R), before runner merge
            return "\n".join(unmerged) + "\n"
        raise ConfigError(
            f"{results}: no meta file {meta_path_of(results)}: not a runner output"
            + _results_hint(results)
        )
    raw = read_meta_section(results, SECTION)
    done = _count_lines(results)
    lines = [f"{results}: {done:,} result lines", *run_lines(results, done)]
    if given != results:
        lines.insert(0, f"{given}: a symlink to {results}, the output of the run below")
    if not isinstance(raw, dict):
        lines.append("no batch journal (a direct run, or nothing submitted yet)")
        return "\n".join(lines) + "\n"
    chunks = [Chunk(**c) for c in raw.get("chunks", [])]
    lines.append(
        f"provider {raw.get('provider')}, run {raw.get('run_id')}, journal updated "
        f"{_when(raw.get('updated_at'))}"
    )
    header = ("chunk", "kind", "try", "jobs", "state", "batch", "status", "counts", "note")
    rows = [header]
    for c in chunks:
        if live and c.batch_id in live:
            view = live[c.batch_id]
            c.status, c.counts = view.status + " (live)", view.counts
        counts = ", ".join(f"{k} {v}" for k, v in c.counts.items()) or "-"
        rows.append(
            (
                c.key,
                c.kind,
                str(c.attempt),
                str(len(c.ids)),
                c.state,
                c.batch_id or "-",
                c.status or "-",
                counts,
                c.note or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    active = sum(1 for c in chunks if c.state != "done")
    lines.append(
        f"{len(chunks)} chunks, {active} not done"
        + ("; run the same command again to reattach" if active else "")
    )
    return "\n".join(lines) + "\n"


def journaled_batches(results: Path) -> list[str]:
    """Ids of the batches not yet collected, from the journal."""
    raw = read_meta_section(results, SECTION)
    if not isinstance(raw, dict):
        return []
    return [
        c["batch_id"]
        for c in raw.get("chunks", [])
        if c.get("batch_id") and c.get("state") != "done"
    ]


async def fetch_live(results: Path, config: RunConfig) -> dict[str, BatchView]:
    """GET each batch not yet collected (read-only requests; nothing is written)."""
    ids = journaled_batches(run_output(results))
    if not ids:
        return {}
    if not config.base_url:
        raise ConfigError("--live needs the provider: give -c CONFIG or --provider/--base-url")
    api_key = config.api_key()
    session = make_session(config, headers=control_headers(config, api_key))
    try:
        api = open_batch_api(config, session, base_url=config.base_url, api_key=api_key)
        live: dict[str, BatchView] = {}
        for i in ids:
            try:
                live[i] = await api.get(i)
            except BatchNotFound:  # shown as such: the run stops on it (docs/BATCH.md)
                live[i] = BatchView(i, "not found (404)", False, 0, 0, {})
        return live
    finally:
        await session.close()


def _results_hint(path: Path) -> str:
    """A run's latency file or summary named instead of its results (the files sit side by
    side and ``runner report`` takes the latency file), or the jobs file (whose results are
    ``JOBS.results.jsonl`` by default): name the results file to give."""
    for suffix in (".latency.jsonl", ".summary.json", ".jsonl"):
        if path.name.endswith(suffix):
            sibling = path.with_name(path.name[: -len(suffix)] + ".results.jsonl")
            if meta_path_of(sibling).exists():
                return f" (runner status reads the results file: {sibling})"
    return ""
