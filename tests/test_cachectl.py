"""Tests for the cache-pressure controller: synthetic usage, a fake clock, no server."""

from __future__ import annotations

from collections import OrderedDict

import pytest

from runner.cache import Dispatch, Scheduler
from runner.cachectl import CacheControl
from runner.models import Job

PREFIX = 4000  # characters of shared context: about 1,000 tokens
TOKENS = 1010  # what the server reports as prompt tokens for one job


def job(i: int, group: int) -> Job:
    return Job(
        custom_id=f"g{group}-{i}",
        line=i,
        messages=({"role": "user", "content": "q"},),
        prefix_len=1,
        group=f"g{group}:h{group}",
        cache_id=f"g{group}",
        model=None,
        params={},
        prompt_chars=PREFIX + 40,
        prefix_chars=PREFIX,
    )


def ctl(**kw: object) -> CacheControl:
    args: dict[str, object] = {"max_groups": 16, "max_per_group": 64}
    args.update(kw)
    return CacheControl(**args)  # type: ignore[arg-type]


# -- the two knobs, driven by synthetic answers ------------------------------------------------

HIT = {"cached": 1000, "expected": 1000}
MISS = {"cached": 0, "expected": 1000}


def batch(c: CacheControl, size: int) -> int:
    b = c.new_batch()
    c.open_batch(b, size)
    return b


def shared(c: CacheControl) -> None:
    """Two batches of siblings that all hit: the server has one cache for all."""
    for _ in range(2):
        b = batch(c, 2)
        for _ in range(2):
            c.observe(**HIT, siblings=1, epoch=c.epoch, active=8, batch=b)


def test_one_request_per_group_until_the_shape_is_known_and_one_probe_at_a_time() -> None:
    c = ctl()
    assert (c.cap, c.groups, c.probing) == (1, 8, True)
    b1, b2 = c.new_batch(), c.new_batch()
    assert c.release_cap(b1) == 3  # the probe: its primer plus two followers
    assert c.release_cap(b2) == 1  # another group while the probe is out
    assert c.release_cap(0) == 1  # a release that is not a batch never probes
    c.open_batch(b1, 2)
    c.observe(**HIT, siblings=1, epoch=0, active=8, batch=b1)
    c.observe(**HIT, siblings=2, epoch=0, active=8, batch=b1)
    b3 = c.new_batch()
    assert c.release_cap(b3) == 3  # the probe reported: the next group probes


def test_siblings_that_all_hit_show_a_shared_cache_and_the_cap_goes_to_its_ceiling() -> None:
    c = ctl()
    shared(c)
    assert (c.cap, c.probing, c.cap_shrinks, c.groups_shrinks) == (64, False, 0, 0)
    # On a shared cache, later misses beside siblings are not splits: the cap stays.
    for _ in range(10):
        c.observe(**MISS, siblings=5, epoch=c.epoch, active=8)
    assert (c.cap, c.cap_shrinks) == (64, 0)


def test_a_split_batch_cuts_the_cap_to_the_places_that_held_the_prefix() -> None:
    c = ctl()
    b = batch(c, 2)
    c.observe(**HIT, siblings=1, epoch=0, active=8, batch=b)
    assert not c.observe(**MISS, siblings=2, epoch=0, active=8, batch=b)
    assert (c.cap, c.cap_shrinks, c.groups, c.per_slot, c.probing) == (1, 1, 8, True, False)
    # Once per-slot, a miss sent beside a sibling is a split too (after a probe grew the cap).
    c._cap = 4.0
    c.observe(**MISS, siblings=3, epoch=c.epoch, active=8)
    assert (c.cap, c.cap_shrinks) == (2, 2)


def test_a_batch_that_all_missed_is_an_eviction_not_a_split() -> None:
    c = ctl()
    shared(c)
    b = batch(c, 3)
    c.observe(**MISS, siblings=1, epoch=c.epoch, active=8, batch=b)
    c.observe(**MISS, siblings=2, epoch=c.epoch, active=8, batch=b)
    assert (c.groups, c.cap) == (8, 64)  # not all answered yet
    c.observe(**MISS, siblings=3, epoch=c.epoch, active=8, batch=b)
    assert (c.groups, c.groups_shrinks, c.cap, c.cap_shrinks) == (6, 1, 64, 0)


def test_an_eviction_shrinks_the_active_groups_once_per_round() -> None:
    c = ctl()
    c.observe(**HIT, siblings=0, epoch=0, active=8)  # the server caches
    assert c.groups == 8
    assert not c.observe(**MISS, siblings=0, epoch=0, active=8)
    assert (c.groups, c.groups_shrinks) == (6, 1)
    # Sent before the cut: old news, no second cut.
    c.observe(**MISS, siblings=0, epoch=0, active=8)
    assert c.groups == 6
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=6)
    assert c.groups == 4


