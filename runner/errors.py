"""The exception tree of ``runner``.

A failed *job* is never an exception: it becomes an error result. Exceptions are reserved for
conditions that end a run or reject its input before anything is sent::

    RunnerError
    ├── ConfigError          bad config file or flags                       (exit 2)
    ├── InputError           the jobs/contexts file cannot be used at all   (exit 2)
    ├── ResumeError          output belongs to another input/model, or is locked (exit 2)
    ├── SinkError            an output file cannot be written                (exit 1)
    │   └── DiskFull         no space left (ENOSPC, EDQUOT): free some, re-run (exit 75;
    │                        also an Unavailable)
    ├── GuardTripped         auth/quota failure, circuit breaker, --max-cost (exit 3)
    │   ├── AuthError
    │   ├── QuotaError
    │   ├── CircuitOpen
    │   ├── BudgetExceeded
    │   └── EndpointError    404/405/501 from the completion endpoint (exit 2 before any
    │                        success, else 3)
    └── Unavailable          stopped by a transient condition: re-run later  (exit 75)

Exit code 75 is sysexits' ``EX_TEMPFAIL``: schedulers (systemd ``RestartForceExitStatus``, a
Kubernetes ``podFailurePolicy``) can retry it and alert on everything else.
"""

from __future__ import annotations

__all__ = [
    "TRANSIENT_ERROR_CODES",
    "AuthError",
    "BudgetExceeded",
    "CircuitOpen",
    "ConfigError",
    "DiskFull",
    "EndpointError",
    "GuardTripped",
    "InputError",
    "QuotaError",
    "ResumeError",
    "RunnerError",
    "SinkError",
    "Unavailable",
]

#: Job error codes that say the provider was unreachable or overloaded, not that the job is bad.
TRANSIENT_ERROR_CODES = frozenset(
    {"connection", "timeout", "http_5xx", "overloaded", "rate_limited"}
)


class RunnerError(Exception):
    """Base of every error raised by ``runner``."""

    exit_code: int = 1


class ConfigError(RunnerError, ValueError):
    exit_code = 2


class InputError(RunnerError, ValueError):
    exit_code = 2


class ResumeError(RunnerError):
    exit_code = 2


class SinkError(RunnerError, OSError):
    exit_code = 1


class OutputPathError(SinkError):
    """An output cannot be made where it was asked for (its directory, lock or file cannot be
    created or opened) while the outputs are opened: nothing was sent, so it is a usage error."""

    exit_code = 2


class GuardTripped(RunnerError):
    """A guard stopped the run; jobs not yet sent stay unsent so a resume picks them up."""

    exit_code = 3
    code = "guard"


class AuthError(GuardTripped):
    code = "auth"


class QuotaError(GuardTripped):
    code = "insufficient_quota"


class CircuitOpen(GuardTripped):
    code = "circuit_open"


class BudgetExceeded(GuardTripped):
    code = "max_cost"


class EndpointError(GuardTripped):
    """The completion endpoint answered 404, 405 or 501: the base URL or model is wrong."""

    code = "endpoint"


class Unavailable(RunnerError):
    """The provider was unreachable after retries, or throttled past the deadline: try later."""

    exit_code = 75


class DiskFull(SinkError, Unavailable):
    """An output's file system is full (or the user's quota spent). Whole lines only were
    written, so what is in the results is safe and a re-run resumes once there is room: the
    same "retry later" as the provider's transient conditions (exit 75), not a failed job."""

    exit_code = 75
