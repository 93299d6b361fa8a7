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
half. The followers a primer's answer releases together form a *batch*.

- The *probe*: at the start one group is served alone (nothing else on the server to evict its
  prefix or take its slot), and its primer's answer releases two followers together. Both hit:
  a *shared* cache (a global LRU, one machine behind a key). One hit and one missed: a
  *per-slot* cache, the per-group cap drops to one. Both missed with nothing else sent: the
  server keeps *no cache* for these prompts. A group too small to release two followers, or
  followers that answer without usage, leave the shape *unknown*: the fixed scheduler's
  behaviour (full fan-out), which is also where a shared cache starts. A shared cache must show
  itself in two probes in a row (the group's next release, nothing else in flight, probes again).
- The pipeline waits for a verdict only while the probe's followers may still be waiting for their
  place on the server: the server reads a request's cached prefix when it starts it and starts
  requests in arrival order, so once both followers have arrived, later traffic cannot change what
  they report. The scheduler gives the probe ``SETTLE_FACTOR`` times its primer's latency (a cold
  prefill and a short reply; at least ``SETTLE_MIN_S``) from the followers' release
  (:meth:`CacheControl.settle_by`); past that, with a follower still out (a long reply), the
  isolation ends (:meth:`CacheControl.end_isolation`): the other groups open, each still one
  request at a time (right on a per-slot cache, and what cannot split a prefix over slots while
  the verdict is out; measured on llama-server, where a full fan-out there cost 6 misses in 114
  followers), and the verdict applies when it lands. A probe that all hit after the isolation
  ended cannot be repeated alone: the shape stays unknown.