def test_hits_grow_only_the_groups_and_only_when_they_hold_the_run_back() -> None:
    c = ctl()
    b = batch(c, 2)
    c.observe(**HIT, siblings=1, epoch=0, active=8, batch=b)
    c.observe(**MISS, siblings=2, epoch=0, active=8, batch=b)  # per-slot: cap 1
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=8)  # an eviction: groups 6
    for _ in range(200):
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=6)
    assert (c.cap, c.groups) == (1, 6)  # nothing starved: no probing into misses
    c.cap_starved = c.groups_starved = True
    n = 0
    while c.groups == 6 and n < 100:  # additive: one more group a round (groups x cap answers)
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=6)
        n += 1
    # The cap never probes upwards on a per-slot cache: a second request recomputes.
    assert (c.groups, c.cap, 6 <= n <= 7) == (7, 1, True)


def test_the_cap_grows_while_the_shape_is_unknown_and_starved() -> None:
    c = ctl()
    c.observe(**HIT, siblings=0, epoch=0, active=8)
    assert c.cap == 1
    c.cap_starved = True
    n = 0
    while c.cap == 1 and n < 100:  # about one more per round: groups x cap answers
        c.observe(**HIT, siblings=0, epoch=0, active=8)
        n += 1
    assert (c.cap, c.probing, 8 <= n <= 12) == (2, True, True)


def test_a_server_without_a_cache_gets_the_ceilings_back() -> None:
    c = ctl()
    for active in (8, 6, 4):  # batches that all missed, no hit ever: evictions at first
        assert (c.groups, c.no_cache) == (active, False)
        b = batch(c, 2)
        c.observe(**MISS, siblings=1, epoch=c.epoch, active=active, batch=b)
        c.observe(**MISS, siblings=2, epoch=c.epoch, active=active, batch=b)
    assert c.groups == 3
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=3)
    assert (c.groups, c.cap, c.no_cache, c.adapt) == (16, 64, True, False)


def test_limits_stay_within_floor_and_ceiling() -> None:
    c = ctl(max_groups=3, max_per_group=2)
    shared(c)
    c.groups_starved = True
    for _ in range(100):
        c.observe(**HIT, siblings=1, epoch=0, active=3)
    assert (c.groups, c.cap) == (3, 2)
    b = batch(c, 2)
    c.observe(**HIT, siblings=1, epoch=c.epoch, active=3, batch=b)
    c.observe(**MISS, siblings=1, epoch=c.epoch, active=3, batch=b)
    for _ in range(100):
        c.observe(**MISS, siblings=0, epoch=c.epoch, active=1)
        c.observe(**MISS, siblings=1, epoch=c.epoch, active=1)
    assert (c.groups, c.cap) == (1, 1)


def test_a_cut_takes_back_followers_released_but_not_yet_sent() -> None:
    s = Scheduler(
        strategy="warm",
        ttl_s=300.0,
        max_active_groups=8,
        min_cacheable_tokens=256,
        max_per_group=64,
        clock=lambda: 0.0,
    )
    shared(s.control)  # a shared cache so far: full fan-out
    for i in range(10):
        s.add(job(i, 0))
    primer = s.next(8)
    assert primer is not None and primer.role == "primer"
    s.answered(primer, True)
    s.finished(primer)
    a, b = s.next(8), s.next(8)
    assert a is not None and b is not None and a.batch == b.batch != 0
    s.observe(a, TOKENS, 1000)
    s.observe(b, TOKENS, 0)  # the batch split: a per-slot cache after all
    assert s.control.cap == 1
    # The seven released with them go back behind the cap instead of out to cold slots.
    assert s.next(8) is None
    assert s.pending("g0:h0") == 9
    s.finished(a)
    s.finished(b)
    c = s.next(8)
    assert c is not None and c.role == "follower" and s.next(8) is None


def test_fixed_limits_do_not_move() -> None:
    c = ctl(adapt=False)
    assert (c.groups, c.cap) == (16, 64)
    c.observe(cached=1000, expected=1000, siblings=0, epoch=0, active=8)
    c.observe(cached=0, expected=1000, siblings=0, epoch=0, active=8)
    assert (c.groups, c.cap) == (16, 64)


# -- the scheduler against simulated servers ---------------------------------------------------


class SlotServer:
    """llama.cpp-like: each slot keeps its last group; a request takes the idle slot holding its
    group, else the least recently used idle one."""

    def __init__(self, n: int) -> None:
        self.slots: list[int | None] = [None] * n
        self.used = [0] * n
        self.busy: set[int] = set()
        self.tick = 0

    def take(self, group: int) -> tuple[int, bool]:
        idle = [i for i in range(len(self.slots)) if i not in self.busy]
        assert idle, "more requests in flight than slots"
        same = [i for i in idle if self.slots[i] == group]
        i = same[0] if same else min(idle, key=lambda k: self.used[k])
        hit = self.slots[i] == group
        self.tick += 1
        self.slots[i], self.used[i] = group, self.tick
        self.busy.add(i)
        return i, hit

    def free(self, slot: int) -> None:
        self.busy.discard(slot)


