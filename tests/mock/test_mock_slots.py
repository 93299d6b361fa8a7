"""The simulated per-slot cache (``--slots``): slot choice, waiting, and what the wire reports."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from runner.mock import MockConfig, serve
from runner.mock.slots import SlotPool


async def test_a_prompt_takes_the_idle_slot_with_the_longest_common_prefix() -> None:
    pool = SlotPool(3)
    assert pool.take([1, 2, 3]) == (0, 0)  # all empty: the least recently used
    assert pool.take([7, 8]) == (1, 0)
    assert pool.take([9]) == (2, 0)
    for s in range(3):
        pool.release(s)
    assert pool.take([1, 2, 5]) == (0, 2)  # shares two blocks with slot 0
    assert pool.take([4]) == (1, 0)  # no match anywhere: least recently used idle slot
    pool.release(0)
    pool.release(1)
    # Slot 0 now holds [1, 2, 5]; a busy slot is never chosen, whatever it holds.
    pool.take([5])
    assert pool.take([1, 2, 5, 6]) == (0, 3)


async def test_requests_wait_for_a_free_slot_first_come_first_served() -> None:
    pool = SlotPool(1)
    first = await pool.acquire([1])
    order: list[int] = []

    async def later(n: int) -> None:
        slot, _ = await pool.acquire([n])
        order.append(n)
        pool.release(slot)

    waiting = [asyncio.create_task(later(n)) for n in (2, 3)]
    await asyncio.sleep(0.01)
    assert order == []  # the only slot is busy
    pool.release(first[0])
    await asyncio.gather(*waiting)
    assert order == [2, 3]


async def test_a_cancelled_waiter_does_not_keep_a_slot() -> None:
    pool = SlotPool(1)
    slot, _ = await pool.acquire([1])
    stuck = asyncio.create_task(pool.acquire([2]))
    await asyncio.sleep(0.01)
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    pool.release(slot)
    assert await asyncio.wait_for(pool.acquire([3]), 1.0) == (0, 0)


async def _ask(s: aiohttp.ClientSession, url: str, context: str, q: str) -> int:
    body = {
        "model": "mock-1",
        "max_tokens": 2,
        "messages": [{"role": "system", "content": context}, {"role": "user", "content": q}],
    }
    async with s.post(url + "/chat/completions", json=body) as r:
        assert r.status == 200
        doc = await r.json()
    cached: int = doc["usage"]["prompt_tokens_details"]["cached_tokens"]
    return cached


async def test_two_requests_of_one_prefix_at_once_land_in_two_slots() -> None:
    """The shape llama.cpp has and a global LRU does not: concurrent siblings miss."""
    ctx = "the supplier shall indemnify the customer " * 300  # about 3,000 tokens
    mock = MockConfig(slots=4, base_ms=20, decode_ms_per_token=0, seed=1)
    async with serve(mock) as url, aiohttp.ClientSession() as s:
        assert await _ask(s, url, ctx, "q0") == 0  # cold
        assert await _ask(s, url, ctx, "q1") > 2000  # the same slot, one after another
        both = await asyncio.gather(_ask(s, url, ctx, "q2"), _ask(s, url, ctx, "q3"))
        assert sorted(both)[0] == 0 and sorted(both)[1] > 2000  # one found it, one did not
