"""Cache-pressure control: learn how many groups, and how many of a group's requests, the
server's prompt cache can serve at once (pure logic, no IO).

Servers cache prefixes in different shapes: a global LRU (vLLM, SGLang) evicts when the working
set of prefixes outgrows it; a per-slot cache (llama.cpp's ``llama-server``) keeps one prompt per
slot and sends a request to the idle slot with the longest common prefix, so two requests of one
group in flight at once land in two slots and one of them recomputes the prefix; provider caches
route by key to machines of their own. Nobody should have to know which one they talk to.

The controller learns the server's shape first, then behaves like the fixed scheduler tuned
for it. The scheduler reports every follower's answer: how many prompt tokens the server says it
cached against how many the group's prefix holds; a follower is a *miss* when it got less than
half. The followers a primer's answer releases together form a *batch*, sent when the prefix was
known to be on the server. Until the shape is known, groups send one request at a time (safe on
every cache) and one group at a time *probes*: its primer releases two followers together.

- a *split*: some of a batch hit the whole prefix and others missed. On a shared cache (a global
  LRU, one machine behind a key) the siblings of a batch all hit, or an eviction makes them all
  miss; only a cache that keeps a prefix in one place of several (a slot) splits them. The
  per-group cap drops to the batch's hits (the places that held the prefix). Once a split has
  shown a per-slot cache, a later miss sent beside a sibling is a split too;
- an *eviction*: every follower of a batch missed, or a follower sent alone after its group was
  known warm missed: other groups pushed its prefix out, so the active groups drop to three
  quarters of those that were active.

Misses of requests sent before the last cut carry no news (one cut per round). Hits grow the groups
only while it is what holds the run back (the pipeline has idle slots the knob kept empty): the
groups by one a round, the cap by one a round until the shape is known (never on a per-slot
cache: a second request of a group in flight there recomputes its prefix in another slot). Two
batches that all hit show a
shared cache: the cap goes to its ceiling at once (full fan-out, as the fixed scheduler). A
server without a cache never hits: after four batches (or lone followers) missed with no hit
ever, or one group alone missed, the controller concludes there is nothing to protect and
restores the ceilings. Both knobs stay within ``[1, ceiling]``, so every active
group keeps making progress.
"""

from __future__ import annotations

import math

__all__ = ["INITIAL_ACTIVE_GROUPS", "MISS_FRACTION", "CacheControl"]

INITIAL_ACTIVE_GROUPS = 8  # where the active-group limit starts (the fixed default)
MISS_FRACTION = 0.5  # a follower with less than this share of its prefix cached missed
GROUPS_DECREASE = 0.75  # an eviction keeps this share of the groups that were active
CAP_DECREASE = 0.5  # a later split keeps this share of the group's requests that were in flight
# Until the server has shown its shape, groups send one request at a time, except one *probe*
# at a time: a primer whose answer releases two followers together (the primer counts while it
# is answered), enough to see them split or not, so that a per-slot cache pays one recomputed
# prefix for the lesson instead of a whole fan-out in every group.
PROBE_CAP = 3
PROBE_PATIENCE = 64  # follower answers after which a probe that never reported is given up
SHARED_EVIDENCE = 2  # batches of two or more that all hit: a shared cache, fan out in full
COLD_EVIDENCE = 4  # batches (or lone followers) that all missed, no hit ever: no server cache
MAX_BATCHES = 4096  # batches remembered (a follower that fails never reports)