class LruServer:
    """A global LRU holding ``capacity`` prefixes."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lru: OrderedDict[int, None] = OrderedDict()

    def take(self, group: int) -> tuple[int, bool]:
        hit = group in self.lru
        self.lru[group] = None
        self.lru.move_to_end(group)
        while len(self.lru) > self.capacity:
            self.lru.popitem(last=False)
        return 0, hit

    def free(self, slot: int) -> None:
        pass


def simulate(
    server: SlotServer | LruServer,
    *,
    groups: int,
    questions: int,
    concurrency: int,
    key_rpm: float | None = None,
) -> tuple[Scheduler, float, int]:
    """Drive the scheduler in rounds of the fake clock: every job in flight answers per round.

    Returns the scheduler, the follower hit ratio and the rounds taken.
    """
    t = [0.0]
    s = Scheduler(
        strategy="warm",
        ttl_s=300.0,
        max_active_groups=64,
        min_cacheable_tokens=256,
        max_per_group=concurrency,
        key_rpm=key_rpm,
        clock=lambda: t[0],
    )
    jobs = [job(q, g) for q in range(questions) for g in range(groups)]
    for j in jobs:
        s.add(j)
    flying: list[tuple[Dispatch, int, bool]] = []
    sent: set[str] = set()
    done = rounds = hits = followers = 0
    while done < len(jobs):
        rounds += 1
        assert rounds < 10 * len(jobs), "no progress: a group is starved"
        while len(flying) < concurrency and (d := s.next(concurrency - len(flying))):
            assert d.job.custom_id not in sent, "a job sent twice"
            sent.add(d.job.custom_id)
            slot, hit = server.take(int(d.job.cache_id[1:]))  # type: ignore[index]
            flying.append((d, slot, hit))
        t[0] += 1.0
        answered, flying = flying, []
        for d, slot, hit in answered:
            server.free(slot)
            s.observe(d, TOKENS, 1000 if hit else 0)
            if d.role == "follower":
                followers += 1
                hits += hit
            if d.role == "primer":
                s.answered(d, True)
            s.finished(d)
            done += 1
    return s, hits / followers, rounds


def test_per_slot_server_converges_to_one_request_per_group_and_a_group_per_slot() -> None:
    s, ratio, _ = simulate(SlotServer(8), groups=8, questions=16, concurrency=8)
    assert (s.control.cap, s.control.groups, s.control.per_slot) == (1, 8, True)
    # The probe's second follower recomputed its prefix and, in this simulator where every
    # request of a round arrives at once, pushed others out of their slots once: 8 of 120.
    assert ratio >= 0.93


def test_per_slot_server_with_more_groups_than_slots_keeps_followers_hitting() -> None:
    s, ratio, _ = simulate(SlotServer(4), groups=12, questions=20, concurrency=4)
    assert s.control.groups_shrinks >= 1  # 8 groups opened at first: more than the 4 slots
    assert ratio >= 0.85


@pytest.mark.parametrize("capacity", [3, 6])
def test_lru_server_learns_a_working_set_that_fits_and_grows_the_cap(capacity: int) -> None:
    s, ratio, rounds = simulate(LruServer(capacity), groups=20, questions=40, concurrency=32)
    c = s.control
    assert c.groups <= capacity
    # Fan-out is free on a shared cache: siblings all hit, the cap went to its ceiling and no
    # eviction was ever read as a split.
    assert (c.cap, c.cap_shrinks, c.per_slot) == (32, 0, False)
    assert ratio >= 0.9
    assert rounds <= 3 * (20 * 40) / 32  # within 3x of perfect packing


def test_groups_spread_over_keys_still_finish_when_the_limit_shrinks() -> None:
    """Pausing a group whose per-key sub-groups hold jobs must not strand them (a hang seen
    with 4 replicas and prompt_cache_key spreading)."""
    s, ratio, _ = simulate(LruServer(3), groups=16, questions=50, concurrency=32, key_rpm=2.0)
    assert s.control.groups_shrinks >= 1
    assert ratio >= 0.5


def test_every_group_finishes_when_every_follower_misses() -> None:
    """A server that evicts everything: limits at their floor, yet no group starves."""

    class Forgetful(LruServer):
        def take(self, group: int) -> tuple[int, bool]:
            self.calls = getattr(self, "calls", 0) + 1
            return 0, self.calls <= 9  # 8 primers and one follower hit, then nothing again

    s, ratio, _ = simulate(Forgetful(1), groups=6, questions=10, concurrency=8)
    assert s.control.groups == 1
    assert ratio < 0.1


def test_the_summary_table_says_where_the_controller_ended() -> None:
    from runner.report import render_summary
    from runner.stats import SummaryBuilder

    c = ctl()
    c.observe(cached=1000, expected=1000, siblings=0, epoch=0, active=8)
    c.observe(cached=0, expected=1000, siblings=0, epoch=0, active=8)
    summary = SummaryBuilder(None).summary(wall_s=1.0)
    summary["cache_control"] = c.summary()
    text = render_summary(summary)
    assert "6 groups x 1 in flight each (learned), shrinks 1 groups / 0 cap" in text
    assert "follower hits 50.0%" in text
