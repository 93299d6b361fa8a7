"""Cache-pressure control: learn how many groups, and how many of a group's requests, the
server's prompt cache can serve at once (pure logic, no IO).

Servers cache prefixes in different shapes: a global LRU (vLLM, SGLang) evicts when the working
set of prefixes outgrows it; a per-slot cache (llama.cpp's ``llama-server``) keeps one prompt per
slot and sends a request to the idle slot with the longest common prefix, so two requests of one
group in flight at once land in two slots and one of them recomputes the prefix; provider caches
route by key to machines of their own. Nobody should have to know which one they talk to.

The scheduler reports every follower's answer: how many prompt tokens the server says it cached
against how many the group's prefix holds. A follower is a *miss* when it got less than half.
Two kinds of miss tell two different things:

- a *split*: the follower was sent while another request of its group was in flight. Its prefix
  was on the server but busy or elsewhere (another slot, another machine), so the per-group
  in-flight cap is too high;
- an *eviction*: it was sent alone, after its group was known warm, and still missed: other
  groups pushed its prefix out, so the cache working set (active groups) is too large.

Each knob is an AIMD controller, like the rate controller for rate limits: a miss cuts it
(the cap halves, the active groups drop to three quarters of what was in use) at most once per
round (misses of requests sent before the last cut carry no news), and hits grow it, fast until
the first cut (slow start) and by one per round after. A knob grows only
when it is what holds the run back (the pipeline has idle slots the knob kept empty), so a
per-slot server whose groups already fill every slot is never probed into misses. A server without a
cache misses everything: once one group sent one request at a time still missed and nothing
ever hit, the controller concludes there is no cache to protect and restores the ceilings.
Both knobs stay within ``[1, ceiling]``, so every active group keeps making progress.
"""

from __future__ import annotations

import math

__all__ = ["INITIAL_ACTIVE_GROUPS", "MISS_FRACTION", "CacheControl"]

INITIAL_ACTIVE_GROUPS = 8  # where the active-group limit starts (the old fixed default)
MISS_FRACTION = 0.5  # a follower with less than this share of its prefix cached missed
GROUPS_DECREASE = 0.75  # an eviction keeps this share of the groups that were active
CAP_DECREASE = 0.5  # a split keeps this share of the group's requests that were in flight
# After repeated splits, probe the cap at most every 2**MAX_BACKOFF rounds. Measured: 4 kept a
# per-slot server's tail near its best hit ratio but made the global-LRU and replica shapes 3-5x
# slower than --cache none (misattributed evictions cut the cap and it never grew back); 0 does not.
MAX_BACKOFF = 0


class CacheControl:
    """The two learned limits: ``groups`` active at once and ``cap`` in flight per group.

    ``adapt=False`` fixes both at their ceilings (the pre-controller behaviour, for sweeps and
    for users who know their server). The scheduler calls :meth:`observe` for every follower
    answer and sets :attr:`cap_starved` / :attr:`groups_starved` when a knob leaves slots idle.
    """

    __slots__ = (
        "_cap",
        "_groups",
        "adapt",
        "cap_ceiling",
        "cap_shrinks",
        "cap_slow_start",
        "cap_starved",
        "epoch",
        "groups_ceiling",
        "groups_shrinks",
        "groups_slow_start",
        "groups_starved",
        "hits",
        "misses",
        "no_cache",
        "seen_hit",
    )

    def __init__(self, *, max_groups: int, max_per_group: int, adapt: bool = True) -> None:
        if max_groups < 1 or max_per_group < 1:
            raise ValueError("max_groups and max_per_group must be >= 1")
        self.adapt = adapt
        self.groups_ceiling = max_groups
        self.cap_ceiling = max_per_group
        self._groups = float(min(INITIAL_ACTIVE_GROUPS, max_groups) if adapt else max_groups)
        # Slow start from one request per group: on a per-slot server a group's second request
        # in flight already misses, so the cap must be learned upwards, not downwards.
        self._cap = 1.0 if adapt else float(max_per_group)
        # Until the first eviction, groups open beyond the limit whenever slots would sit idle.
        self.groups_slow_start = True
        self.cap_slow_start = True
        self.cap_starved = False  # set by the scheduler: idle slots while the cap held jobs back
        self.groups_starved = False  # idle slots while the limit kept waiting groups closed
        self.epoch = 0  # bumped at every cut; a dispatch remembers the epoch it was sent in
        self.groups_shrinks = 0
        self.cap_shrinks = 0
        self.hits = 0
        self.misses = 0
        self.seen_hit = False
        self.no_cache = False

    @property
    def groups(self) -> int:
        """Groups that may be active at once."""
        return max(1, int(self._groups))

    @property
    def cap(self) -> int:
        """A group's requests that may be in flight at once."""
        return max(1, int(self._cap))

    def observe(
        self, *, cached: int, expected: float, siblings: int, epoch: int, active: int
    ) -> bool:
        """A follower answered with ``cached`` of about ``expected`` prefix tokens; True if hit.

        :param siblings: its group's other requests in flight when it was sent.
        :param epoch: :attr:`epoch` when it was sent.
        :param active: groups active when it was sent.
        """
        hit = cached >= MISS_FRACTION * expected
        if hit:
            self.hits += 1
            self.seen_hit = True
            if self.adapt:
                self._grow(siblings)
            return True
        self.misses += 1
        if not self.adapt or epoch != self.epoch:
            return False
        if not self.seen_hit and active <= 1 and siblings == 0 and self._cap <= 1:
            # Alone on the server and still cold, never a hit: nothing to protect.
            self.no_cache = True
            self.adapt = False
            self._groups = float(self.groups_ceiling)
            self._cap = float(self.cap_ceiling)
            return False
        self.epoch += 1
        if siblings > 0:
            # Split: keep half of what was in flight, then grow one at a time.
            self._cap = max(1.0, math.floor((siblings + 1) * CAP_DECREASE))
            self.cap_slow_start = False
            self.cap_shrinks += 1
        else:
            self._groups = max(1.0, math.floor(active * GROUPS_DECREASE))
            self.groups_slow_start = False
            self.groups_shrinks += 1
        return False

    def _grow(self, siblings: int) -> None:
        if self.cap_starved and siblings + 1 >= self.cap and self._cap < self.cap_ceiling:
            # The cap was used in full and slots sat idle: it is what holds the run back.
            # After a split, one more per round (see MAX_BACKOFF for probing more rarely).
            rounds = 1 << min(self.cap_shrinks, MAX_BACKOFF)
            step = 1.0 if self.cap_slow_start else 1.0 / (self._cap * self._groups * rounds)
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
