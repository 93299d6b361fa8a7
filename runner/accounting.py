"""One run's accounts: the live counters, the summary builder and the cost budget.

Every billed request is added here once: a job through :meth:`Accounts.job` (its final
latency record), a request that is not a job (a cache pre-warm) through
:meth:`Accounts.overhead`. Both feed the live counters (progress, metrics, the budget) and the
summary from the same call, so the two can never disagree on what was sent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ._records import MutableRecord
from .errors import BudgetExceeded, GuardTripped
from .models import Job, LatencyRecord, Usage, estimate_tokens
from .stats import SummaryBuilder, cost_of

if TYPE_CHECKING:
    from .budget import RequestBudget
    from .config import RunConfig

__all__ = ["HOLD", "Accounts", "LiveStats"]

#: :meth:`Accounts.reserve`: the request must wait for those in flight to settle.
HOLD = -1.0


@dataclass(slots=True, eq=False, repr=False)
class LiveStats(MutableRecord):
    """Counters the progress display reads; updated in place, never copied on the hot path.

    The token totals are read from the run's :class:`~runner.stats.SummaryBuilder`
    (``tokens_from``), which counts them once; without one (a ``--workers`` parent's display)
    they are 0.
    """

    total: int | None = None
    read: int = 0
    done: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    retries: int = 0
    in_flight: int = 0
    billed: float = 0.0
    limiter_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    tokens_from: SummaryBuilder | None = field(default=None, repr=False)
    workers: int | None = None  # a --workers parent: worker processes running, not requests

    @property
    def prompt_tokens(self) -> int:
        return 0 if self.tokens_from is None else self.tokens_from.prompt

    @property
    def cached_tokens(self) -> int:
        return 0 if self.tokens_from is None else self.tokens_from.cached

    @property
    def completion_tokens(self) -> int:
        return 0 if self.tokens_from is None else self.tokens_from.completion


class Accounts:
    """Live counters, summary and ``--max-cost`` of one run (see the module doc)."""

    __slots__ = (
        "_budget",
        "_inflight_cost",
        "_model",
        "_price_of",
        "_unmetered",
        "max_cost",
        "stats",
        "summary",
    )

    def __init__(self, config: RunConfig, budget: RequestBudget) -> None:
        # One pricing path: every job is priced by the model it is sent with.
        # A shard's builder keeps the busy intervals its S.state carries (runner/partstate.py).
        self.summary = SummaryBuilder(None, price_of=config.price, busy=config.shard is not None)
        self.stats = LiveStats(tokens_from=self.summary)  # one count of the tokens: the summary's
        self.max_cost = config.max_cost
        self._price_of = config.price
        self._model = config.model
        self._budget = budget
        self._inflight_cost = 0.0
        self._unmetered = 0  # answers without usage, billed at their reserved worst case

    def job(self, rec: LatencyRecord, limiter_s: float = 0.0) -> None:
        """Count one job's final record (its tokens, its cost, its outcome)."""
        self.summary.add(rec)
        s = self.stats
        s.done += 1
        s.limiter_s += limiter_s
        if rec.outcome == "ok":
            s.ok += 1
        else:
            s.failed += 1
        if rec.prompt_tokens or rec.completion_tokens:
            self._bill(
                rec.model,
                rec.prompt_tokens,
                rec.cached_tokens or 0,
                rec.cache_write_tokens,
                rec.completion_tokens,
            )

    def overhead(self, usage: Usage, model: str | None) -> None:
        """Count the tokens of a request that is not a job (a cache pre-warm): cost only."""
        cached = usage.cached_tokens or 0
        self.summary.add_usage(
            usage.prompt_tokens, cached, usage.cache_write_tokens, usage.completion_tokens,
            model=model,
        )  # fmt: skip
        self._bill(
            model, usage.prompt_tokens, cached, usage.cache_write_tokens, usage.completion_tokens
        )

    def _bill(self, model: str | None, prompt: int, cached: int, write: int, out: int) -> None:
        """The live cost (progress, ``--max-cost``); the tokens are the summary's count."""
        price = self._price_of(model)
        if price is not None:
            self.stats.billed += cost_of(prompt, cached, write, out, price)[0]

    # -- --max-cost ----------------------------------------------------------------------------

    def reserve(self, job: Job, in_flight: int) -> float:
        """The request's worst-case cost, reserved until :meth:`settle`; :data:`HOLD` when it
        must wait for the requests in flight.

        Worst case: its prompt estimate at the input price plus its completion budget at the
        output price (or the average finished request, if more). When that would cross the
        budget even with nothing in flight, the run must stop; when only what is in flight
        stands in the way, the request waits for it to settle, so the budget is spent, not
        reserved.

        :raises BudgetExceeded: the request could cross the budget, or its model has no price.
        """
        budget = self.max_cost
        assert budget is not None
        price = self._price_of(job.model)
        # Sums of float additions and subtractions can end a hair below zero: never show -0.0000.
        billed, inflight = self.stats.billed, max(self._inflight_cost, 0.0)
        if price is None:
            model = job.model or self._model
            raise BudgetExceeded(f"no price for model {model!r}: --max-cost cannot be kept")
        tokens = estimate_tokens(job.prompt_chars)
        est = cost_of(tokens, 0, 0, self._budget.completion(job), price)[0]
        # The length estimate can be off, so also assume each request costs what the average
        # finished one did.
        n = self.stats.ok + self.stats.failed
        est = max(est, self.stats.billed / n if n else 0.0)
        if billed + est > budget:
            unmetered = (
                f" ({self._unmetered} answers without usage counted at their worst case)"
                if self._unmetered
                else ""
            )
            raise BudgetExceeded(
                f"stopped at ${billed:.4f} billed{unmetered}, ${inflight:.4f} in flight, budget "
                f"${budget:g}: the next request could cost up to ${est:.4f}"
            )
        if in_flight and billed + inflight + est > budget:
            return HOLD
        self._inflight_cost += est
        return est

    def final(
        self,
        wall_s: float,
        stopped: str | None,
        guard: GuardTripped | None,
        cache_control: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """The run's summary: the builder's figures plus how and why the run ended."""
        s = self.stats
        out = self.summary.summary(
            wall_s=wall_s, retries=s.retries, limiter_wait_s=s.limiter_s, skipped_resumed=s.skipped
        )
        out["stopped"] = stopped
        out["not_sent"] = max(0, s.read - s.done)
        if cache_control is not None:
            out["cache_control"] = cache_control
        if guard is not None:
            out["guard"] = {"code": guard.code, "message": str(guard)}
        return out

    def settle(self, est: float, *, unmetered: bool = False) -> None:
        """A request reserved with :meth:`reserve` has ended (its cost is now billed).

        ``unmetered``: it was answered without ``usage`` (a proxy that drops it), so its cost
        is unknown and counts at the worst case it reserved: without that, a budget would
        never see it, and ``--max-cost`` let a run spend without limit.
        """
        self._inflight_cost -= est
        if unmetered and est > 0:
            self.stats.billed += est
            self._unmetered += 1
