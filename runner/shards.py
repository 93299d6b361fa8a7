"""Shards: one run split over N processes or machines without splitting a cache group.

A job belongs to shard ``blake2b(group) mod N`` when it has a cache group, else to
``blake2b(custom_id) mod N`` (a line without a readable id: ``line-L``). A group therefore never
straddles two shards, so its one primer warms the cache for every follower. The hash is a keyed
digest of the text, not Python's ``hash()``, so every process and host agrees on it.

Shard indices are **0-based**: ``--shard 0/4`` .. ``--shard 3/4``, matching Kubernetes'
``JOB_COMPLETION_INDEX``. Each shard reads the whole input (duplicate ids are found the same
way in every shard) but builds and sends only its own jobs (:class:`ShardPicker`), and writes
its own outputs ``R.shard-K-of-N.results.jsonl`` (latency, summary, lock and meta likewise), so
it resumes on its own. A small manifest ``R.shard-K-of-N.results.jsonl.shard.json`` records the
input, model and ``K/N`` for :mod:`runner.merge`, which combines the parts.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .config import RunConfig
from .errors import ConfigError
from .models import BadLine, Context, Job
from .sinks import NOTHING_YET, default_paths, replace_bytes

__all__ = [
    "MANIFEST_SUFFIX",
    "ShardPicker",
    "ShardSpec",
    "apply_shard",
    "count_shard_jobs",
    "filter_items",
    "manifest_path",
    "parse_shard",
    "read_manifest",
    "resolve_shard",
    "shard_from_env",
    "shard_of",
    "shard_path",
    "unchanged_input",
    "write_manifest",
]

MANIFEST_SUFFIX = ".shard.json"
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_KINDS = (".results.jsonl", ".latency.jsonl", ".summary.json")
#: More shards than any orchestrator runs (Slurm's array size stops at 4,000,001, Kubernetes'
#: Indexed Jobs at 100,000): a larger N is a typo, refused before anything is written (a count
#: past 64 bits once ended in a traceback after the outputs were created).
MAX_SHARDS = 10_000_000


@dataclass(frozen=True, slots=True)
class ShardSpec:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"shard count must be >= 1, got {self.count}")
        if self.count > MAX_SHARDS:
            raise ConfigError(f"shard count must be <= {MAX_SHARDS:,}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise ConfigError(
                f"shard index {self.index} is outside 0..{self.count - 1} "
                "(shard indices are 0-based, like JOB_COMPLETION_INDEX)"
            )

    @property
    def tag(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> ShardSpec:
    """``"K/N"`` (0-based K) as a :class:`ShardSpec`; a clear :class:`ConfigError` otherwise."""
    m = _SPEC.match(text)
    if m is None:
        raise ConfigError(f"--shard: expected K/N such as 0/4, got {text!r}")
    return ShardSpec(int(m.group(1)), int(m.group(2)))


def shard_from_env(env: Mapping[str, str], count: int | None) -> ShardSpec | None:
    """The shard an orchestrator assigned through the environment, or None.

    - Kubernetes Indexed Job: ``JOB_COMPLETION_INDEX`` (0-based) with N from ``count``
      (``--shard-count`` or ``shard_count`` in the config): the pod spec does not carry N.
    - Slurm job array: ``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``; the index is
      taken relative to ``SLURM_ARRAY_TASK_MIN`` and in ``SLURM_ARRAY_TASK_STEP`` s, so
      ``--array=0-3``, ``--array=1-4`` and ``--array=0-6:2`` all work (a list does not).
    """
    k8s = env.get("JOB_COMPLETION_INDEX")
    if k8s is not None:
        if count is None:
            raise ConfigError(
                "JOB_COMPLETION_INDEX is set: give the shard count with --shard-count"
            )
        return ShardSpec(_int(k8s, "JOB_COMPLETION_INDEX"), count)
    task = env.get("SLURM_ARRAY_TASK_ID")
    if task is not None:
        n = env.get("SLURM_ARRAY_TASK_COUNT")
        total = _int(n, "SLURM_ARRAY_TASK_COUNT") if n is not None else count
        if total is None:
            raise ConfigError("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT")
        low = _int(env.get("SLURM_ARRAY_TASK_MIN", "0"), "SLURM_ARRAY_TASK_MIN")
        step = _int(env.get("SLURM_ARRAY_TASK_STEP", "1"), "SLURM_ARRAY_TASK_STEP")
        high = env.get("SLURM_ARRAY_TASK_MAX")
        offset = _int(task, "SLURM_ARRAY_TASK_ID") - low
        # --array=0-6:2 gives ids 0, 2, 4, 6: shards 0-3, not 0, 2 and two out of range. A list
        # (--array=1,2,5) is no even range, and no index can be told from its ids.
        even = step > 0 and offset % step == 0
        if even and high is not None:
            even = (_int(high, "SLURM_ARRAY_TASK_MAX") - low) // step + 1 == total
        if not even:
            raise ConfigError(
                f"the Slurm array's task ids ({low} to {high}, step {step}, {total} tasks) are "
                "not an evenly spaced range: use --array=0-N-1 (a step and a % limit are fine), "
                "or --shard K/N"
            )
        return ShardSpec(offset // step, total)
    return None


def _int(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None


def shard_of(item: Job | BadLine, count: int) -> int:
    """The shard a job or bad line belongs to: by cache group, else by id (else by line)."""
    key = item.group if isinstance(item, Job) and item.group is not None else None
    text = "g:" + key if key is not None else "i:" + (item.custom_id or f"line-{item.line}")
    return _hash_shard(text, count)


def _hash_shard(text: str, count: int) -> int:
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


class ShardPicker:
    """Chooses the items of shard ``spec``, as early as a line allows.

    :meth:`maybe` is :func:`runner.jobs.read_jobs`' ``keep``: it sees a line's parsed object
    once its id is claimed and says False only when the line belongs to another shard whatever
    it turns out to be, so that line is never built into a :class:`Job`. A line's key is its id
    unless it becomes a job with a cache group (then the group); a line whose id and possible
    group both hash elsewhere is therefore another shard's, valid or not. Only a line that may
    have an automatic group (``messages``, or the OpenAI Batch shape), whose group needs its
    messages checked and digested, is built first; :meth:`mine` then decides exactly, as
    :func:`shard_of` does, so the assignment is the same either way.
    """

    __slots__ = ("_contexts", "_groups", "_id_mine", "count", "index")

    def __init__(self, spec: ShardSpec, contexts: Mapping[str, Context] | None = None) -> None:
        self.count = spec.count
        self.index = spec.index
        self._contexts: Mapping[str, Context] = contexts or {}
        self._groups: dict[str, bool] = {}  # a group's shard is hashed once and remembered
        # The id :meth:`maybe` last found hashing here: the item built from that line (read
        # next, before any other line) is not hashed a second time when its key is that id.
        self._id_mine: str | None = None

    def _group_mine(self, group: str) -> bool:
        mine = self._groups.get(group)
        if mine is None:
            mine = self._groups[group] = _hash_shard("g:" + group, self.count) == self.index
        return mine

    def mine(self, item: Job | BadLine) -> bool:
        """Whether ``item`` is this shard's (exactly :func:`shard_of`)."""
        group = item.group if isinstance(item, Job) else None
        if group is not None:
            return self._group_mine(group)
        cid = item.custom_id
        if cid is not None and cid == self._id_mine:
            return True  # keyed by this id, which maybe() just hashed to this shard
        return shard_of(item, self.count) == self.index

    def maybe(self, obj: dict[str, Any], custom_id: str, batch: bool) -> bool:
        """False when the line with this object and claimed id is surely another shard's."""
        if _hash_shard("i:" + custom_id, self.count) == self.index:
            self._id_mine = custom_id
            return True
        if batch:
            return True  # its group (if any) comes from its messages: decided once built
        cache_id = obj.get("cache_id")
        if cache_id is None:
            # without a context only messages can make a group; a query job is keyed by its id
            return obj.get("messages") is not None
        context = self._contexts.get(cache_id) if type(cache_id) is str else None
        if context is None:
            return False  # an unknown or malformed cache_id: a bad line, keyed by its id
        return self._group_mine(f"{cache_id}:{context.digest}")  # as runner.jobs names it

    def filter(self, items: Iterable[Job | BadLine]) -> Iterator[Job | BadLine]:
        mine = self.mine
        for item in items:
            if mine(item):
                yield item


