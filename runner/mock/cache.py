"""The simulated prefix cache: hashed prefixes with an LRU capacity in tokens and a TTL.

An entry is keyed by a chain of block hashes: the key of a boundary is the hash of the previous
key and the bytes since it (starting from the model name), so a key stands for its whole prefix
and a lookup walks boundaries from the start. The hash is Python's own (SipHash over bytes, 64
bits): the cache lives in one process, and it is several times cheaper than a digest object.
OpenAI boundaries are full blocks of ``block_tokens``; Anthropic boundaries are the
``cache_control`` breakpoints.

Writes are not applied at lookup: the caller gets the keys to write and commits them when the
writing request starts responding, which is what makes a cold concurrent fan-out miss.
Time is passed in (``now``, seconds on any monotonic clock) so tests need no sleeping.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from collections.abc import Sequence

from .tokenizer import BYTES_PER_TOKEN, count_tokens

__all__ = ["Boundary", "PrefixCache", "ReplicaRouter", "anthropic_boundaries", "block_boundaries"]


# One cacheable prefix: (key, prefix length in tokens, tokens it adds over the previous
# boundary, TTL in seconds). A plain tuple: several are built per request on the hot path.
Boundary = tuple[int, int, int, float]


def block_boundaries(model: str, text: bytes, block_tokens: int, ttl_s: float) -> list[Boundary]:
    """Boundaries at every full block of ``text`` (a partial last block is never cached)."""
    step = block_tokens * BYTES_PER_TOKEN
    key = hash(model)
    out: list[Boundary] = []
    tokens = 0
    for start in range(0, len(text) - step + 1, step):
        key = hash((key, text[start : start + step]))
        tokens += block_tokens
        out.append((key, tokens, block_tokens, ttl_s))
    return out


def anthropic_boundaries(
    model: str, text: bytes, marks: Sequence[tuple[int, str]], min_tokens: int
) -> list[Boundary]:
    """Boundaries at the breakpoints whose prefix reaches ``min_tokens`` (others are uncached)."""
    key = hash(model)
    out: list[Boundary] = []
    fed = prev_tokens = 0
    for offset, ttl in marks:
        tokens = count_tokens(offset)
        if tokens < min_tokens or offset <= fed:
            continue
        key = hash((key, text[fed:offset]))
        fed = offset
        ttl_s = 3600.0 if ttl == "1h" else 300.0
        out.append((key, tokens, tokens - prev_tokens, ttl_s))
        prev_tokens = tokens
    return out


class PrefixCache:
    """LRU map of prefix keys with a capacity in tokens; a hit refreshes the entry's TTL."""

    __slots__ = ("_entries", "capacity_tokens", "used_tokens")

    def __init__(self, capacity_tokens: int) -> None:
        self.capacity_tokens = capacity_tokens
        self.used_tokens = 0
        # key -> [expires_at, cost, ttl_s], updated in place; order is recency order
        self._entries: OrderedDict[int, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, boundaries: Sequence[Boundary], now: float) -> int:
        """How many leading boundaries are cached (each hit is refreshed)."""
        entries = self._entries
        hits = 0
        for key, _, _, _ in boundaries:
            entry = entries.get(key)
            if entry is None:
                break
            if entry[0] <= now:
                del entries[key]
                self.used_tokens -= int(entry[1])
                break
            entry[0] = now + entry[2]
            entries.move_to_end(key)
            hits += 1
        return hits

    def commit(self, boundaries: Sequence[Boundary], now: float) -> None:
        """Make ``boundaries`` visible, then evict least recently used entries over capacity."""
        entries = self._entries
        for key, _, cost, ttl_s in boundaries:
            old = entries.get(key)
            if old is not None:
                old[0] = now + ttl_s
                entries.move_to_end(key)
                continue
            entries[key] = [now + ttl_s, cost, ttl_s]
            self.used_tokens += cost
        while self.used_tokens > self.capacity_tokens and entries:
            _, entry = entries.popitem(last=False)
            self.used_tokens -= int(entry[1])

    def clear(self) -> None:
        self._entries.clear()
        self.used_tokens = 0


class ReplicaRouter:
    """Routes OpenAI requests to replicas the way docs/PROVIDERS.md describes.

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