class CacheControl:
    """The two learned limits: ``groups`` active at once and ``cap`` in flight per group.

    ``adapt=False`` fixes both at their ceilings (for sweeps and for users who know their
    server). The scheduler registers each post-primer release with :meth:`open_batch`, calls
    :meth:`observe` for every follower answer and sets :attr:`cap_starved` /
    :attr:`groups_starved` when a knob leaves slots idle.
    """

    __slots__ = (
        "_batches",
        "_cap",
        "_groups",
        "_next_batch",
        "adapt",
        "cap_ceiling",
        "cap_shrinks",
        "cap_starved",
        "cold",
        "epoch",
        "groups_ceiling",
        "groups_shrinks",
        "groups_slow_start",
        "groups_starved",
        "hits",
        "misses",
        "no_cache",
        "per_slot",
        "probe",
        "probe_age",
        "seen_hit",
        "shared",
    )

    def __init__(self, *, max_groups: int, max_per_group: int, adapt: bool = True) -> None:
        if max_groups < 1 or max_per_group < 1:
            raise ValueError("max_groups and max_per_group must be >= 1")
        self.adapt = adapt
        self.groups_ceiling = max_groups
        self.cap_ceiling = max_per_group
        self._groups = float(min(INITIAL_ACTIVE_GROUPS, max_groups) if adapt else max_groups)
        # One at a time until a probe shows the shape; a shared cache then fans out in full.
        self._cap = 1.0 if adapt else float(max_per_group)
        # Until the first eviction, groups open beyond the limit whenever slots would sit idle.
        self.groups_slow_start = True
        self.cap_starved = False  # set by the scheduler: idle slots while the cap held jobs back
        self.groups_starved = False  # idle slots while the limit kept waiting groups closed
        self.epoch = 0  # bumped at every cut; a dispatch remembers the epoch it was sent in
        self.groups_shrinks = 0
        self.cap_shrinks = 0
        self.hits = 0
        self.misses = 0
        self.seen_hit = False
        self.no_cache = False
        self.per_slot = False  # a split was seen: the cache keeps a prefix in one place of many
        self.cold = 0  # all-miss evidence before any hit
        self.shared = 0  # batches that all hit, before any split
        self.probe = 0  # the probe batch out now (0: none)
        self.probe_age = 0  # follower answers since it went out
        self._next_batch = 0
        # batch id -> [size, hits, misses, decided]
        self._batches: dict[int, list[int]] = {}

    @property
    def groups(self) -> int:
        """Groups that may be active at once."""
        return max(1, int(self._groups))

    @property
    def cap(self) -> int:
        """A group's requests that may be in flight at once."""
        return max(1, int(self._cap))

    def new_batch(self) -> int:
        """An id for the followers a primer's answer is about to release (register its size
        with :meth:`open_batch` once known)."""
        self._next_batch += 1
        return self._next_batch

    @property
    def probing(self) -> bool:
        """Whether the server's shape is still unknown (the cap held at one)."""
        return self.adapt and not self.per_slot and self.shared < SHARED_EVIDENCE

    def release_cap(self, batch: int) -> int:
        """The cap for a release: :attr:`cap`, or the probe's when ``batch`` may be the probe."""
        if batch and self.probing and not self.probe:
            self.probe = batch
            self.probe_age = 0
            return max(self.cap, min(PROBE_CAP, self.cap_ceiling))
        return self.cap

    def open_batch(self, batch: int, size: int) -> None:
        """``size`` followers were released together as ``batch``."""
        if size <= 0 or not self.adapt:
            if batch == self.probe:
                self.probe = 0
            return
        batches = self._batches
        if len(batches) >= MAX_BATCHES:
            del batches[next(iter(batches))]  # the oldest: its stragglers failed
        batches[batch] = [size, 0, 0, 0]

    def unsend(self, batch: int) -> None:
        """A follower of ``batch`` was taken back before it was sent."""
        b = self._batches.get(batch) if batch else None
        if b is not None:
            b[0] -= 1
            if b[0] <= b[1] + b[2]:
                del self._batches[batch]
                if batch == self.probe:
                    self.probe = 0

    def observe(
        self,
        *,
        cached: int,
        expected: float,
        siblings: int,
        epoch: int,
        active: int,
        batch: int = 0,
    ) -> bool:
        """A follower answered with ``cached`` of about ``expected`` prefix tokens; True if hit.

        :param siblings: its group's other requests in flight when it was sent.
        :param epoch: :attr:`epoch` when it was sent.
        :param active: groups active when it was sent.
        :param batch: the post-primer batch it was released in (0: released on its own).
        """
        hit = cached >= MISS_FRACTION * expected
        if hit:
            self.hits += 1
            self.seen_hit = True
        else:
            self.misses += 1
        if not self.adapt:
            return hit
        if self.probe:
            self.probe_age += 1
            if self.probe_age > PROBE_PATIENCE:
                self.probe = 0  # its followers failed: let another group probe
        b = self._batches.get(batch) if batch else None
        if b is not None:
            b[1 + (not hit)] += 1
            if b[1] + b[2] >= b[0]:
                del self._batches[batch]
                if batch == self.probe:
                    self.probe = 0
                if b[1] >= b[0] >= 2 and not self.per_slot and self.shared < SHARED_EVIDENCE:
                    self.shared += 1
                    if self.shared >= SHARED_EVIDENCE:
                        # Siblings sent together all found the prefix: one cache for all.
                        self._cap = float(self.cap_ceiling)
        if hit:
            self._grow(siblings)
            return True
        if epoch != self.epoch:
            return False  # sent before the last cut: old news
        if b is not None and b[0] > 1:
            if b[1] and not b[3]:
                # Split: some of the batch found the prefix, this one did not.
                b[3] = 1
                self._cut_cap(b[1])
            elif b[2] >= b[0]:
                self._evicted(active)  # the whole batch missed
            return False
        if siblings == 0 or b is not None:
            self._evicted(active)  # alone (or a batch of one), known warm, still missed
        elif self.per_slot:
            self._cut_cap(math.floor((siblings + 1) * CAP_DECREASE))
        # Else a miss beside siblings on a cache not known to split: no evidence either way.
        return False

    def _cut_cap(self, keep: int) -> None:
        self.per_slot = True
        self.epoch += 1
        self._cap = float(max(1, min(keep, self.cap)))
        self.cap_shrinks += 1

    def _evicted(self, active: int) -> None:
        if not self.seen_hit:
            self.cold += 1
            if self.cold >= COLD_EVIDENCE or active <= 1:
                # Never a hit, every follower cold: nothing to protect.
                self.no_cache = True
                self.adapt = False
                self._groups = float(self.groups_ceiling)
                self._cap = float(self.cap_ceiling)
                self._batches.clear()
                return
        self.epoch += 1
        self._groups = max(1.0, math.floor(active * GROUPS_DECREASE))
        self.groups_slow_start = False
        self.groups_shrinks += 1

    def _grow(self, siblings: int) -> None:
        if (
            self.cap_starved
            and not self.per_slot
            and siblings + 1 >= self.cap
            and self._cap < self.cap_ceiling
        ):
            # The cap was used in full and slots sat idle while the shape is not known yet: one
            # more per round. Never on a per-slot cache: there a second request of a group in
            # flight recomputes its prefix in another slot (measured on the mock per-slot test:
            # 6-9 follower misses of 88 with tail probes, 3-6 without).
            step = 1.0 / (self._cap * self._groups)
            self._cap = min(float(self.cap_ceiling), self._cap + step)
        if self.groups_starved and self._groups < self.groups_ceiling:
            # About one more group per round: a round brings about groups x cap answers.
            step = 1.0 / (self._groups * self._cap)
            self._groups = min(float(self.groups_ceiling), self._groups + step)

    @property
    def may_exceed(self) -> bool:
        """Whether groups may open beyond the limit when slots would otherwise sit idle."""
        return not self.adapt or self.groups_slow_start

    def summary(self) -> dict[str, object]:
        done = self.hits + self.misses
        return {
            "adaptive": self.adapt,
            "active_groups": self.groups,
            "group_concurrency": self.cap,
            "group_shrinks": self.groups_shrinks,
            "cap_shrinks": self.cap_shrinks,
            "follower_hits": self.hits,
            "follower_misses": self.misses,
            "follower_hit_ratio": self.hits / done if done else None,
            "server_cache": not self.no_cache,
        }