def count_shard_jobs(
    path: Path, spec: ShardSpec, contexts: Mapping[str, Context], max_line_bytes: int
) -> int:
    """The lines of ``path`` that are shard ``spec``'s, each of which gets one result line:
    the whole file parsed as a run of that shard reads it (:class:`ShardPicker`). For a stopped
    run's ``not_sent`` only (runner/api.py), never on the way of a run that finishes.

    :raises InputError: the file cannot be opened.
    :raises OSError: it cannot be read.
    """
    from .jobs import read_jobs

    pick = ShardPicker(spec, contexts)
    items = read_jobs(path, contexts=contexts, max_line_bytes=max_line_bytes, keep=pick.maybe)
    return sum(1 for _ in pick.filter(items))


def filter_items(items: Iterable[Job | BadLine], spec: ShardSpec) -> Iterator[Job | BadLine]:
    """Only the items of shard ``spec``; a group's shard is hashed once and remembered."""
    return ShardPicker(spec).filter(items)


def shard_path(path: Path, spec: ShardSpec) -> Path:
    """``x.results.jsonl`` -> ``x.shard-K-of-N.results.jsonl`` (likewise latency and summary);
    any other name gets the tag before its last suffix."""
    name = path.name
    for kind in _KINDS:
        if name.endswith(kind) and len(name) > len(kind):
            return path.with_name(f"{name[: -len(kind)]}.{spec.tag}{kind}")
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return path.with_name(f"{name}.{spec.tag}")
    return path.with_name(f"{stem}.{spec.tag}.{ext}")


