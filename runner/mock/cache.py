"""The simulated prefix cache: hashed prefixes with an LRU capacity in tokens and a TTL.

An entry is keyed by a digest of the model and every prompt byte before a boundary (a chain of
block hashes in effect: one incremental hash, copied at each boundary), so a key stands for its
whole prefix and a lookup walks boundaries from the start. OpenAI boundaries are full blocks of
``block_tokens``; Anthropic boundaries are the ``cache_control`` breakpoints.

Writes are not applied at lookup: the caller gets the keys to write and commits them when the
writing request starts responding, which is what makes a cold concurrent fan-out miss.
Time is passed in (``now``, seconds on any monotonic clock) so tests need no sleeping.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import blake2b

from .tokenizer import BYTES_PER_TOKEN, count_tokens

__all__ = ["Boundary", "PrefixCache", "ReplicaRouter", "anthropic_boundaries", "block_boundaries"]


@dataclass(frozen=True, slots=True)
class Boundary:
    """One cacheable prefix: its key, its length in tokens and its own cost and TTL."""

    key: bytes
    tokens: int  # prefix length from the start of the prompt
    cost: int  # tokens this entry adds on top of the previous boundary
    ttl_s: float


def block_boundaries(model: str, text: bytes, block_tokens: int, ttl_s: float) -> list[Boundary]:
    """Boundaries at every full block of ``text`` (a partial last block is never cached)."""
    step = block_tokens * BYTES_PER_TOKEN
    h = blake2b(model.encode(), digest_size=16)
    view = memoryview(text)
    out: list[Boundary] = []
    for i, start in enumerate(range(0, len(text) - step + 1, step)):
        h.update(view[start : start + step])
        out.append(Boundary(h.copy().digest(), (i + 1) * block_tokens, block_tokens, ttl_s))
    return out


def anthropic_boundaries(
    model: str, text: bytes, marks: Sequence[tuple[int, str]], min_tokens: int
) -> list[Boundary]:
    """Boundaries at the breakpoints whose prefix reaches ``min_tokens`` (others are uncached)."""
    h = blake2b(model.encode(), digest_size=16)
    view = memoryview(text)
    out: list[Boundary] = []
    fed = prev_tokens = 0
    for offset, ttl in marks:
        tokens = count_tokens(offset)
        if tokens < min_tokens or offset <= fed:
            continue
        h.update(view[fed:offset])
        fed = offset
        ttl_s = 3600.0 if ttl == "1h" else 300.0
        out.append(Boundary(h.copy().digest(), tokens, tokens - prev_tokens, ttl_s))
        prev_tokens = tokens
    return out


class PrefixCache:
    """LRU map of prefix keys with a capacity in tokens; a hit refreshes the entry's TTL."""

    __slots__ = ("_entries", "capacity_tokens", "used_tokens")

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.used_tokens = 0
        # key -> (expires_at, cost, ttl_s); insertion order is recency order
        self._entries: OrderedDict[bytes, tuple[float, int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, boundaries: Sequence[Boundary], now: float) -> int:
        """How many leading boundaries are cached (each hit is refreshed)."""
        entries = self._entries
        hits = 0
        for b in boundaries:
            entry = entries.get(b.key)
            if entry is None:
                break
            if entry[0] <= now:
                del entries[b.key]
                self.used_tokens -= entry[1]
                break
            entries[b.key] = (now + entry[2], entry[1], entry[2])
            entries.move_to_end(b.key)
            hits += 1
        return hits

    def commit(self, boundaries: Sequence[Boundary], now: float) -> None:
        """Make ``boundaries`` visible, then evict least recently used entries over capacity."""
        entries = self._entries
        for b in boundaries:
            old = entries.get(b.key)
            if old is not None:
                self.used_tokens -= old[1]
            entries[b.key] = (now + b.ttl_s, b.cost, b.ttl_s)
            entries.move_to_end(b.key)
            self.used_tokens += b.cost
        while self.used_tokens > self.capacity_tokens and entries:
            _, (_, cost, _) = entries.popitem(last=False)
            self.used_tokens -= cost

    def clear(self) -> None:
        self._entries.clear()
        self.used_tokens = 0


class ReplicaRouter:
    """Routes OpenAI requests to replicas the way PROVIDERS.md describes.

    The route is a hash of the first 256 tokens and ``prompt_cache_key``. Each route has a token
    bucket of ``key_rpm`` requests per minute; a request finding it empty overflows to another
    replica (round robin over the others), where its prefix is usually not cached.
    """

    __slots__ = ("_buckets", "_rate", "key_rpm", "replicas")

    _ROUTE_BYTES = 256 * BYTES_PER_TOKEN
    _MAX_ROUTES = 100_000  # bounds memory when every request brings a fresh key

    def __init__(self, replicas: int, key_rpm: float) -> None:
        self.replicas = replicas
        self.key_rpm = key_rpm
        self._rate = key_rpm / 60.0
        # route -> [tokens left, last refill time, overflow counter]
        self._buckets: dict[int, list[float]] = {}

    def route(self, text: bytes, cache_key: str | None, now: float) -> int:
        route = zlib.crc32(text[: self._ROUTE_BYTES])
        if cache_key:
            route = zlib.crc32(cache_key.encode(), route)
        home = route % self.replicas
        bucket = self._buckets.get(route)
        if bucket is None:
            if len(self._buckets) >= self._MAX_ROUTES:
                self._buckets.clear()
            bucket = self._buckets[route] = [self.key_rpm, now, 0.0]
        level = min(self.key_rpm, bucket[0] + (now - bucket[1]) * self._rate)
        bucket[1] = now
        if level >= 1.0:
            bucket[0] = level - 1.0
            return home
        bucket[0] = level
        if self.replicas == 1:
            return home
        bucket[2] += 1
        return (home + 1 + int(bucket[2]) % (self.replicas - 1)) % self.replicas
