"""The per-slot prompt cache of llama.cpp's ``llama-server``, simulated.

The server has ``n`` slots; each keeps the prompt it last processed. A request waits for an idle
slot (first come, first served), takes the idle slot whose kept prompt shares the longest prefix
with its own (ties, and no shared prefix at all, go to the least recently used slot), reuses
that shared prefix and overwrites the slot with its own prompt. So two requests of one group
sent at once land in two slots and only one of them finds the group's prefix: the shape that a
global LRU cache (the mock's default) does not have.

Prompts are compared by their chain of block keys (``runner.mock.cache.block_boundaries``), so a
shared prefix counts in whole blocks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence

__all__ = ["SlotPool"]


class SlotPool:
    """``n`` slots, each holding the block keys of its last prompt."""

    __slots__ = ("_busy", "_prompts", "_tick", "_used", "_waiters")

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError(f"slots must be >= 1, got {n}")
        self._prompts: list[Sequence[int]] = [() for _ in range(n)]
        self._busy = [False] * n
        self._used = [0] * n  # when each slot was last taken, in takes (LRU order)
        self._tick = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._prompts)

    async def acquire(self, keys: Sequence[int]) -> tuple[int, int]:
        """Wait for an idle slot; returns (slot, leading blocks of ``keys`` it already held)."""
        if self._waiters or all(self._busy):
            fut = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    self._wake()  # a slot was handed to us: pass it on
                else:
                    self._waiters.remove(fut)
                raise
        return self.take(keys)

    def take(self, keys: Sequence[int]) -> tuple[int, int]:
        """Take the best idle slot now (the caller knows one is idle)."""
        best, best_lcp, best_used = -1, -1, 0
        for i, prompt in enumerate(self._prompts):
            if self._busy[i]:
                continue
            n = 0
            for a, b in zip(prompt, keys, strict=False):
                if a != b:
                    break
                n += 1
            if n > best_lcp or (n == best_lcp and self._used[i] < best_used):
                best, best_lcp, best_used = i, n, self._used[i]
        if best < 0:
            raise RuntimeError("no idle slot")
        self._busy[best] = True
        self._tick += 1
        self._used[best] = self._tick
        self._prompts[best] = keys
        return best, best_lcp

    def release(self, slot: int) -> None:
        self._busy[slot] = False
        self._wake()

    def clear(self) -> None:
        self._prompts = [() for _ in self._prompts]

    def _wake(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