def manifest_path(results: Path) -> Path:
    return results.with_name(results.name + MANIFEST_SUFFIX)


def write_manifest(
    results: Path,
    *,
    spec: ShardSpec,
    jobs_path: Path,
    latency: Path,
    summary: Path,
    model: str,
    order: str = "completion",
    contexts: Path | None = None,
) -> None:
    """Record which input, model and shard wrote ``results`` (atomic: temp file + rename), and
    its ``--order``, so that ``runner merge`` can keep input order."""
    data = {
        "shard": spec.index,
        "count": spec.count,
        "jobs_file": str(jobs_path.resolve()),
        "fingerprint": _fingerprint(jobs_path),
        "model": model,
        "results": results.name,
        "latency": os.path.relpath(latency, results.parent),
        "summary": os.path.relpath(summary, results.parent),
        "order": order,
    }
    if contexts is not None:  # an input too: runner merge never writes over it
        data["contexts_file"] = str(contexts.resolve())
        # and one the parts must share: an edit between two shards' runs moves groups between
        # shards (a group is keyed by its text), so jobs were sent by none or by two of them
        data["contexts_fingerprint"] = _fingerprint(contexts)
    # a full disk is exit 75, as for the shard's other outputs
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    replace_bytes(manifest_path(results), text, left=NOTHING_YET)  # before the run sends


def read_manifest(results: Path) -> dict[str, Any]:
    path = manifest_path(results)
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{results}: not a shard's results (no {path.name})") from None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable shard manifest: {exc}") from exc
    if not isinstance(data, dict) or not {"shard", "count", "fingerprint"} <= data.keys():
        raise ConfigError(f"{path}: not a shard manifest")
    return data


def unchanged_input(manifest: Mapping[str, Any]) -> Path | None:
    """The jobs file a manifest names, when it still holds the bytes the shard read."""
    jobs = manifest.get("jobs_file")
    try:
        ok = isinstance(jobs, str) and _fingerprint(Path(jobs)) == manifest.get("fingerprint")
    except OSError:
        return None
    return Path(jobs) if ok and isinstance(jobs, str) else None


def _fingerprint(path: Path) -> str:
    """Size and digest of the whole input: parts of one run must have read the same bytes."""
    h = hashlib.blake2b(digest_size=16)
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return f"{size}:{h.hexdigest()}"


def resolve_shard(config: RunConfig, env: Mapping[str, str]) -> ShardSpec | None:
    """The shard this run is: ``--shard K/N``; ``--shard auto`` or ``--shard-count N`` take it
    from the orchestrator's environment (an explicit opt-in, so a plain run inside a Slurm array
    task is never split by surprise)."""
    if config.shard is not None and config.shard != "auto":
        return parse_shard(config.shard)
    if config.shard == "auto" or config.shard_count is not None:
        spec = shard_from_env(env, config.shard_count)
        if spec is None:
            raise ConfigError(
                "--shard auto / --shard-count: neither JOB_COMPLETION_INDEX nor "
                "SLURM_ARRAY_TASK_ID is set"
            )
        return spec
    return None


def apply_shard(config: RunConfig, jobs_path: Path, spec: ShardSpec) -> RunConfig:
    """The config of shard ``spec``: every output path gets the shard's tag.

    ``--summary -`` still gets a shard summary file (the merge reads it to know the shard
    finished); :func:`runner.run` prints the summary to standard output as well."""
    if config.summary_to_stdout:
        config = replace(config, summary=None)
    results, latency, summary = default_paths(jobs_path, config)
    return replace(
        config,
        output=shard_path(results, spec),
        output_is_dir=False,  # the shard's own results file, inside the directory if one
        latency=shard_path(latency, spec),
        summary=shard_path(summary, spec),
    )
