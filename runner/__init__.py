"""runner: an async, high-throughput batch runner for LLM chat APIs.

The public API is what the CLI is built on::

    from runner import load_config, run
    outcome = await run("jobs.jsonl", load_config("configs/openai.toml"))

    from runner import Job, batch
    results = await batch([Job.from_dict({"id": "q1", "query": "Hi"})], load_config(None))

Names are imported on first use (PEP 562), so ``runner --help`` and ``runner --version`` start
without loading aiohttp, and a Ctrl-C during start-up lands in the CLI's handler (exit 130).
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from .api import BatchResult, batch, run
    from .config import RunConfig, load_config
    from .errors import (
        AuthError,
        BudgetExceeded,
        CircuitOpen,
        ConfigError,
        EndpointError,
        GuardTripped,
        InputError,
        QuotaError,
        ResumeError,
        RunnerError,
        SinkError,
    )
    from .models import BadLine, Context, Job, LatencyRecord, Price, Usage
    from .pipeline import RunOutcome

__all__ = [
    "AuthError",
    "BadLine",
    "BatchResult",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "Context",
    "EndpointError",
    "GuardTripped",
    "InputError",
    "Job",
    "LatencyRecord",
    "Price",
    "QuotaError",
    "ResumeError",
    "RunConfig",
    "RunOutcome",
    "RunnerError",
    "SinkError",
    "Usage",
    "batch",
    "load_config",
    "run",
]
__version__ = "0.1.0"

_HOME = {
    "BatchResult": "api",
    "batch": "api",
    "run": "api",
    "RunConfig": "config",
    "load_config": "config",
    "RunOutcome": "pipeline",
    **dict.fromkeys(("BadLine", "Context", "Job", "LatencyRecord", "Price", "Usage"), "models"),
}
# Every other public name is an exception from errors.py.
_HOME.update(dict.fromkeys((name for name in __all__ if name not in _HOME), "errors"))


def __getattr__(name: str) -> _typing.Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(_importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
