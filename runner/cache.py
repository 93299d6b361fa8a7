"""Cache groups and the warm-then-fan-out policy (pure logic, no IO).

A provider caches a prefix only after a request that carries it has been answered (Anthropic:
once its response begins), so sending a whole group at once makes every request pay for the
prefix. The ``warm`` strategy sends one *primer* per group, holds the group's *followers* until
the primer has answered, then releases them, at most the per-group cap in flight at once. To
keep the provider's bounded prefix cache from thrashing, a limited number of groups is served at
a time, most-populated first; a group that has drained is closed and the next one opened. Groups
keep moving in parallel, so priming never serialises the run. Both limits are learned from the
cached tokens the server reports (:mod:`runner.cachectl`), below the configured ceilings. The
``none`` strategy dispatches in arrival order.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from .cachectl import MISS_FRACTION, SETTLE_FACTOR, SETTLE_MIN_S, CacheControl
from .models import CacheRole, Job, estimate_tokens

__all__ = ["Dispatch", "Scheduler"]

MAX_KEYS_PER_GROUP = 16
PRIMER_CANDIDATES = 32  # held jobs looked at when choosing a primer


class Dispatch:
    """A job the pipeline may send now, with its role and provider cache key.

    One is made per job, so it is a plain slotted class rather than a frozen dataclass (whose
    generated methods Python 3.11 compiles at every start-up, and whose ``__init__`` sets each
    field through ``object.__setattr__``); the fields are ``Final``, so mypy still refuses an
    assignment. Never compared or shown.
    """

    __slots__ = (
        "active",
        "admitted",
        "batch",
        "cache_key",
        "epoch",
        "group",
        "job",
        "role",
        "siblings",
    )

    def __init__(
        self,
        job: Job,
        role: CacheRole,
        cache_key: str | None,
        group: str | None = None,
        siblings: int = 0,
        epoch: int = 0,
        active: int = 0,
        batch: int = 0,
        admitted: float = 0.0,
    ) -> None:
        self.job: Final = job
        self.role: Final = role
        self.cache_key: Final = cache_key
        self.group: Final = group  # the scheduler's group (or per-key sub-group) of the job
        self.siblings: Final = siblings  # the group's other requests in flight at release
        self.epoch: Final = epoch  # the cache controller's epoch at release (runner.cachectl)
        self.active: Final = active  # groups active at release
        self.batch: Final = batch  # the post-primer release it was in (0: released on its own)
        self.admitted: Final = admitted  # when the pipeline admitted the job: queue time starts


class _Group:
    __slots__ = (
        "family",
        "fixed_key",
        "held",
        "in_flight",
        "key",
        "key_count",
        "key_window",
        "primer",
        "root",
        "sent_at",
        "state",
        "subs",
        "warm_at",
        "work",
    )

    def __init__(self, key: str, fixed_key: str | None = None, root: _Group | None = None) -> None:
        self.key = key
        self.fixed_key = fixed_key  # a per-key sub-group: every job goes with this cache key
        self.held: deque[tuple[Job, float]] = deque()  # (job, admitted at)
        self.in_flight = 0
        # A group and its per-key sub-groups share one prefix, so the per-group cap counts
        # their requests together (``family``, kept on the root).
        self.root: _Group = root or self
        self.family = 0
        self.subs: list[_Group] = []
        self.state = "cold"  # cold -> priming -> warm (-> cold again when the TTL lapses)
        self.primer: Job | None = None
        self.warm_at = 0.0  # when the prefix was last known to be cached
        self.sent_at = 0.0  # when its primer was handed to the pipeline
        self.work = 0  # reply tokens held while it waits to open (see Scheduler._pick_waiting)
        self.key_window = 0.0  # start of the current one-minute window for key spreading
        self.key_count = 0  # dispatches in that window


class Scheduler:
    """Decides which admitted job goes next.

    The pipeline calls :meth:`add` for every admitted job, :meth:`next` whenever it has a free
    slot, :meth:`answered` when a primer's response begins or ends, and :meth:`finished` when any
    job is done. All methods are O(1) amortised.
    """

    __slots__ = (
        "_active",
        "_clock",
        "_ctl",
        "_default_tokens",
        "_groups",
        "_idle_floor",
        "_key_hits",
        "_key_misses",
        "_key_rpm",
        "_lookahead",
        "_max_active",
        "_min_tokens",
        "_probe_settle",
        "_ready",
        "_strategy",
        "_ttl",
        "_use_keys",
        "_waiting",
    )

    def __init__(
        self,
        *,
        strategy: str,
        ttl_s: float,
        max_active_groups: int,
        min_cacheable_tokens: int,
        key_rpm: float | None = None,
        lookahead: int = 1 << 30,
        max_per_group: int = 1 << 30,
        adapt: bool = True,
        concurrency: int = 0,
        default_max_tokens: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._strategy = strategy
        self._lookahead = lookahead
        self._ttl = ttl_s
        self._max_active = max_active_groups
        self._idle_floor = concurrency  # 0: any idle slot counts as the cap holding back
        self._ctl = CacheControl(
            max_groups=max_active_groups, max_per_group=max_per_group, adapt=adapt
        )
        self._min_tokens = min_cacheable_tokens
        self._key_rpm = key_rpm
        self._use_keys = key_rpm is not None
        self._key_hits = self._key_misses = 0  # primers of new keys sent alone: warm or cold
        self._clock = clock
        # A job's reply budget when it sets none (the config's, else the provider's): primers
        # and probes are the shortest replies, other releases go longest first.
        self._default_tokens = default_max_tokens
        self._probe_settle = 0.0  # SETTLE_FACTOR x the probe primer's latency, >= SETTLE_MIN_S
        self._ready: deque[Dispatch] = deque()
        self._groups: dict[str, _Group] = {}
        self._active: set[str] = set()
        # Groups with held jobs that are not yet active, in first-seen order.
        self._waiting: dict[str, None] = {}

    # -- admission -------------------------------------------------------------------------

    def add(self, job: Job, admitted: float = 0.0) -> None:
        """Admit a job: ready at once, or held behind its group's primer.

        ``admitted`` (the pipeline's clock) travels with the job into its :class:`Dispatch`.
        """
        gkey = job.group
        if (
            self._strategy == "none"
            or gkey is None
            or estimate_tokens(job.prefix_chars) < self._min_tokens
        ):
            # Nothing to gain from priming: the prefix will never be cached.
            self._ready.append(Dispatch(job, "none", None, admitted=admitted))
            return
        g = self._groups.get(gkey)
        if g is None:
            g = self._groups[gkey] = _Group(gkey)
        g.held.append((job, admitted))
        if gkey not in self._active:
            self._waiting[gkey] = None
            g.work += job.max_tokens or self._default_tokens or 1
            return
        self._serve(g)

    # -- dispatch --------------------------------------------------------------------------

    def has_ready(self) -> bool:
        """Whether a job can go out without opening a group (primers, followers, ungrouped)."""
        return bool(self._ready)

    def next(self, free_slots: int, open_groups: bool = True) -> Dispatch | None:
        """The next job to send, or None. ``free_slots`` lets an idle pipeline open more groups;
        ``open_groups`` False (the reader still filling its window) opens none."""
        if not open_groups:
            return self._ready.popleft() if self._ready else None
        if self._ctl.settle_at is not None:
            # Once the probe's followers have had time to start, the other groups open (below),
            # its verdict still to come.
            self._ctl.settled(self._clock())
        if self._waiting and len(self._ready) < self._lookahead:
            self._open_groups(free_slots)
        if self._ready:
            return self._ready.popleft()
        if free_slots * 4 > self._idle_floor and self._active:
            # Idle slots (a quarter of the pipeline, not a passing gap while groups change
            # over): is the per-group cap what keeps held jobs back?
            cap = self._ctl.cap
            groups = self._groups
            # (A group behind its primer is held back by priming, not by the cap.)
            self._ctl.cap_starved = any(
                groups[k].held and groups[k].state == "warm" and groups[k].family >= cap
                for k in self._active
            )
        return None

    def wake_in(self) -> float | None:
        """Seconds until :meth:`next` may have something new with no answer arriving (the
        probe's isolation ends), or None: the pipeline calls it when :meth:`next` gave None."""
        when = self._ctl.settle_at
        return None if when is None else max(0.0, when - self._clock())

    def pending(self, key: str) -> int | None:
        """Jobs of group ``key`` held or in flight; None once the group has closed."""
        g = self._groups.get(key)
        return None if g is None else len(g.held) + g.in_flight

    @property
    def control(self) -> CacheControl:
        """The learned limits (read by the summary)."""
        return self._ctl

    def observe(self, d: Dispatch, prompt_tokens: int, cached: int | None) -> None:
        """A follower answered: learn from how much of its prefix the server had cached."""
        if d.role == "none" or cached is None or prompt_tokens <= 0:
            return
        job = d.job
        expected = prompt_tokens * job.prefix_chars / max(1, job.prompt_chars)
        if d.role == "primer":
            if d.cache_key is not None and "#" in (d.group or "") and d.siblings == 0:
                self._learn_keys(cached >= MISS_FRACTION * expected)
            return
        ctl = self._ctl
        cap = ctl.cap
        ctl.observe(
            cached=cached,
            expected=expected,
            siblings=d.siblings,
            epoch=d.epoch,
            active=d.active,
            batch=d.batch,
        )
        if ctl.cap < cap:
            self._reclaim()

    def _reclaim(self) -> None:
        """The cap was cut: followers released but not yet sent go back to their groups, so
        that a fan-out released before the server showed its shape does not go out anyway."""
        cap = self._ctl.cap
        keep: list[Dispatch] = []
        back: list[Dispatch] = []
        for d in reversed(self._ready):
            g = None if d.role != "follower" or d.group is None else self._groups.get(d.group)
            if g is not None and g.root.family > cap:
                g.root.family -= 1
                g.in_flight -= 1
                g.held.appendleft((d.job, d.admitted))
                back.append(d)
            else:
                keep.append(d)
        if back:
            keep.reverse()
            self._ready = deque(keep)
            for d in back:
                self._ctl.unsend(d.batch)

    @property
    def held(self) -> int:
        return sum(len(self._groups[k].held) for k in self._active)

    def answered(self, d: Dispatch, ok: bool) -> None:
        """A primer's response has begun (or completed). Release its group, or promote another."""
        g = None if d.group is None else self._groups.get(d.group)
        if g is None or g.primer is not d.job:
            return
        g.primer = None
        if ok:
            g.state = "warm"
            g.warm_at = self._clock()
            if self._ctl.isolated and not self._probe_settle:
                # The probe's primer: a cold prefill and the shortest reply of its group.
                took = g.warm_at - g.sent_at
                if took > 0:  # (a clock that did not move measured nothing: no settle)
                    self._probe_settle = max(SETTLE_FACTOR * took, SETTLE_MIN_S)
            self._release(g, after_primer=True)
        else:
            # The primer failed (its retries continue as a plain request): promote a follower.
            g.state = "cold"
            if g.held:
                self._prime(g)

    def finished(self, d: Dispatch) -> None:
        """A dispatched job is done; close its group when it has drained."""
        key = d.group
        if key is None or d.role == "none":
            return
        g = self._groups.get(key)
        if g is None:
            return
        g.in_flight -= 1
        root = g.root
        root.family -= 1
        if d.batch:
            self._ctl.finished(d.batch)
        if g.state == "warm":
            g.warm_at = self._clock()  # a hit refreshes the provider's TTL
        if root.held and len(self._active) > self._ctl.groups and root.key in self._active:
            # The learned limit shrank below the groups open: this one stops sending and, once
            # idle, waits (still warm) until a place opens again.
            if root.family <= 0:
                # Idle: its per-key sub-groups fold back into it (their keys are primed anew
                # when it reopens), so nothing is left held where no answer will wake it.
                for sub in root.subs:
                    root.held.extend(sub.held)
                    self._groups.pop(sub.key, None)
                root.subs.clear()
                self._active.discard(root.key)
                self._waiting[root.key] = None
                default = self._default_tokens or 1
                root.work = sum(j.max_tokens or default for j, _ in root.held)
                root.state = "cold"  # its prefix may be gone when it reopens: prime it again
            return
        # The per-group cap freed a place: the group, or one of its per-key sub-groups, goes on.
        for member in (root, *root.subs):
            if member.held and root.family < self._ctl.cap and member.primer is None:
                self._serve(member)
        if g.in_flight <= 0 and not g.held and g.primer is None:
            g.in_flight = 0
            if g is not root and g in root.subs:
                root.subs.remove(g)
            self._close(g)
            # The last sub-group of a drained group closes the group too (it holds a place).
            if g is not root and not root.subs and root.in_flight <= 0 and not root.held:
                if root.primer is None and self._groups.get(root.key) is root:
                    self._close(root)

    def _close(self, g: _Group) -> None:
        self._active.discard(g.key)
        # A group that reappears later starts cold: the provider may have evicted the prefix
        # in the meantime, and one primer costs far less than a stampede of misses.
        del self._groups[g.key]

    # -- internals -------------------------------------------------------------------------

    def _expired(self, g: _Group) -> bool:
        return self._clock() - g.warm_at > self._ttl

    def _open_groups(self, free_slots: int) -> None:
        """Open waiting groups just in time, never more than the provider's cache can hold.

        A group is primed only when the work already known (ready jobs, plus followers held
        behind primers in flight) falls below ``lookahead`` (the pipeline's concurrency): a
        prefix primed long before its followers are sent may be evicted in the meantime. The cap
        of ``max_active_groups`` is exceeded only when slots would otherwise sit idle and no
        primer is pending.
        """
        ready = self._ready
        ctl = self._ctl
        ctl.groups_starved = False
        while self._waiting:
            priming = [self._groups[k] for k in self._active if self._groups[k].primer]
            cap = ctl.cap  # a primed group releases at most this many at once
            if len(ready) + sum(min(len(g.held), cap) for g in priming) >= self._lookahead:
                return
            if len(self._active) >= ctl.groups:
                # Beyond the limit only when slots would sit idle: no primer pending, and the
                # open groups have nothing more they may send.
                if priming or free_slots <= len(ready):
                    return
                if any(self._groups[k].held for k in self._active):
                    return
                if not ctl.may_exceed:
                    ctl.groups_starved = True
                    return
            key = self._pick_waiting()
            self._active.add(key)
            self._serve(self._groups[key])

    def _pick_waiting(self) -> str:
        # The group with the most reply tokens held first: it amortises its primer over the
        # most work (with one reply budget for every job: the most-populated group), and its
        # long replies, which decide when the run ends, start early.
        groups = self._groups
        best = max(self._waiting, key=lambda k: groups[k].work)
        del self._waiting[best]
        groups[best].work = 0
        return best

    def _serve(self, g: _Group) -> None:
        """Release a warm group's held jobs, or prime it (a no-op while its primer is out)."""
        if g.state == "warm" and not self._expired(g):
            self._release(g)
        else:
            self._prime(g)

    def _prime(self, g: _Group) -> bool:
        root = g.root
        if g.primer is not None or not g.held or (g is not root and root.family >= self._ctl.cap):
            return False
        job, admitted = self._shortest(g.held, self._default_tokens)
        g.primer = job
        if self._ctl.isolated:
            g.sent_at = self._clock()
        g.state = "priming"
        g.in_flight += 1
        key = g.fixed_key if g.fixed_key is not None else self._base_key(g)
        self._ready.append(
            Dispatch(job, "primer", key, g.key, root.family, self._ctl.epoch, 0, 0, admitted)
        )
        root.family += 1
        return True

    def _release(self, g: _Group, after_primer: bool = False) -> None:
        held = g.held
        ready = self._ready
        ctl = self._ctl
        epoch, active = ctl.epoch, len(self._active)
        # Followers a primer's answer releases together: the controller compares their answers.
        # (While the shape is unknown every release may be the probe.)
        batch = ctl.new_batch() if after_primer or ctl.probing else 0
        root = g.root
        cap = ctl.release_cap(batch, root.family)
        probe = batch != 0 and batch == ctl.probe
        if after_primer and not probe and len(held) > 1:
            # Longest replies first: the run ends when its last long reply does.
            self._longest_first(held)
        n_sent = 0
        keyed = g.fixed_key is None and self._use_keys
        key = g.fixed_key
        while held and root.family < cap:
            # The probe's followers are the shortest replies: its verdict comes sooner.
            job, admitted = self._shortest(held, self._default_tokens) if probe else held.popleft()
            if keyed:
                n = self._next_key_index(g)
                if n:
                    if not self._to_subgroup(g, n, job, admitted):
                        break  # the sub-group waits for a place under the cap
                    continue
                key = self._base_key(g)
            ready.append(
                Dispatch(job, "follower", key, g.key, root.family, epoch, active, batch, admitted)
            )
            g.in_flight += 1
            root.family += 1
            n_sent += 1
        if batch:
            ctl.open_batch(batch, n_sent)
            if probe and n_sent > 1 and self._probe_settle > 0:
                ctl.settle_by(self._clock() + self._probe_settle)

    def _to_subgroup(self, g: _Group, n: int, job: Job, admitted: float) -> bool:
        """Past ``key_rpm`` a group moves to suffixed keys, which the provider may route to
        another machine with a cold cache: each key is primed like a group of its own.
        False when the cap keeps it back (nothing sent, no primer out to wait behind)."""
        sk = f"{g.key}#{n}"
        sub = self._groups.get(sk)
        root = g.root
        if sub is None:
            sub = self._groups[sk] = _Group(sk, fixed_key=f"{self._base_key(g)}-{n}", root=root)
            root.subs.append(sub)
        sub.held.append((job, admitted))
        before = root.family
        self._serve(sub)
        return root.family > before or sub.primer is not None

    def _learn_keys(self, warm: bool) -> None:
        """A new key's primer, sent while nothing else of its group was in flight, came back.

        Warm means the server does not route by key (a self-hosted server, one cache for all
        keys): spreading a group over keys then only costs extra primers, so it stops.
        """
        if warm:
            self._key_hits += 1
        else:
            self._key_misses += 1
        if self._key_hits >= 2 and self._key_hits >= 2 * self._key_misses:
            self._key_rpm = math.inf

    @staticmethod
    def _shortest(held: deque[tuple[Job, float]], default: int | None) -> tuple[Job, float]:
        """Take the primer: of the next few held jobs, the one asking for the fewest tokens
        (``default`` for a job that sets none; unknown counts as the longest).

        Followers wait until the primer has answered, so a primer with a long reply would hold
        the whole group back for its decode time.
        """
        best_i, best = 0, held[0][0].max_tokens or default
        for i in range(1, min(len(held), PRIMER_CANDIDATES)):
            m = held[i][0].max_tokens or default
            if m is not None and (best is None or m < best):
                best_i, best = i, m
        pair = held[best_i]
        del held[best_i]
        return pair

    def _longest_first(self, held: deque[tuple[Job, float]]) -> None:
        """Order a group's held jobs by reply budget, longest first (stable; unknown first)."""
        default = self._default_tokens
        first = held[0][0].max_tokens or default
        if all((p[0].max_tokens or default) == first for p in held):
            return  # nothing to reorder (the common case: one budget for every job)
        pairs = sorted(held, key=lambda p: -(p[0].max_tokens or default or 1 << 62))
        held.clear()
        held.extend(pairs)

    def _base_key(self, g: _Group) -> str | None:
        if not self._use_keys:
            return None
        return "rk-" + g.key.rsplit(":", 1)[-1][:16]

    def _next_key_index(self, g: _Group) -> int:
        """Which key of the group this dispatch uses: a new one every ``key_rpm`` a minute."""
        assert self._key_rpm is not None
        now = self._clock()
        if now - g.key_window >= 60.0:
            g.key_window = now
            g.key_count = 1  # the window's first key also carried the primer
        n = int(g.key_count // self._key_rpm) % MAX_KEYS_PER_GROUP
        g.key_count += 1
        return n
