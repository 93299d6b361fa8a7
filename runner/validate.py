"""``runner validate``: read every line, count cache groups, estimate tokens and cost; send nothing.

One streaming pass over the jobs file through :func:`runner.jobs.read_jobs`; memory grows with
the number of cache groups and models, never with the number of jobs (problem lines are counted
in full but only the first :data:`MAX_PROBLEMS` are kept).

The cache estimate assumes the ``warm`` strategy works perfectly: in every group whose static
prefix is at least ``min_cacheable_tokens`` long, the first job writes the prefix and every other
job reads it. The write is estimated as cache-write tokens (at the price's ``cache_write``) only
for a provider that bills one (``Capabilities.bills_cache_writes``); elsewhere it is plain input,
as the run's own cost counts it. Token counts are :func:`runner.models.estimate_tokens` of
character counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .budget import RequestBudget
from .config import RunConfig
from .jobs import read_jobs
from .models import BadLine, Context, Price, estimate_tokens
from .providers.capabilities import capabilities_for
from .stats import cost_of

__all__ = [
    "MAX_PROBLEMS",
    "ModelEstimate",
    "OverWindow",
    "ValidationReport",
    "render_validation",
    "validate_file",
]

MAX_PROBLEMS: Final = 1000  # problem lines kept for the listing; all of them are counted
_MAX_OVER_WINDOW: Final = 100
_TOP_GROUPS: Final = 10
STORAGE_REQUEST_S: Final = 5.0  # assumed seconds per request for the cache storage estimate


@dataclass(frozen=True, slots=True)
class OverWindow:
    """A job whose prompt plus completion budget does not fit the context window."""

    line: int
    custom_id: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class ModelEstimate:
    """Estimated tokens and cost of the jobs that go to one model."""

    jobs: int
    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    completion_tokens: int
    billed: float | None  # USD; None when the config has no price for the model
    uncached: float | None


@dataclass(frozen=True, slots=True)
class ValidationReport:
    """What ``validate`` found. Token figures are estimates; costs are USD."""

    jobs: int
    bad_lines: int  # every bad line, even beyond the ones kept in `problems`
    problems: tuple[BadLine, ...]  # the first MAX_PROBLEMS bad lines, in file order
    not_jsonl: bool  # no line at all was a JSON object
    groups: Mapping[str, int]  # jobs per cache group
    cacheable_groups: int  # groups whose prefix reaches min_cacheable_tokens
    ungrouped_jobs: int
    prompt_tokens: int
    cached_tokens: int  # under the warm strategy
    cache_write_tokens: int  # one write of each cacheable group's prefix
    completion_tokens: int
    models: Mapping[str, ModelEstimate]
    short_contexts: tuple[tuple[str, int], ...]  # (cache_id, tokens) below min_cacheable_tokens
    over_window: tuple[OverWindow, ...]  # the first few; `over_window_jobs` counts them all
    over_window_jobs: int
    min_cacheable_tokens: int
    context_window: int | None
    # explicit caches (a price with cache_storage): USD for storing each group's prefix while
    # its jobs run, assuming STORAGE_REQUEST_S per request; None without a storage price
    storage_cost: float | None = None
    # the provider bills cache writes (Capabilities.bills_cache_writes); else none are estimated
    bills_cache_writes: bool = True

    @property
    def cost_billed(self) -> float | None:
        """Estimated cost with caching; None unless every model used has a price."""
        return _total(m.billed for m in self.models.values())

    @property
    def cost_uncached(self) -> float | None:
        return _total(m.uncached for m in self.models.values())


def _total(values: Any) -> float | None:
    out = 0.0
    for v in values:
        if v is None:
            return None
        out += v
    return out


class _Group:
    __slots__ = ("jobs", "model", "prefix_tokens")

    def __init__(self, model: str, prefix_tokens: int) -> None:
        self.jobs = 0
        self.model = model  # the first job's: a group is assumed to go to one model
        self.prefix_tokens = prefix_tokens


def validate_file(
    path: Path, *, contexts: Mapping[str, Context], config: RunConfig
) -> ValidationReport:
    """Read the whole jobs file and estimate what running it would cost.

    :param path: the jobs JSONL file.
    :param contexts: contexts by ``cache_id``, from :func:`runner.jobs.load_contexts`.
    :param config: supplies the default model, params, prices, ``min_cacheable_tokens`` and
        ``context_window``.
    :raises InputError: when the file cannot be opened.
    """
    budget = RequestBudget.for_run(config)
    default_completion = budget.default_completion
    jobs = bad_lines = unparsed = ungrouped = over_count = 0
    problems: list[BadLine] = []
    over: list[OverWindow] = []
    groups: dict[str, _Group] = {}
    per_model: dict[str, list[int]] = {}  # model -> [jobs, prompt tokens, completion tokens]
    for item in read_jobs(path, contexts=contexts, max_line_bytes=config.max_line_bytes):
        if isinstance(item, BadLine):
            bad_lines += 1
            unparsed += item.field is None
            if len(problems) < MAX_PROBLEMS:
                problems.append(item)
            continue
        jobs += 1
        model = item.model or config.model
        prompt = estimate_tokens(item.prompt_chars)
        completion = item.max_tokens or default_completion
        acc = per_model.setdefault(model, [0, 0, 0])
        acc[0] += 1
        acc[1] += prompt
        acc[2] += completion
        if item.group is None:
            ungrouped += 1
        else:
            group = groups.get(item.group)
            if group is None:
                group = groups[item.group] = _Group(model, estimate_tokens(item.prefix_chars))
            group.jobs += 1
        if budget.over_window(prompt, completion):
            over_count += 1
            if len(over) < _MAX_OVER_WINDOW:
                over.append(OverWindow(item.line, item.custom_id, prompt, completion))

    # cached reads and writes per model, from the groups that can be cached at all
    cache: dict[str, tuple[int, int]] = {}  # model -> (cached tokens, cache-write tokens)
    cacheable = 0
    storage: float | None = None
    # A group's cache lives while its jobs run, at its share of the concurrency.
    per_group = max(1.0, config.concurrency / config.max_active_groups)
    # A group's first request writes its prefix; only some providers bill that as cache-write
    # tokens (as the run's cost counts the usage's cache writes). Elsewhere it is plain input.
    writes = capabilities_for(config).bills_cache_writes
    for group in groups.values():
        if budget.cacheable(group.prefix_tokens):
            cacheable += 1
            price = config.price(group.model)
            if price is not None and price.cache_storage:
                hours = group.jobs / per_group * STORAGE_REQUEST_S / 3600.0
                storage = (storage or 0.0) + group.prefix_tokens * hours * price.cache_storage / 1e6
            cached, written = cache.get(group.model, (0, 0))
            cache[group.model] = (
                cached + (group.jobs - 1) * group.prefix_tokens,
                written + group.prefix_tokens if writes else 0,
            )
    models: dict[str, ModelEstimate] = {}
    for model, (n, prompt, completion) in sorted(per_model.items()):
        cached, written = cache.get(model, (0, 0))
        models[model] = _estimate(n, prompt, cached, written, completion, config.price(model))
    short = tuple(
        (cache_id, estimate_tokens(ctx.chars))
        for cache_id, ctx in sorted(contexts.items())
        if not budget.cacheable(estimate_tokens(ctx.chars))
    )
    return ValidationReport(
        jobs=jobs,
        bad_lines=bad_lines,
        problems=tuple(problems),
        not_jsonl=jobs == 0 and bad_lines > 0 and unparsed == bad_lines,
        groups={key: g.jobs for key, g in groups.items()},
        cacheable_groups=cacheable,
        ungrouped_jobs=ungrouped,
        prompt_tokens=sum(m.prompt_tokens for m in models.values()),
        cached_tokens=sum(m.cached_tokens for m in models.values()),
        cache_write_tokens=sum(m.cache_write_tokens for m in models.values()),
        completion_tokens=sum(m.completion_tokens for m in models.values()),
        models=models,
        short_contexts=short,
        over_window=tuple(over),
        over_window_jobs=over_count,
        min_cacheable_tokens=budget.min_cacheable_tokens,
        context_window=config.context_window,
        storage_cost=storage,
        bills_cache_writes=writes,
    )


def _estimate(
    jobs: int,
    prompt: int,
    cached: int,
    written: int,
    completion: int,
    price: Price | None,
) -> ModelEstimate:
    billed = uncached = None
    if price is not None:
        # the same formula the run summary bills with, so the estimate and the bill agree
        billed, uncached = cost_of(prompt, cached, written, completion, price)
    return ModelEstimate(jobs, prompt, cached, written, completion, billed, uncached)


def render_validation(report: ValidationReport, path: Path) -> str:
    """A readable report: every problem kept (``FILE:LINE: field: problem``), then the totals."""
    out = [bad.message for bad in report.problems]
    if report.bad_lines > len(report.problems):
        hidden = report.bad_lines - len(report.problems)
        out.append(
            f"... and {hidden:,} more bad lines (only the first {MAX_PROBLEMS:,} are listed)"
        )
    if report.not_jsonl:
        out.append(
            f"{path}: this does not look like JSONL: no line is a JSON object "
            "(expected one JSON object per line, e.g. not a JSON array or CSV)"
        )
    out.append(f"{path}: {_n(report.jobs, 'job')}, {_n(report.bad_lines, 'bad line')}")
    out.extend(_render_groups(report))
    out.extend(_render_tokens(report))
    for cache_id, tokens in report.short_contexts:
        out.append(
            f"warning: context {cache_id!r} is ~{tokens:,} tokens, under min_cacheable_tokens "
            f"({report.min_cacheable_tokens:,}): it will never be cached"
        )
    for o in report.over_window:
        out.append(
            f"warning: {path}:{o.line} ({o.custom_id}): ~{o.prompt_tokens:,} prompt + "
            f"{o.completion_tokens:,} completion tokens exceed context_window "
            f"({report.context_window:,}): it will fail as invalid_input"
        )
    if report.over_window_jobs > len(report.over_window):
        out.append(
            f"... and {report.over_window_jobs - len(report.over_window):,} more over the window"
        )
    return "\n".join(out) + "\n"


def _n(n: int, what: str) -> str:
    """``1 job``, ``2 jobs``, ``1,000 bad lines``."""
    return f"{n:,} {what}" if n == 1 else f"{n:,} {what}s"


def _render_groups(report: ValidationReport) -> list[str]:
    out = [
        f"cache groups: {len(report.groups):,} ({report.cacheable_groups:,} long enough to cache, "
        f"prefix >= {report.min_cacheable_tokens:,} tokens); "
        f"{_n(report.ungrouped_jobs, 'job')} without a static prefix"
    ]
    top = sorted(report.groups.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_GROUPS]
    out.extend(f"  {key}: {_n(n, 'job')}" for key, n in top)
    if len(report.groups) > len(top):
        out.append(f"  ... and {_n(len(report.groups) - len(top), 'more group')}")
    return out


def _render_tokens(report: ValidationReport) -> list[str]:
    ratio = report.cached_tokens / report.prompt_tokens if report.prompt_tokens else 0.0
    out = [
        f"estimated tokens: prompt {report.prompt_tokens:,}, cached {report.cached_tokens:,} "
        f"({ratio:.1%} with --cache warm), "
        + (f"cache write {report.cache_write_tokens:,}, " if report.bills_cache_writes else "")
        + f"completion {report.completion_tokens:,}"
    ]
    for model, m in report.models.items():
        cost = (
            "no price in the config"
            if m.billed is None or m.uncached is None
            else f"${m.billed:,.4f} billed, ${m.uncached:,.4f} without caching"
        )
        out.append(f"  {model}: {_n(m.jobs, 'job')}, prompt {m.prompt_tokens:,} tokens; {cost}")
    billed, uncached = report.cost_billed, report.cost_uncached
    if billed is not None and uncached is not None and report.models:
        saving = 1 - billed / uncached if uncached else 0.0
        out.append(
            f"estimated cost: ${billed:,.4f} billed, ${uncached:,.4f} without caching "
            f"(saving {saving:.1%})"
        )
    elif report.models:
        out.append("estimated cost: unknown (add a [prices] table for every model to the config)")
    if report.storage_cost is not None:
        total = (billed or 0.0) + report.storage_cost
        out.append(
            f"explicit cache storage: ${report.storage_cost:,.6f} (each group's prefix stored "
            f"while its jobs run, ~{STORAGE_REQUEST_S:g} s a request); "
            f"${total:,.4f} with storage"
        )
    return out
