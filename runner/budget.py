"""The one request-budget policy: completion budget, context-window check, cacheable length.

The engine (token-bucket estimates, the pre-flight context check), ``validate`` (cost
estimates) and the providers (the ``max_tokens`` they must send) all ask this object, so a job's
completion budget has a single answer: the job's ``max_tokens`` / ``max_completion_tokens``,
else the config's ``params``, else the provider's default (``Capabilities.default_max_tokens``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .config import RunConfig
from .models import Job, estimate_tokens
from .providers.capabilities import Capabilities, capabilities_for

__all__ = ["RequestBudget", "config_max_tokens"]

_TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")


def config_max_tokens(params: Mapping[str, Any]) -> int | None:
    """The completion budget the config's ``params`` set, if any (``max_tokens`` first)."""
    for key in _TOKEN_PARAMS:
        v = params.get(key)
        if type(v) is int and v > 0:
            return v
    return None


class RequestBudget:
    """Token arithmetic for one run; cheap enough to call once per job on the hot path.

    Never compared or shown: a plain slotted class with Final fields, like
    :class:`runner.cache.Dispatch` (start-up cost).
    """

    __slots__ = ("context_window", "default_completion", "min_cacheable_tokens")

    def __init__(
        self, default_completion: int, context_window: int | None, min_cacheable_tokens: int
    ) -> None:
        self.default_completion: Final = default_completion
        self.context_window: Final = context_window
        self.min_cacheable_tokens: Final = min_cacheable_tokens

    @classmethod
    def for_run(cls, config: RunConfig, caps: Capabilities | None = None) -> RequestBudget:
        caps = caps if caps is not None else capabilities_for(config)
        configured = config_max_tokens(config.params)
        return cls(
            default_completion=configured if configured is not None else caps.default_max_tokens,
            context_window=config.context_window,
            min_cacheable_tokens=(
                config.min_cacheable_tokens
                if config.min_cacheable_tokens is not None
                else caps.min_cacheable_tokens
            ),
        )

    def completion(self, job: Job) -> int:
        """Completion tokens the job may generate."""
        return job.max_tokens or self.default_completion

    def tokens(self, job: Job) -> int:
        """Prompt estimate plus completion budget: what a token bucket must reserve."""
        return estimate_tokens(job.prompt_chars) + (job.max_tokens or self.default_completion)

    def over_window(self, prompt_tokens: int, completion_tokens: int) -> bool:
        limit = self.context_window
        return limit is not None and prompt_tokens + completion_tokens > limit

    def context_problem(self, job: Job, where: str) -> str | None:
        """Why ``job`` would only waste a paid call (it cannot fit the context window)."""
        if self.context_window is None:
            return None
        prompt = estimate_tokens(job.prompt_chars)
        if not self.over_window(prompt, self.completion(job)):
            return None
        return (
            f"{where}:{job.line}: messages: prompt of about {prompt} tokens plus max_tokens "
            f"exceeds the context window of {self.context_window} tokens"
        )

    def cacheable(self, prefix_tokens: int) -> bool:
        """Whether a prefix this long is cached by the provider at all."""
        return prefix_tokens >= self.min_cacheable_tokens
