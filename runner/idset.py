"""A compact set of 64-bit id hashes for duplicate detection over millions of lines.

A Python ``set`` of ints costs about 60 bytes an entry (the int object plus the table slot), so
remembering a million job ids would dominate the run's memory. This open-addressing table keeps
only the 8-byte hashes in one flat buffer: 16-32 bytes an id, and ``in``/``add`` stay O(1).
"""

from __future__ import annotations

__all__ = ["IdSet"]

_EMPTY = 0
_MIN_CAPACITY = 1 << 12


class IdSet:
    """Remembers ``hash(id)`` values; :meth:`add` says whether the value was new.

    Two different ids with equal 64-bit hashes are taken for duplicates; with a million ids the
    odds of that are about 1 in 10^7.
    """

    __slots__ = ("_count", "_mask", "_slots")

    def __init__(self) -> None:
        self._count = 0
        self._mask = _MIN_CAPACITY - 1
        self._slots = memoryview(bytearray(8 * _MIN_CAPACITY)).cast("q")

    def __len__(self) -> int:
        return self._count

    def __contains__(self, h: int) -> bool:
        h = h or 1  # 0 marks an empty slot
        slots, mask = self._slots, self._mask
        i = h & mask
        while True:
            v = slots[i]
            if v == h:
                return True
            if v == _EMPTY:
                return False
            i = (i + 1) & mask

    def add(self, h: int) -> bool:
        """Insert ``h``; True when it was not there before."""
        h = h or 1
        slots, mask = self._slots, self._mask
        i = h & mask
        while True:
            v = slots[i]
            if v == h:
                return False
            if v == _EMPTY:
                slots[i] = h
                self._count += 1
                if 2 * self._count > mask:  # keep the load under one half: probes stay short
                    self._grow()
                return True
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        cap = 2 * (self._mask + 1)
        mask = cap - 1
        slots = memoryview(bytearray(8 * cap)).cast("q")
        for h in old:
            if h != _EMPTY:
                i = h & mask
                while slots[i] != _EMPTY:
                    i = (i + 1) & mask
                slots[i] = h
        self._slots, self._mask = slots, mask
