"""Run configuration: one frozen keyword-only dataclass, loaded from TOML and overridden by flags.

Precedence: command-line flags > config file > ``DEFAULT_*`` constants. API keys are never stored
here: the config names the environment variable that holds the key (``api_key_env``).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .models import Price

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_TIMEOUT_S",
    "RunConfig",
    "load_config",
]

DEFAULT_CONCURRENCY = 64
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_CONNECT_TIMEOUT_S = 10.0
DEFAULT_CACHE_TTL_S = 300.0
DEFAULT_MAX_ACTIVE_GROUPS = 8
DEFAULT_KEY_RPM = 15.0
DEFAULT_MIN_CACHEABLE_TOKENS = 1024
DEFAULT_READ_AHEAD = 16384
DEFAULT_DRAIN_S = 30.0
DEFAULT_MAX_LINE_BYTES = 1 << 20

PROVIDERS = ("mock", "openai", "anthropic")


@dataclass(frozen=True, slots=True, kw_only=True)
class RunConfig:
    """Everything a run needs to know, validated on construction."""

    provider: str = "mock"
    base_url: str | None = None  # e.g. https://api.openai.com/v1 ; None for the built-in mock
    model: str = "mock-1"
    api_key_env: str | None = None  # name of the environment variable holding the key
    headers: Mapping[str, str] = field(default_factory=dict)  # extra request headers
    params: Mapping[str, Any] = field(default_factory=dict)  # default body params (max_tokens...)
    concurrency: int = DEFAULT_CONCURRENCY
    rpm: float | None = None
    tpm: float | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = DEFAULT_TIMEOUT_S
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S
    stream: bool = False
    # caching
    cache: str = "warm"  # warm | none
    cache_ttl_s: float = DEFAULT_CACHE_TTL_S
    max_active_groups: int = DEFAULT_MAX_ACTIVE_GROUPS
    key_rpm: float = DEFAULT_KEY_RPM  # spread a group over suffixed prompt_cache_keys above this
    prompt_cache_retention: str | None = None
    min_cacheable_tokens: int = DEFAULT_MIN_CACHEABLE_TOKENS
    context_window: int | None = None
    anthropic_version: str = "2023-06-01"
    anthropic_cache_ttl: str = "5m"
    anthropic_prewarm: bool = False
    # io
    output: Path | None = None
    latency: Path | None = None
    summary: Path | None = None
    contexts: Path | None = None
    order: str = "completion"  # completion | input
    resume: bool = True
    retry_failed: bool = False
    read_ahead: int = DEFAULT_READ_AHEAD
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # guards
    max_cost: float | None = None
    breaker_min_requests: int = 50
    breaker_error_rate: float = 0.5
    drain_s: float = DEFAULT_DRAIN_S
    # presentation
    progress: str = "auto"  # auto | bar | log | off
    dry_run: bool = False
    prices: Mapping[str, Price] = field(default_factory=dict)
    mock: Mapping[str, Any] = field(default_factory=dict)  # options for the built-in mock

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ConfigError(
                f"provider must be one of {', '.join(PROVIDERS)}, got {self.provider!r}"
            )
        if self.provider != "mock" and not self.base_url:
            raise ConfigError(f"provider {self.provider!r} needs base_url")
        if self.concurrency < 1:
            raise ConfigError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be >= 1, got {self.max_attempts}")
        for name in ("rpm", "tpm", "max_cost", "context_window"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ConfigError(f"{name} must be > 0, got {v}")
        if self.timeout <= 0 or self.connect_timeout <= 0:
            raise ConfigError("timeout and connect_timeout must be > 0")
        if self.cache not in ("warm", "none"):
            raise ConfigError(f"cache must be 'warm' or 'none', got {self.cache!r}")
        if self.order not in ("completion", "input"):
            raise ConfigError(f"order must be 'completion' or 'input', got {self.order!r}")
        if self.progress not in ("auto", "bar", "log", "off"):
            raise ConfigError(f"progress must be auto, bar, log or off, got {self.progress!r}")
        if self.max_active_groups < 1 or self.read_ahead < 1:
            raise ConfigError("max_active_groups and read_ahead must be >= 1")
        if self.anthropic_cache_ttl not in ("5m", "1h"):
            raise ConfigError("anthropic_cache_ttl must be '5m' or '1h'")

    def api_key(self) -> str | None:
        """The key from the environment variable the config names (never from the file)."""
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {self.api_key_env} (api_key_env) is not set")
        return key

    def price(self, model: str | None = None) -> Price | None:
        return self.prices.get(model or self.model)

    def with_overrides(self, **overrides: Any) -> RunConfig:
        """A copy with the given fields replaced; ``None`` values mean 'not given'."""
        given: dict[str, Any] = {
            k: Path(v) if k in _PATH_FIELDS and isinstance(v, str) else v
            for k, v in overrides.items()
            if v is not None
        }
        try:
            return replace(self, **given)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc


_PATH_FIELDS = {"output", "latency", "summary", "contexts"}
_FIELD_NAMES = {f.name for f in fields(RunConfig)}


def _parse_prices(raw: Any, where: str) -> dict[str, Price]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [prices] must be a table of model tables")
    out: dict[str, Price] = {}
    for model, p in raw.items():
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: prices.{model} must be a table")
        try:
            out[model] = Price(**p)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: prices.{model}: {exc}") from exc
    return out


def config_from_mapping(data: Mapping[str, Any], where: str = "config") -> RunConfig:
    """Build a config from a parsed TOML document. Tables: params, headers, prices, mock, cache."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key == "cache" and isinstance(value, dict):
            # [cache] strategy/ttl_s/max_active_groups/key_rpm/... as a table
            for ck, cv in value.items():
                name = {"strategy": "cache", "ttl_s": "cache_ttl_s"}.get(ck, ck)
                if name not in _FIELD_NAMES:
                    raise ConfigError(f"{where}: unknown key cache.{ck}")
                flat[name] = cv
        elif key == "prices":
            flat["prices"] = _parse_prices(value, where)
        elif key.replace("-", "_") in _FIELD_NAMES:
            name = key.replace("-", "_")
            flat[name] = Path(value) if name in _PATH_FIELDS and value is not None else value
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")
    try:
        return RunConfig(**flat)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_config(path: Path | None) -> RunConfig:
    """Load a TOML config file; ``None`` gives the defaults (the built-in simulated provider)."""
    if path is None:
        return RunConfig()
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    return config_from_mapping(data, str(path))
