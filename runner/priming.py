"""Warming a cache group before its followers go: the engine's primer-side helpers.

A primer is the first request of a cache group (see :mod:`runner.cache`). Depending on what the
provider can do (:class:`~runner.providers.capabilities.Capabilities`) its followers are
released when its first byte arrives, after a write-only pre-warm request, or once an explicit
provider cache (Gemini ``cachedContents``) is open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .cache import Scheduler
from .models import Attempt, ErrorInfo, estimate_tokens

if TYPE_CHECKING:
    from .accounting import Accounts
    from .budget import RequestBudget
    from .cache import Dispatch
    from .config import RunConfig
    from .explicit_cache import ExplicitCaches
    from .pipeline import Backend, Limiter
    from .providers.capabilities import Capabilities

__all__ = ["Priming", "scheduler_for"]


def scheduler_for(config: RunConfig, budget: RequestBudget, caps: Capabilities) -> Scheduler:
    """The cache scheduler a run's config describes."""
    return Scheduler(
        strategy=config.cache,
        ttl_s=config.cache_ttl_s,
        max_active_groups=config.max_active_groups,
        min_cacheable_tokens=budget.min_cacheable_tokens,
        lookahead=2 * config.concurrency,
        max_per_group=config.group_concurrency or config.concurrency,
        adapt=config.cache_adapt,
        concurrency=config.concurrency,
        default_max_tokens=budget.default_completion,
        key_rpm=config.key_rpm if config.cache == "warm" and caps.spreads_cache_keys else None,
    )


class Priming:
    """Primer-side steps of one run; ``pump`` lets the engine send what a step released."""

    __slots__ = (
        "_accounts",
        "_backend",
        "_first_byte",
        "_limiter",
        "_prewarm",
        "_pump",
        "_scheduler",
        "explicit",
    )

    def __init__(
        self,
        scheduler: Scheduler,
        backend: Backend,
        limiter: Limiter,
        accounts: Accounts,
        explicit: ExplicitCaches | None,
        pump: Callable[[], None],
        caps: Capabilities,
    ) -> None:
        self._scheduler = scheduler
        self._backend = backend
        self._limiter = limiter
        self._accounts = accounts
        self._pump = pump
        self.explicit = explicit
        self._first_byte = caps.release_on_first_byte
        self._prewarm = caps.prewarm

    async def before(self, d: Dispatch, explicit: ExplicitCaches | None) -> None:
        """What a job does before its first attempt: a primer's pre-warm (where the provider
        supports one), opening or extending its group's explicit cache."""
        if self._prewarm and d.role == "primer":
            await self.prewarm(d)
        if explicit is not None:
            await self.open_explicit(explicit, d)

    def answered(self, d: Dispatch, explicit: ExplicitCaches | None, a: Attempt) -> None:
        """A primer (or a job on an explicit cache) got its answer."""
        if d.role == "primer":
            self._scheduler.answered(d, True)
        if explicit is not None:
            explicit.answered(a.latency_ms / 1000.0)

    async def lost(
        self, d: Dispatch, explicit: ExplicitCaches, key: str | None, err: ErrorInfo
    ) -> bool:
        """True when the error was the group's explicit cache gone missing: it has been
        recreated (or the group falls back to the full prompt) and the job goes again at once."""
        if key is None or err.code != "cache_missing":
            return False
        await explicit.lost(d.group or "", key, d.job, self.group_left(d))
        return True

    def on_first_byte(self, d: Dispatch) -> Callable[[], None] | None:
        """For a primer: a callback that releases its group when the first byte arrives
        (``Capabilities.release_on_first_byte``), else None."""
        if not self._first_byte:
            return None

        def released() -> None:
            self._scheduler.answered(d, True)
            self._pump()

        return released

    async def prewarm(self, d: Dispatch) -> None:
        """A write-only pre-warm request (``Capabilities.prewarm``): bills only the cache write."""
        job = d.job
        est = estimate_tokens(job.prefix_chars)
        self._accounts.stats.limiter_s += await self._limiter.acquire(est)
        a = await self._backend.send(job, cache_key=d.cache_key, prewarm=True)
        self._limiter.release(est, a)
        if a.usage is not None:
            self._accounts.overhead(a.usage, job.model)
        if a.error is None:
            # The prefix is written: the followers go now, not at the primer's first byte.
            self._scheduler.answered(d, True)
            self._pump()

    def group_left(self, d: Dispatch) -> int:
        """Jobs of ``d``'s group still to answer (at least 1)."""
        return (self._scheduler.pending(d.group) or 1) if d.group is not None else 1

    async def open_explicit(self, explicit: ExplicitCaches, d: Dispatch) -> None:
        """A primer opens its group's explicit cache, then releases the followers; others
        only extend the cache when it is close to expiring."""
        if d.role == "primer":
            assert d.group is not None
            await explicit.open(d.group, d.job, self.group_left(d))
            self._scheduler.answered(d, True)
            self._pump()
        else:
            explicit.touch(d.group, self.group_left(d))

    def finished(self, d: Dispatch) -> None:
        """``d`` is done: close its group's explicit cache after the group's last job."""
        explicit = self.explicit
        if explicit is not None and d.group is not None and d.role != "none":
            if self._scheduler.pending(d.group) is None:
                explicit.close(d.group)
