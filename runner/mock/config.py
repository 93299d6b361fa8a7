"""Every knob of the simulated provider, in one frozen keyword-only dataclass.

``MockConfig(**mapping)`` accepts the same field names as the ``[mock]`` table of a run config
and the ``runner mock`` flags (``--cache-block-tokens`` sets ``cache_block_tokens``). Latencies
are in milliseconds, rates of faults are probabilities per request. ``None`` disables a limit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = [
    "DEFAULT_BLOCK_TOKENS",
    "DEFAULT_CACHE_CAPACITY_TOKENS",
    "DEFAULT_CACHE_TTL_S",
    "DEFAULT_KEY_RPM",
    "DEFAULT_MIN_PREFIX_TOKENS",
    "FAULT_KINDS",
    "MockConfig",
]

DEFAULT_BLOCK_TOKENS = 128
DEFAULT_MIN_PREFIX_TOKENS = 1024
DEFAULT_CACHE_CAPACITY_TOKENS = 50_000_000
DEFAULT_CACHE_TTL_S = 300.0
DEFAULT_KEY_RPM = 15.0
DEFAULT_MAX_TOKENS = 64

# Fault kinds in the order a per-request draw walks them; each has a ``fault_<kind>`` rate.
FAULT_KINDS = (
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_529",
    "reset",
    "stall",
    "truncate",
    "malformed",
    "stream_error",
    "slow_first_byte",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class MockConfig:
    """Behaviour of the simulated provider; validated on construction.

    :param latency: ``"model"`` applies the latency knobs below, ``"zero"`` answers at once
        (overhead benchmarks) whatever they say.
    :param seed: seeds reply text, jitter, stop lengths and fault draws.
    """

    models: tuple[str, ...] = ("mock-1",)
    seed: int = 0
    # latency model: ttft = base + prefill * uncached + cached_prefill * cached; then decode/token
    latency: str = "model"
    base_ms: float = 150.0
    prefill_ms_per_token: float = 0.05
    cached_prefill_ms_per_token: float = 0.005
    decode_ms_per_token: float = 10.0
    jitter: float = 0.1  # relative, uniform in [1 - jitter, 1 + jitter]
    # replies
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    stop_rate: float = 0.0  # probability a reply stops early at a seeded shorter length
    # prefix cache
    cache: bool = True
    cache_block_tokens: int = DEFAULT_BLOCK_TOKENS
    cache_min_prefix_tokens: int = DEFAULT_MIN_PREFIX_TOKENS
    cache_capacity_tokens: int = DEFAULT_CACHE_CAPACITY_TOKENS
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S
    replicas: int = 1  # OpenAI only: simulated machines, each with its own cache
    key_rpm: float = DEFAULT_KEY_RPM  # per routing key, above it traffic overflows
    slots: int = 0  # OpenAI only: llama.cpp-like per-slot cache instead of the LRU (0: off)
    report_cache_write: bool = False  # OpenAI: add prompt_tokens_details.cache_write_tokens
    # Gemini (/v1beta): explicit cachedContents and implicit caching
    gemini_min_cache_tokens: int = 1024  # smallest cachedContents accepted (2.5 Flash; Pro 4096)
    gemini_implicit_cache: bool = True  # prefix caching of plain requests, as the service does
    gemini_max_ttl_s: float | None = None  # cap every cache's TTL (makes caches expire early)
    # fields a PATCH answer leaves out, comma-separated (createTime, updateTime, expireTime), as
    # some proxies and emulators do
    gemini_patch_omit: str = ""
    gemini_create_delay_ms: float = 0.0  # a create happens at once, its answer comes this late
    # rate limits
    rpm: float | None = None
    tpm: float | None = None
    output_tpm: float | None = None  # Anthropic output-tokens bucket
    insufficient_quota_after: int | None = None  # requests served before the quota runs out
    # authentication
    api_key: str | None = None  # when set, requests must carry exactly this key
    require_api_key: bool = False  # when set, any non-empty key is accepted
    # faults, probabilities per request
    fault_http_429: float = 0.0  # a rate-limit answer with retry-after, like a 429 storm
    fault_429_retry_ms: float = 100.0  # the delay that such a 429 asks for
    fault_http_500: float = 0.0
    fault_http_502: float = 0.0
    fault_http_503: float = 0.0
    fault_http_529: float = 0.0
    fault_reset: float = 0.0
    fault_stall: float = 0.0
    fault_truncate: float = 0.0
    fault_malformed: float = 0.0
    fault_stream_error: float = 0.0
    fault_slow_first_byte: float = 0.0
    slow_first_byte_ms: float = 2000.0
    # batch endpoints: the fields of runner.mock.batch.BatchMockConfig (time, seeded faults)
    batch: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.latency not in ("model", "zero"):
            raise ValueError(f"latency must be 'model' or 'zero', got {self.latency!r}")
        if not self.models:
            raise ValueError("models must name at least one model")
        # Accept a list from TOML / JSON: the field is a tuple so the config stays hashable.
        models: object = self.models
        if not isinstance(models, tuple):
            object.__setattr__(self, "models", tuple(self.models))
        for name in (
            "base_ms",
            "prefill_ms_per_token",
            "cached_prefill_ms_per_token",
            "decode_ms_per_token",
            "slow_first_byte_ms",
            "fault_429_retry_ms",
            "cache_ttl_s",
            "gemini_create_delay_ms",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if not 0 <= self.stop_rate <= 1:
            raise ValueError(f"stop_rate must be in [0, 1], got {self.stop_rate}")
        if self.default_max_tokens < 1:
            raise ValueError("default_max_tokens must be >= 1")
        if self.cache_block_tokens < 1 or self.replicas < 1:
            raise ValueError("cache_block_tokens and replicas must be >= 1")
        if min(self.cache_min_prefix_tokens, self.cache_capacity_tokens, self.slots) < 0:
            raise ValueError("cache_min_prefix_tokens, cache_capacity_tokens, slots must be >= 0")
        if self.key_rpm <= 0:
            raise ValueError(f"key_rpm must be > 0, got {self.key_rpm}")
        for name in ("rpm", "tpm", "output_tpm"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.gemini_min_cache_tokens < 0:
            raise ValueError("gemini_min_cache_tokens must be >= 0")
        if self.gemini_max_ttl_s is not None and self.gemini_max_ttl_s <= 0:
            raise ValueError("gemini_max_ttl_s must be > 0")
        _check_patch_omit(self.gemini_patch_omit)
        if self.insufficient_quota_after is not None and self.insufficient_quota_after < 0:
            raise ValueError("insufficient_quota_after must be >= 0")
        _check_batch(self.batch)
        rates = self.fault_rates()
        if any(not 0 <= r <= 1 for r in rates.values()) or sum(rates.values()) > 1:
            raise ValueError("fault rates must be in [0, 1] and sum to at most 1")

    def fault_rates(self) -> dict[str, float]:
        """Rate of each fault kind, in the order of ``FAULT_KINDS``."""
        return {kind: float(getattr(self, "fault_" + kind)) for kind in FAULT_KINDS}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


def _check_patch_omit(text: str) -> None:
    if {f for f in text.split(",") if f} - {"createTime", "updateTime", "expireTime"}:
        raise ValueError(
            "gemini_patch_omit: a comma-separated list of createTime, updateTime, expireTime,"
            f" got {text!r}"
        )


def _check_batch(options: Mapping[str, Any]) -> None:
    """The ``batch`` table names fields of BatchMockConfig with valid values."""
    from .batch import BatchMockConfig  # late: batch.py builds on the server's wire helpers

    try:
        BatchMockConfig(**dict(options))
    except TypeError as exc:
        raise ValueError(f"batch: {exc}") from exc
