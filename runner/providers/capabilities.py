"""What a provider can do, declared once per provider so the core never branches on its name.

The engine, the cache scheduler, the request-budget policy and ``runner.api`` read a
:class:`Capabilities`; only this package and ``runner.config`` know provider names. Adding a
provider (Gemini, Bedrock, a Batch API backend) means one entry in :data:`_BY_PROVIDER` plus its
wire module, and no change to the engine.

This module imports nothing heavy (no aiohttp): ``validate`` and start-up read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Literal

from .._records import Record

if TYPE_CHECKING:
    from ..config import RunConfig

__all__ = [
    "ANTHROPIC",
    "GEMINI",
    "GENERIC",
    "OPENAI",
    "Capabilities",
    "batch_cache_config",
    "capabilities_for",
    "capabilities_of",
]


@dataclass(
    frozen=True, slots=True, kw_only=True, eq=False, repr=False
)  # eq, hash, repr: Record (start-up cost)
class Capabilities(Record):
    """Provider behaviour the scheduler and engine plan around."""

    #: A cache entry is usable as soon as the primer's response starts (Anthropic writes the
    #: prefix before it generates), so followers may go at the primer's first byte, not its end.
    release_on_first_byte: bool = False
    #: A write-only request exists that fills the cache and bills only the write
    #: (Anthropic ``max_tokens: 0``).
    supports_prewarm: bool = False
    #: Send that pre-warm request before a group's primer (the run enabled it and it exists).
    prewarm: bool = False
    #: Requests carry a routing key (``prompt_cache_key``); a hot group can be spread over
    #: suffixed keys so that one cache replica is not overrun (OpenAI: about 15 RPM per key).
    spreads_cache_keys: bool = False
    #: Shorter prefixes are never cached, so warming them only delays the group.
    min_cacheable_tokens: int = 1024
    #: Completion budget assumed when neither the job nor the config sets one.
    default_max_tokens: int = 256
    #: The provider rejects a request without an explicit completion budget.
    requires_max_tokens: bool = False
    #: OpenTelemetry's well-known ``gen_ai.provider.name``, where it differs from runner's name.
    telemetry_name: str | None = None
    #: In a provider batch, a prefix cached by a normal call is not read, so each cache group's
    #: first request goes ahead in a batch of primers (Anthropic, see docs/BATCH.md).
    batch_primes_groups: bool = False
    #: The cache TTL a warm provider batch needs to carry a prefix from one of its requests to
    #: the next (a batch takes far longer than the default TTL); None: no longer TTL exists.
    batch_cache_ttl: Literal["5m", "1h"] | None = None
    #: Writing a prefix into the cache is billed as its own token class, at the price's
    #: ``cache_write`` rate (Anthropic's ``cache_creation_input_tokens``); elsewhere a group's
    #: first request pays the plain input rate and usage reports no cache-write tokens, so
    #: ``runner validate`` estimates none (an explicit cache's creation and storage are billed
    #: apart, runner.explicit_cache).
    bills_cache_writes: bool = False


GENERIC = Capabilities()
OPENAI = Capabilities(spreads_cache_keys=True, min_cacheable_tokens=1024, default_max_tokens=256)
ANTHROPIC = Capabilities(
    release_on_first_byte=True,
    supports_prewarm=True,
    min_cacheable_tokens=1024,
    default_max_tokens=1024,
    requires_max_tokens=True,
    batch_primes_groups=True,
    batch_cache_ttl="1h",
    bills_cache_writes=True,
)
# Implicit caching needs no routing key; explicit ``cachedContents`` are the backend's
# ``CacheStore`` side (runner.explicit_cache), found by protocol, not by this table.
GEMINI = Capabilities(
    min_cacheable_tokens=1024, default_max_tokens=256, telemetry_name="gcp.gemini"
)

# The built-in mock speaks the OpenAI protocol.
_BY_PROVIDER: dict[str, Capabilities] = {
    "openai": OPENAI,
    "mock": OPENAI,
    "anthropic": ANTHROPIC,
    "gemini": GEMINI,
}


def capabilities_of(provider: str) -> Capabilities:
    """What ``provider`` can do, before any run's opt-in features."""
    return _BY_PROVIDER.get(provider, GENERIC)


def capabilities_for(config: RunConfig) -> Capabilities:
    """The capabilities of ``config.provider``, with the run's opt-in features applied."""
    caps = _BY_PROVIDER.get(config.provider, GENERIC)
    if caps.supports_prewarm and config.anthropic_prewarm:
        caps = replace(caps, prewarm=True)
    return caps


def batch_cache_config(config: RunConfig) -> RunConfig:
    """``config`` with the cache TTL a warm provider batch needs (``batch_cache_ttl``)."""
    ttl = capabilities_for(config).batch_cache_ttl
    if ttl is None:
        return config
    return replace(config, anthropic_cache_ttl=ttl)
