"""The cyclic garbage collector's settings for a process that keeps many requests in flight.

A process-wide choice, so only the command-line entry points make it (``runner run``,
``runner bench``, ``runner mock``); code that imports runner as a library keeps its own.

CPython collects the young generation when allocations less frees of tracked objects pass its
threshold (700 by default), but the frees of objects that survived a collection are not taken off
the count. A run allocates a few dozen tracked objects per request; when the answers of hundreds
of request slots land in one turn of the loop the count passes a fixed threshold every few turns,
and each collection re-walks every request in flight. At concurrency 1,024 with a threshold of
10,000, a 40,000-job run spent 1.7 s of its 7.5 s in the collector (145 young and 13 middle
collections, by ``gc.callbacks``); ``runner bench`` at 512 slots with the default spent 1.3 s of
8.5 s, in pauses of up to 133 ms that its own latency records then counted. A threshold of 100
per slot leaves a handful of collections per run. Requests make few reference cycles (a whole
run left 114 objects to ``gc.DEBUG_SAVEALL``), so the garbage a larger threshold lets wait is
small, and :data:`GEN0_MAX` bounds it all the same.
"""

from __future__ import annotations

import gc

__all__ = ["GEN0_FLOOR", "GEN0_MAX", "GEN0_PER_SLOT", "gen0_threshold", "tune"]

GEN0_FLOOR = 10_000
GEN0_PER_SLOT = 100  # tracked allocations of one request (about 40), with room to spare
GEN0_MAX = 250_000


def gen0_threshold(slots: int) -> int:
    """The young generation's threshold for a process with ``slots`` requests in flight."""
    return min(max(GEN0_FLOOR, GEN0_PER_SLOT * slots), GEN0_MAX)


def tune(threshold: int) -> None:
    """Freeze what start-up built (modules, classes: never garbage) out of the collector's way
    for good, set the young generation's ``threshold``, and turn the collector on."""
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(threshold, gen1, gen2)
    gc.enable()
