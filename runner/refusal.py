"""The metrics textfile of a run that ends with an error instead of a summary.

A scheduled run refused before its first request (exit 2: bad input, a bad config, an output
path refused; or the pre-flight check's 3 or 75) wrote no ``--metrics-textfile``, so the
textfile collector kept the last good run's ``runner_exit_code 0`` and an alert on it never
fired. :func:`export_refusal` writes that file's end gauges alone
(:meth:`runner.metrics.RunMetrics.write_end_gauges`: the exit code, the time it ended, the last
success time kept), atomically as a run's end does, keeping the file's other figures, and
touches nothing else: not the results, not any other output.

Only when the textfile's path itself is known and valid: the options that name it and the
run's metric identity (``metrics_textfile``, ``metrics_job``, ``metrics_labels``) are read from
the flags and the config file alone, so that a config refused for another key still names
them, and they must pass the checks a run makes (labels, paths). The path must be no input and
no other output of the run, a regular file or none in an existing directory, and an existing
file must read as Prometheus text (a typo naming another file is never overwritten). Otherwise
nothing is written.

A ``--workers`` or ``--via batch`` run exports no metrics (the config refuses the flags with
them: each worker would export only its shard, and the batch engine has no observer), so a
schedule that adds either to a command with ``--metrics-textfile`` is refused, exit 2, on every
run. That refusal writes the end gauges too (only the exit code and the times, which one
process says for the whole run: the figures a worker could not tell are not written), under the
same rules; its outputs include the workers' shard files, limits file and merge marker, and the
batch journal's meta file. A worker (``--as-worker``) never writes: its parent says the run's end.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .config import RunConfig, config_from_mapping, read_toml
from .errors import ConfigError

__all__ = ["export_refusal", "refusal_target"]

#: The keys that decide where the textfile is, whose series it holds, and whether a run may
#: write one at all; the rest of a config cannot change them.
_KEYS = (
    "metrics_textfile",
    "metrics_job",
    "metrics_labels",
    "output",
    "latency",
    "summary",
    "contexts",
    "shard",
    "shard_count",
    "workers",
    "via",
    "dry_run",
)
#: Keys whose checks against the exporting flags are the refusal itself (see above): checked
#: on their own, then left out of the config that names the textfile.
_SCALE = ("workers", "via")


def refusal_target(ns: argparse.Namespace) -> RunConfig | None:
    """The config of those keys for ``runner run``'s arguments ``ns``, or None when the
    textfile is not asked for or its path or identity cannot be known for sure."""
    target = _target(ns)
    return None if target is None else target[0]


def _target(ns: argparse.Namespace) -> tuple[RunConfig, RunConfig] | None:
    """(the config naming the textfile and its identity, the same keys' ``--workers`` and
    ``--via`` checked without the exporting flags), or None as :func:`refusal_target`."""
    if getattr(ns, "as_worker", False):
        return None  # the parent says the run's end
    data: dict[str, Any] = {}
    if ns.config is not None:
        try:
            raw = read_toml(ns.config)
        except ConfigError:
            return None  # not TOML: its metrics_job or labels may be anything
        for key, value in raw.items():
            if key.replace("-", "_") in _KEYS:
                data[key.replace("-", "_")] = value
    from . import observe

    given = {k: v for k, v in vars(ns).items() if k in _KEYS}
    given |= {k: v for k, v in observe.overrides(ns).items() if k in _KEYS}
    exporting = ("metrics_textfile", "metrics_job", "metrics_labels")
    try:
        config = config_from_mapping(
            {k: v for k, v in data.items() if k not in _SCALE}, str(ns.config)
        ).with_overrides(**{k: v for k, v in given.items() if k not in _SCALE})
        scale = config_from_mapping(
            {k: v for k, v in data.items() if k not in exporting}, str(ns.config)
        ).with_overrides(**{k: v for k, v in given.items() if k not in exporting})
    except (ConfigError, ValueError, TypeError):
        return None
    if config.metrics_textfile is None or config.dry_run:
        return None  # a dry run exports no metrics
    return config, scale


def export_refusal(ns: argparse.Namespace, exit_code: int) -> None:
    """Write the end gauges of a run refused with ``exit_code`` to its metrics textfile, when
    its path is known and valid (see the module's description); otherwise nothing."""
    target = _target(ns)
    if target is None:
        return
    config, scale = target
    path = config.metrics_textfile
    assert path is not None
    if not _may_write(path, ns, config, scale):
        return
    from .metrics import RunMetrics

    metrics = RunMetrics(job_name=config.metrics_job, labels=config.metrics_labels)
    try:
        metrics.write_end_gauges(path, exit_code, time.time())
    except OSError as exc:
        said = f"could not export metrics to textfile {path}: {exc.strerror or exc}"
        if getattr(ns, "log_format", None) == "json":
            from .logs import note_line

            note_line(said)
        elif not getattr(ns, "quiet", False):
            print(f"runner: warning: {said}", file=sys.stderr)


def _may_write(path: Path, ns: argparse.Namespace, config: RunConfig, scale: RunConfig) -> bool:
    from .outputs import OutputPlan, beside, check_outputs
    from .sinks import default_paths

    try:
        results, latency, summary = default_paths(ns.jobs, config)
        others = [results, latency, summary]
        if config.shard is not None or config.shard_count is not None:
            from .shards import apply_shard, resolve_shard

            spec = resolve_shard(config, os.environ)
            if spec is not None:
                shard = apply_shard(config, ns.jobs, spec)
                others += [p for p in (shard.output, shard.latency, shard.summary) if p]
        if scale.via == "batch":
            others.append(OutputPlan(results, latency, summary).meta)  # the batch journal
        if scale.workers > 1:
            from .merge import MERGED_SUFFIX
            from .shards import ShardSpec, shard_path

            for k in range(scale.workers):
                spec = ShardSpec(k, scale.workers)
                part = [shard_path(p, spec) for p in (results, latency, summary)]
                others += [p for _, p in OutputPlan(*part).labelled()]
            others += [beside(results, ".limits.json"), beside(results, MERGED_SUFFIX)]
        # The run's inputs and its other outputs alike: the textfile is none of them.
        named = [("the jobs file", ns.jobs), ("the contexts file", config.contexts)]
        named += [("the config file", ns.config)]
        named += [("an output", p) for p in others if str(p) != "-"]
        check_outputs([("the metrics textfile", path)], named)
    except (ConfigError, OSError, ValueError):
        return False
    if not path.parent.is_dir():
        return False  # a run would create the directory; a refused one creates nothing
    return not path.exists() or _prometheus_text(path)


def _prometheus_text(path: Path) -> bool:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        list(text_string_to_metric_families(path.read_text()))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return True
