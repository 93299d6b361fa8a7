"""``validate --via batch``: the batch cost next to the direct cost, from validate's estimate."""

from __future__ import annotations

from typing import Any

from ..config import RunConfig
from ..stats import cost_of
from ..validate import ValidationReport
from .engine import batch_prices

__all__ = ["render_batch_estimate", "render_batch_summary"]


def render_batch_summary(summary: dict[str, Any]) -> str:
    """One line under the run summary: batches used and the cost against a direct run."""
    b = summary.get("batch") or {}
    text = (
        f"batch      {b.get('provider')} batch API, {b.get('batches_created', 0)} batches "
        f"created this run"
        + (
            f", {b['batches_recovered']} recovered after a lost create"
            if b.get("batches_recovered")
            else ""
        )
        + f" ({b.get('batches_total', 0)} in all)"
    )
    at_list = b.get("at_list_price")
    cost = summary.get("cost")
    if at_list and cost:
        text += (
            f"; billed ${cost['billed']:.4f} at x{b.get('discount')} of the list price; "
            f"the same tokens direct: ${at_list['billed_usd']:.4f} "
            f"(uncached ${at_list['uncached_usd']:.4f})"
        )
    return text


def render_batch_estimate(report: ValidationReport, config: RunConfig) -> str:
    """Lines comparing direct and batch cost per model; batch caching is best-effort, so the
    batch figure is given both with the estimated cache hits and with none. Each model is
    priced as the batch run's summary prices it (:func:`~runner.batchapi.engine.batch_prices`:
    the batch discount, and a warm Anthropic batch's 1-hour cache writes)."""
    out = ["via batch (provider batch API, billed at the batch discount):"]
    totals = [0.0, 0.0, 0.0]
    known = True
    price_of = batch_prices(config)
    for model, m in sorted(report.models.items()):
        price = config.price(model)
        bp = price_of(model)
        if price is None or bp is None or m.billed is None or m.uncached is None:
            out.append(f"  {model}: no price in the config")
            known = False
            continue
        discount = bp.input / price.input if price.input else 1.0
        cached, plain = cost_of(
            m.prompt_tokens, m.cached_tokens, m.cache_write_tokens, m.completion_tokens, bp
        )
        out.append(
            f"  {model}: direct ${m.billed:,.4f} (uncached ${m.uncached:,.4f}); batch "
            f"${cached:,.4f} with the estimated cache hits, ${plain:,.4f} with none "
            f"(x{discount:g})"
        )
        totals[0] += m.uncached
        totals[1] += cached
        totals[2] += plain
    if known and report.models:
        out.append(
            f"estimated batch cost: ${totals[1]:,.4f}-${totals[2]:,.4f} vs ${totals[0]:,.4f} "
            "direct without caching"
        )
    return "\n".join(out) + "\n"
