"""runner: an async, high-throughput batch runner for LLM chat APIs.

The public API is what the CLI is built on::

    from runner import load_config, run
    outcome = await run("jobs.jsonl", load_config("configs/openai.toml"))
"""

from .api import run
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
    "load_config",
    "run",
]
__version__ = "0.1.0"
