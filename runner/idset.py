"""A compact set of 64-bit id hashes for duplicate detection over millions of lines.

A Python ``set`` of ints costs about 60 bytes an entry (the int object plus the table slot), so
remembering a million job ids would dominate a run's memory. Here the hashes live in 1,024
sorted ``array('q')`` shards: 8 bytes an id and no doubling, so memory grows smoothly with the
file. A lookup is a C-level bisection; an insert moves at most one shard's tail (a few KB).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left

__all__ = ["IdSet"]

_SHARD_BITS = 10
_SHARD_MASK = (1 << _SHARD_BITS) - 1


class IdSet:
    """Remembers ``hash(id)`` values; :meth:`add` says whether the value was new.

    Two different ids with equal 64-bit hashes are taken for duplicates; with a million ids the
    odds of that are about 1 in 10^7.
    """

    __slots__ = ("_count", "_shards")

    def __init__(self) -> None:
        self._count = 0
        self._shards = [array("q") for _ in range(1 << _SHARD_BITS)]

    def __len__(self) -> int:
        return self._count

    def __contains__(self, h: int) -> bool:
        shard = self._shards[h & _SHARD_MASK]
        i = bisect_left(shard, h)
        return i < len(shard) and shard[i] == h

    def add(self, h: int) -> bool:
        """Insert ``h``; True when it was not there before."""
        shard = self._shards[h & _SHARD_MASK]
        i = bisect_left(shard, h)
        if i < len(shard) and shard[i] == h:
            return False
        shard.insert(i, h)
        self._count += 1
        return True