- On a shared cache every follower fans out (as the fixed scheduler does) and the groups start
  at ``SHARED_GROUPS``, opening more whenever slots would sit idle until the first eviction.
  A follower of a warm group that misses there means the working set of prefixes outgrew the
  cache (an LRU evicted it, or the router's machine for its key holds too few prefixes): the
  active groups drop to three quarters of those active when it was sent, and they never grow
  back to that count until ``RELAX_HITS`` follower hits in a row (hysteresis: no sawtooth into
  the same evictions).
- On a per-slot cache a follower sent alone after its group was known warm that misses is an
  eviction (more groups than slots); a miss beside siblings is a split and cuts the cap.

Misses of requests sent before the last cut carry no news (one cut per round). Hits grow the
groups by about one a round only while that is what holds the run back (the pipeline has idle
slots the limit kept empty). Both knobs stay within ``[1, ceiling]``, so every active group keeps
making progress.
"""

from __future__ import annotations

import math

__all__ = [
    "INITIAL_ACTIVE_GROUPS",
    "MISS_FRACTION",
    "SETTLE_FACTOR",
    "SETTLE_MIN_S",
    "CacheControl",
]

INITIAL_ACTIVE_GROUPS = 8  # where the active-group limit starts (the fixed default)
# Where it starts on a shared cache: a global LRU sized for a few long prompts overflows with 8
# groups fanning out at once (measured on the mock LRU shape: fixed 8 groups 0.953-0.992 of
# prompt tokens cached depending on machine load, 4 groups 0.989, 2 groups 0.992), and one
# eviction costs a whole fan-out of misses; it grows whenever slots would sit idle.
SHARED_GROUPS = 4
MISS_FRACTION = 0.5  # a follower with less than this share of its prefix cached missed
GROUPS_DECREASE = 0.75  # an eviction keeps this share of the groups that were active
CAP_DECREASE = 0.5  # a later split keeps this share of the group's requests that were in flight
# The probe: a primer whose answer releases two followers together (the primer counts while it
# is answered), enough to see them split or not, so that a per-slot cache pays one recomputed
# prefix for the lesson.
PROBE_CAP = 3
# Follower hits in a row after which the groups may grow again past the count an eviction
# showed too many (a server's cache may free up; a lone miss must not pin the limit for good).
RELAX_HITS = 256
# Probes that all hit before the cache is taken for shared: on llama-server with a tiny model one
# follower may finish before its sibling is given a slot, and the sibling then finds the prefix
# in the same slot (seen once in five runs of tests/test_realserver.py).
SHARED_PROBES = 2
# How long the pipeline holds everything else for a probe's followers, in multiples of the probe
# primer's latency (a cold prefill and a reply): time enough for both to reach the server, which
# starts requests in arrival order, so later traffic cannot take their place.
SETTLE_FACTOR = 1.0
# ... and never less than this: on a fast server a primer answers in milliseconds, less than the
# client's own scheduling jitter, and followers that reached the server after other traffic
# leave the shape unknown (fixed limits). A quarter second, at most twice a run, costs nothing.
SETTLE_MIN_S = 0.25
PROBE_TRIES = 4  # releases too small to probe (fewer than two followers) before giving up
MAX_BATCHES = 4096  # batches remembered (a follower that fails never reports)

UNKNOWN, SHARED, PER_SLOT, NO_CACHE = "unknown", "shared", "per-slot", "none"


class CacheControl:
    """The two learned limits: ``groups`` active at once and ``cap`` in flight per group.

    ``adapt=False`` fixes both at their ceilings (for sweeps and for users who know their
    server). The scheduler registers each post-primer release with :meth:`open_batch`, calls
    :meth:`observe` for every follower answer and :meth:`finished` for every follower done,
    and sets :attr:`cap_starved` / :attr:`groups_starved` when a knob leaves slots idle.
    """

    __slots__ = (
        "_batches",
        "_cap",
        "_groups",
        "_groups_max",
        "_next_batch",
        "adapt",
        "cap_ceiling",
        "cap_shrinks",
        "cap_starved",
        "epoch",
        "groups_ceiling",
        "groups_shrinks",
        "groups_slow_start",
        "groups_starved",
        "hit_run",
        "hits",
        "isolated",
        "misses",
        "probe",
        "probe_tries",
        "probing",
        "settle_at",
        "shape",
        "shared_probes",
    )

    def __init__(self, *, max_groups: int, max_per_group: int, adapt: bool = True) -> None:
        if max_groups < 1 or max_per_group < 1:
            raise ValueError("max_groups and max_per_group must be >= 1")
        self.adapt = adapt
        self.groups_ceiling = max_groups
        self.cap_ceiling = max_per_group
        self._groups = float(min(INITIAL_ACTIVE_GROUPS, max_groups) if adapt else max_groups)
        self._groups_max = float(max_groups)  # lowered by evictions (hysteresis)
        # A probe needs two followers in flight together; with a lower ceiling the shape does
        # not matter for the cap and the groups learn from evictions alone.
        self.probing = adapt and max_per_group >= PROBE_CAP
        self.isolated = self.probing  # the probe's group is served alone
        self.settle_at: float | None = None  # when the isolation ends with a probe still out
        self.shape = UNKNOWN
        # One at a time until the probe shows the shape; a shared cache then fans out in full.
        self._cap = 1.0 if self.probing else float(max_per_group)
        # Until the first eviction, groups open beyond the limit whenever slots would sit idle.
        self.groups_slow_start = True
        self.cap_starved = False  # set by the scheduler: idle slots while the cap held jobs back
        self.groups_starved = False  # idle slots while the limit kept waiting groups closed
        self.epoch = 0  # bumped at every cut; a dispatch remembers the epoch it was sent in
        self.groups_shrinks = 0
        self.cap_shrinks = 0
        self.hits = 0
        self.misses = 0
        self.hit_run = 0  # follower hits since the last miss
        self.probe = 0  # the probe batch (0: none yet)
        self.probe_tries = 0
        self.shared_probes = 0  # probe batches that all hit
        self._next_batch = 0
        # batch id -> [size, hits, misses, decided, finished]
        self._batches: dict[int, list[int]] = {}

    @property
    def groups(self) -> int:
        """Groups that may be active at once (one while the probe runs alone)."""
        return 1 if self.isolated else max(1, int(self._groups))

    @property
    def cap(self) -> int:
        """A group's requests that may be in flight at once."""
        return max(1, int(self._cap))

    @property
    def per_slot(self) -> bool:
        return self.shape == PER_SLOT

    @property
    def no_cache(self) -> bool:
        return self.shape == NO_CACHE

    def new_batch(self) -> int:
        """An id for the followers a primer's answer is about to release (register its size
        with :meth:`open_batch` once known)."""
        self._next_batch += 1
        return self._next_batch

    def release_cap(self, batch: int, in_flight: int = 1) -> int:
        """The cap for a release: :attr:`cap`, or the probe's when ``batch`` is the probe (two
        followers beside the group's ``in_flight``: its primer while that is answered)."""
        if batch and self.probing and not self.probe:
            self.probe = batch
            return min(in_flight + PROBE_CAP - 1, self.cap_ceiling)
        return self.cap

    def open_batch(self, batch: int, size: int) -> None:
        """``size`` followers were released together as ``batch``."""
        if not self.adapt:
            return
        if batch and batch == self.probe and size < 2:
            # Too few followers to tell: the next release probes, and after a few such the
            # shape stays unknown (the fixed scheduler's behaviour).
            self.probe = 0
            self.probe_tries += 1
            if self.probe_tries >= PROBE_TRIES:
                self._decide(UNKNOWN)
        if size <= 0:
            return
        batches = self._batches
        if len(batches) >= MAX_BATCHES:
            del batches[next(iter(batches))]  # the oldest: its stragglers failed
        batches[batch] = [size, 0, 0, 0, 0]

    def unsend(self, batch: int) -> None:
        """A follower of ``batch`` was taken back before it was sent."""
        b = self._batches.get(batch) if batch else None
        if b is not None:
            b[0] -= 1
            if b[0] <= b[1] + b[2]:
                del self._batches[batch]

    def finished(self, batch: int) -> None:
        """A follower of ``batch`` is done (after :meth:`observe`, if it reported)."""
        b = self._batches.get(batch) if batch else None
        if b is None:
            return
        b[4] += 1
        if b[4] > b[1] + b[2]:
            # It answered without usage (or failed): the batch will never be complete.
            del self._batches[batch]
            if batch == self.probe and self.probing:
                self._decide(UNKNOWN)

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
            self.hit_run += 1
        else:
            self.misses += 1
            self.hit_run = 0
        if not self.adapt:
            return hit
        b = self._batches.get(batch) if batch else None
        if b is not None:
            b[1 + (not hit)] += 1
            if b[1] + b[2] >= b[0]:
                del self._batches[batch]
                if batch == self.probe and self.probing:
                    self._verdict(b[0], b[1], active)
                    return hit
        if self.probing:
            return hit  # the probe's verdict decides (other traffic, if any, waits for it)
        if hit:
            self._grow()
            return True
        if epoch != self.epoch:
            return False  # sent before the last cut: old news
        if self.shape != PER_SLOT:
            # A shared cache fans a group out: a warm group's follower that missed found its
            # prefix evicted (or its key's machine full): too many prefixes at once.
            self._evicted(active)
            return False
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
        else:
            self._cut_cap(math.floor((siblings + 1) * CAP_DECREASE))
        return False

    def _verdict(self, size: int, hits: int, active: int) -> None:
        """The probe's batch is complete: what the server's cache looks like."""
        if hits >= size:
            self.shared_probes += 1
            if self.shared_probes >= SHARED_PROBES:
                self._decide(SHARED)
            elif not self.isolated:
                # Other traffic is out by now: a second probe could not be read alone, and one
                # probe that all hit may be a per-slot cache's race (see SHARED_PROBES).
                self._decide(UNKNOWN)
            else:
                self.probe = 0  # the group's next release (nothing else in flight) probes again
                self.settle_at = None
        elif hits:
            self._decide(PER_SLOT)
            self._cut_cap(hits)  # the places that held the prefix
        elif self.shared_probes:
            self._decide(UNKNOWN)  # hits, then nothing: no clear shape
        else:
            # Its primer answered, nothing else was sent, both followers missed.
            self._decide(NO_CACHE)

    def settle_by(self, when: float) -> None:
        """The probe's followers were released: past ``when`` (the caller's clock) the pipeline
        need not hold everything else for them (see :meth:`end_isolation`)."""
        if self.probing and self.isolated:
            self.settle_at = when

    def settled(self, now: float) -> bool:
        """Whether the isolation ends now: True (once) when ``now`` is past :attr:`settle_at`."""
        when = self.settle_at
        if when is None or now < when or not self.isolated:
            return False
        self.end_isolation()
        return True

    def end_isolation(self) -> None:
        """The probe's followers have had time to start: whatever else is sent now cannot change
        what they report. Until their verdict the groups open, one request each at a time."""
        self.isolated = False
        self.settle_at = None

    def _decide(self, shape: str) -> None:
        self.probing = self.isolated = False
        self.settle_at = None
        self.probe = 0
        self.shape = shape
        if shape == NO_CACHE:
            # Nothing to protect: the fixed scheduler's limits.
            self.adapt = False
            self._groups = float(self.groups_ceiling)
            self._batches.clear()
        if shape != PER_SLOT:
            self._cap = float(self.cap_ceiling)
        if shape == SHARED:
            self._groups = float(min(SHARED_GROUPS, self.groups_ceiling))

    def _cut_cap(self, keep: int) -> None:
        self.epoch += 1
        self._cap = float(max(1, min(keep, self.cap)))
        self.cap_shrinks += 1

    def _evicted(self, active: int) -> None:
        self.epoch += 1
        self._groups = max(1.0, math.floor(active * GROUPS_DECREASE))
        self._groups_max = float(max(1, min(int(self._groups_max), active - 1)))
        self.groups_slow_start = False
        self.groups_shrinks += 1

    def _grow(self) -> None:
        if self.hit_run >= RELAX_HITS and self._groups_max < self.groups_ceiling:
            self._groups_max += 1.0
            self.hit_run = 0
        if self.groups_starved and self._groups < self._groups_max:
            # About one more group per round: a round brings about groups x cap answers.
            step = 1.0 / (self._groups * self._cap)
            self._groups = min(self._groups_max, self._groups + step)

    @property
    def may_exceed(self) -> bool:
        """Whether groups may open beyond the limit when slots would otherwise sit idle."""
        return not self.adapt or (self.groups_slow_start and not self.isolated)

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
            "cache_shape": self.shape if self.adapt or self.no_cache else None,
        }
