"""Checks that must pass before a run sends its first request.

:func:`check_prices`: a budget (``max_cost``) is only a guard if every request can be priced, so
when one is set, every model the jobs use must have a price (exit 2 otherwise). The models are
found by one streaming pass that parses only lines that mention ``"model"``; jobs without a
model of their own use the config's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from .config import RunConfig
from .errors import ConfigError, InputError

__all__ = ["check_prices", "models_used"]


def _job_model(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    body = obj.get("body")
    model = body.get("model") if isinstance(body, dict) else obj.get("model")
    return model if isinstance(model, str) and model else None


def models_used(jobs_path: Path, default: str) -> set[str]:
    """Every model the jobs file sends to (its per-job models, and ``default`` for the rest).

    :raises InputError: the file cannot be read.
    """
    models: set[str] = set()
    defaulted = False
    try:
        with open(jobs_path, "rb") as fh:
            for raw in fh:
                model = None
                if b'"model"' in raw:
                    try:
                        model = _job_model(orjson.loads(raw))
                    except orjson.JSONDecodeError:
                        continue  # a bad line is never sent
                elif not raw.strip():
                    continue
                if model is None:
                    defaulted = True
                else:
                    models.add(model)
    except OSError as exc:
        raise InputError(f"{jobs_path}: cannot read: {exc.strerror or exc}") from exc
    if defaulted or not models:
        models.add(default)
    return models


def check_prices(config: RunConfig, jobs_path: Path) -> None:
    """With ``max_cost`` set, refuse a run that uses a model without a price.

    :raises ConfigError: naming the unpriced models.
    """
    if config.max_cost is None:
        return
    missing = sorted(m for m in models_used(jobs_path, config.model) if config.price(m) is None)
    if missing:
        raise ConfigError(
            f"--max-cost {config.max_cost} needs a price for every model the jobs use; no "
            f'[prices."MODEL"] entry for {", ".join(repr(m) for m in missing)} in the config'
        )
