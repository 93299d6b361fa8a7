"""Tests for the cache-pressure controller: synthetic usage, a fake clock, no server."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest

from runner.cache import Dispatch, Scheduler
from runner.cachectl import RELAX_HITS, SETTLE_MIN_S, CacheControl
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


def warm_scheduler(clock: Callable[[], float]) -> Scheduler:
    """The adaptive warm scheduler these tests drive: 8 groups, 64 per group, on ``clock``."""
    return Scheduler(
        strategy="warm",
        ttl_s=300.0,
        max_active_groups=8,
        min_cacheable_tokens=256,
        max_per_group=64,
        clock=clock,
    )


def fill(s: Scheduler, groups: int, per_group: int) -> Scheduler:
    """Add ``per_group`` jobs to each of ``groups`` groups; return ``s``."""
    for g in range(groups):
        for i in range(per_group):
            s.add(job(i, g))
    return s


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
    """Two probes in a row, each two followers sent while nothing else was out, all hit."""
    for _ in range(2):
        b = c.new_batch()
        assert c.release_cap(b) == 3
        c.open_batch(b, 2)
        for _ in range(2):
            c.observe(**HIT, siblings=1, epoch=c.epoch, active=1, batch=b)


def per_slot(c: CacheControl) -> None:
    """The probe split: one follower found the prefix, its sibling did not."""
    b = c.new_batch()
    assert c.release_cap(b) == 3
    c.open_batch(b, 2)
    c.observe(**MISS, siblings=1, epoch=c.epoch, active=1, batch=b)
    c.observe(**HIT, siblings=2, epoch=c.epoch, active=1, batch=b)


def test_one_group_alone_probes_the_shape_before_anything_else_is_sent() -> None:
    c = ctl()
    # One group, one request at a time, no opening beyond the limit: nothing else on the
    # server may evict the probe's prefix or take its slot.
    assert (c.cap, c.groups, c.may_exceed, c.probing) == (1, 1, False, True)
    b1, b2 = c.new_batch(), c.new_batch()
    assert c.release_cap(b1) == 3  # the probe: its primer plus two followers
    assert c.release_cap(b2) == 1  # nothing else probes while it is out
    c.open_batch(b1, 2)
    c.observe(**HIT, siblings=1, epoch=0, active=1, batch=b1)
    assert c.probing  # one answer is not a verdict
    c.observe(**HIT, siblings=2, epoch=0, active=1, batch=b1)
    # Both hit: once is not enough (a follower may finish before its sibling takes a slot).
    assert (c.probing, c.cap, c.groups) == (True, 1, 1)
    b3 = c.new_batch()
    assert c.release_cap(b3) == 3
    c.open_batch(b3, 2)
    for _ in range(2):
        c.observe(**HIT, siblings=1, epoch=0, active=1, batch=b3)
    # Two probes all hit: a shared cache. The fixed scheduler's behaviour (full fan-out, more groups
    # whenever slots would sit idle), from 4 groups: a few prefixes fit any cache.
    assert (c.probing, c.shape, c.cap, c.groups, c.may_exceed) == (False, "shared", 64, 4, True)
    assert (c.cap_shrinks, c.groups_shrinks) == (0, 0)


def test_a_split_probe_shows_a_per_slot_cache_and_a_cap_of_one() -> None:
    c = ctl()
    per_slot(c)  # the miss answered first: the verdict waits for the whole batch
    assert (c.shape, c.cap, c.cap_shrinks, c.groups, c.probing) == ("per-slot", 1, 1, 8, False)


def test_a_second_probe_that_splits_still_shows_a_per_slot_cache() -> None:
    c = ctl()
    b = c.new_batch()
    c.release_cap(b)
    c.open_batch(b, 2)
    for _ in range(2):
        c.observe(**HIT, siblings=1, epoch=0, active=1, batch=b)
    per_slot(c)
    assert (c.shape, c.cap, c.groups) == ("per-slot", 1, 8)


def test_a_probe_that_all_missed_alone_means_no_server_cache() -> None:
    c = ctl()
    b = c.new_batch()
    c.release_cap(b)
    c.open_batch(b, 2)
    c.observe(**MISS, siblings=1, epoch=0, active=1, batch=b)
    c.observe(**MISS, siblings=2, epoch=0, active=1, batch=b)
    assert (c.shape, c.no_cache, c.adapt, c.groups, c.cap) == ("none", True, False, 16, 64)


def test_releases_too_small_to_probe_leave_the_shape_unknown_after_a_few_tries() -> None:
    c = ctl()
    for i in range(4):
        assert c.probing and c.cap == 1
        b = c.new_batch()
        assert c.release_cap(b) == 3
        c.open_batch(b, i % 2)  # no follower, or one: nothing to compare
    # Unknown: the fixed scheduler's fan-out, never stuck one group at a time.
    assert (c.probing, c.shape, c.cap, c.groups) == (False, "unknown", 64, 8)


def test_a_probe_follower_without_usage_ends_the_probe() -> None:
    c = ctl()
    b = c.new_batch()
    c.release_cap(b)
    c.open_batch(b, 2)
    c.observe(**HIT, siblings=1, epoch=0, active=1, batch=b)
    c.finished(b)  # it reported
    assert c.probing
    c.finished(b)  # the second is done without a report (no cached_tokens, or it failed)
    assert (c.probing, c.shape, c.cap, c.groups) == (False, "unknown", 64, 8)


def test_on_a_shared_cache_a_warm_followers_miss_is_an_eviction_once_per_round() -> None:
    c = ctl()
    shared(c)
    # A miss beside siblings is not a split here: the cap stays, the groups shrink.
    assert not c.observe(**MISS, siblings=5, epoch=c.epoch, active=8)
    assert (c.groups, c.groups_shrinks, c.cap, c.cap_shrinks) == (6, 1, 64, 0)
    assert not c.may_exceed  # no more opening beyond the limit
    # Sent before the cut: old news, no second cut.
    c.observe(**MISS, siblings=0, epoch=0, active=8)
    assert c.groups == 6
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=6)
    assert (c.groups, c.groups_shrinks) == (4, 2)


def test_groups_never_grow_back_to_a_count_that_evicted_until_hits_run_long() -> None:
    c = ctl()
    shared(c)
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=2)  # two groups overflowed it
    assert c.groups == 1
    c.groups_starved = True
    for _ in range(RELAX_HITS - 1):
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=1)
    assert c.groups == 1  # starved, yet two evicted: hysteresis, no sawtooth
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=1)  # a miss restarts the count
    for _ in range(RELAX_HITS - 1):
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=1)
    assert c.groups == 1
    n = 0
    while c.groups == 1 and n < 1000:
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=1)
        n += 1
    # After RELAX_HITS hits in a row the ceiling gives one back, and the groups grow into it
    # additively (a round: groups x cap answers).
    assert (c.groups, n <= 100) == (2, True)
    for _ in range(1000):
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=2)
    assert c.groups <= 2 + 1000 // RELAX_HITS


def test_hits_grow_only_the_groups_and_only_when_they_hold_the_run_back() -> None:
    c = ctl()
    per_slot(c)
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=8)  # an eviction: groups 6
    assert c.groups == 6
    for _ in range(100):
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=6)
    assert (c.cap, c.groups) == (1, 6)  # nothing starved: no probing into misses
    c.cap_starved = c.groups_starved = True
    for _ in range(100):  # below RELAX_HITS in a row: 7 is the most (8 evicted)
        c.observe(**HIT, siblings=0, epoch=c.epoch, active=6)
    # The cap never grows on a per-slot cache: a second request recomputes in another slot.
    assert (c.groups, c.cap) == (7, 1)


def test_on_a_per_slot_cache_a_miss_beside_a_sibling_is_a_split_and_a_lone_one_an_eviction() -> (
    None
):
    c = ctl()
    per_slot(c)
    c._cap = 4.0  # (as if the user's ceiling were the cap)
    c.observe(**MISS, siblings=3, epoch=c.epoch, active=8)
    assert (c.cap, c.cap_shrinks, c.groups) == (2, 2, 8)
    c.observe(**MISS, siblings=0, epoch=c.epoch, active=8)
    assert (c.cap, c.groups, c.groups_shrinks) == (2, 6, 1)
    b = batch(c, 3)  # a batch that all missed: an eviction, not a split
    for i in range(3):
        c.observe(**MISS, siblings=i, epoch=c.epoch, active=6, batch=b)
    assert (c.cap, c.groups) == (2, 4)


def test_limits_stay_within_floor_and_ceiling() -> None:
    c = ctl(max_groups=3, max_per_group=3)
    shared(c)
    c.groups_starved = True
    for _ in range(1000):
        c.observe(**HIT, siblings=1, epoch=0, active=3)
    assert (c.groups, c.cap) == (3, 3)
    for _ in range(100):
        c.observe(**MISS, siblings=0, epoch=c.epoch, active=1)
        c.observe(**MISS, siblings=1, epoch=c.epoch, active=1)
    assert (c.groups, c.cap) == (1, 3)
    low = ctl(max_groups=16, max_per_group=2)  # too low a ceiling to probe: no waiting alone
    assert (low.probing, low.cap, low.groups) == (False, 2, 8)


def test_a_cut_takes_back_followers_released_but_not_yet_sent() -> None:
    s = warm_scheduler(lambda: 0.0)
    shared(s.control)  # a shared cache so far: full fan-out
    s.control.shape = "per-slot"  # then a split showed slots after all
    for i in range(10):
        s.add(job(i, 0))
    primer = s.next(8)
    assert primer is not None and primer.role == "primer"
    s.answered(primer, True)
    s.finished(primer)
    a, b = s.next(8), s.next(8)
    assert a is not None and b is not None and a.batch == b.batch != 0
    s.observe(a, TOKENS, 1000)
    s.observe(b, TOKENS, 0)  # the batch split
    assert s.control.cap == 1
    # The seven released with them go back behind the cap instead of out to cold slots.
    assert s.next(8) is None
    assert s.pending("g0:h0") == 9
    s.finished(a)
    s.finished(b)
    c = s.next(8)
    assert c is not None and c.role == "follower" and s.next(8) is None


def test_the_scheduler_serves_one_group_alone_until_the_probe_reports() -> None:
    s = fill(warm_scheduler(lambda: 0.0), 4, 7)
    primer = s.next(32)
    assert primer is not None and primer.role == "primer"
    assert s.next(32) is None  # 31 free slots, yet no other group opens
    s.answered(primer, True)
    s.finished(primer)
    for _ in range(2):  # two probes, one after the other, nothing else in flight
        a, b = s.next(32), s.next(32)
        assert a is not None and b is not None and a.role == b.role == "follower"
        assert a.batch == b.batch and s.next(32) is None
        s.observe(a, TOKENS, 1000)
        s.finished(a)
        assert s.next(32) is None  # its sibling is still out
        s.observe(b, TOKENS, 1000)
        s.finished(b)
    # A shared cache: the probe's group fans out and the other groups open.
    sent = []
    while (d := s.next(32)) is not None:
        sent.append(d)
    assert sum(d.role == "follower" for d in sent) == 2  # the rest of its seven
    assert sum(d.role == "primer" for d in sent) == 3


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
            return 0, self.calls <= 9  # the first nine hit (the probe), then nothing again

    s, ratio, _ = simulate(Forgetful(1), groups=6, questions=10, concurrency=8)
    assert s.control.groups == 1
    assert ratio < 0.16  # only the first nine calls ever hit


def test_the_summary_table_says_where_the_controller_ended() -> None:
    from runner.report import render_summary
    from runner.stats import SummaryBuilder

    c = ctl()
    shared(c)
    c.observe(cached=0, expected=1000, siblings=0, epoch=0, active=8)
    summary = SummaryBuilder(None).summary(wall_s=1.0)
    summary["cache_control"] = c.summary()
    text = render_summary(summary)
    assert "6 groups x 64 in flight each (learned, shared cache), shrinks 1 groups / 0 cap" in text
    assert "hits 80.0%" in text  # (the follower hit ratio, wrapped at 100 columns)


def test_probe_followers_answering_without_usage_let_the_other_groups_open() -> None:
    """A server that reports no cached tokens never gives the probe a verdict: the scheduler
    must not keep serving one group alone."""
    s = fill(warm_scheduler(lambda: 0.0), 3, 5)
    primer = s.next(32)
    assert primer is not None
    s.answered(primer, True)
    s.finished(primer)
    a, b = s.next(32), s.next(32)
    assert a is not None and b is not None and s.next(32) is None
    for d in (a, b):
        s.observe(d, TOKENS, None)  # no cached_tokens in the usage
        s.finished(d)
    assert s.control.shape == "unknown"
    roles = []
    while (nxt := s.next(32)) is not None:
        roles.append(nxt.role)
    assert roles.count("primer") == 2 and roles.count("follower") == 2


# -- a probe that waits for a long reply must not idle the pipeline ----------------------------


def test_a_slow_probe_ends_the_isolation_at_its_settle_time_and_its_verdict_applies() -> None:
    """The server reads a request's cached prefix when it starts it: once both probe followers
    have had time to start, the other groups may go, and the readings still count."""
    c = ctl()
    b = c.new_batch()
    assert c.release_cap(b) == 3
    c.open_batch(b, 2)
    c.settle_by(10.0)
    assert not c.settled(9.99) and (c.groups, c.cap, c.may_exceed) == (1, 1, False)
    assert c.settled(10.0)
    # The groups open (more on idle slots), each one request at a time: a per-slot cache is
    # not ruled out, and a fan-out there would split prefixes over slots.
    assert (c.groups, c.cap, c.may_exceed, c.probing) == (8, 1, True, True)
    assert not c.settled(11.0)  # once
    # Its followers, sent while nothing else was out, split: a per-slot cache after all.
    c.observe(**MISS, siblings=1, epoch=c.epoch, active=1, batch=b)
    c.observe(**HIT, siblings=2, epoch=c.epoch, active=1, batch=b)
    assert (c.shape, c.cap, c.probing) == ("per-slot", 1, False)


def test_a_probe_that_all_hit_after_the_isolation_ended_is_not_taken_for_shared() -> None:
    """The per-slot misread guard: one probe that all hit may be a per-slot cache's race (a
    follower given the primer's slot after its sibling finished), so a shared cache needs two
    probes read alone. With other traffic out a second one cannot be read: unknown, not shared."""
    c = ctl()
    b = c.new_batch()
    assert c.release_cap(b) == 3
    c.open_batch(b, 2)
    c.settle_by(1.0)
    assert c.settled(2.0)
    for _ in range(2):
        c.observe(**HIT, siblings=1, epoch=c.epoch, active=1, batch=b)
    assert (c.shape, c.probing, c.shared_probes) == ("unknown", False, 1)
    # Answered within the settle time, the same probe asks for a second one, read alone.
    c = ctl()
    b = c.new_batch()
    c.release_cap(b)
    c.open_batch(b, 2)
    c.settle_by(1.0)
    for _ in range(2):
        c.observe(**HIT, siblings=1, epoch=c.epoch, active=1, batch=b)
    assert (c.shape, c.probing, c.groups, c.settle_at) == ("unknown", True, 1, None)
    b = c.new_batch()
    assert c.release_cap(b) == 3
    c.open_batch(b, 2)
    for _ in range(2):
        c.observe(**HIT, siblings=1, epoch=c.epoch, active=1, batch=b)
    assert c.shape == "shared"


def test_the_scheduler_lets_the_other_groups_go_when_a_probe_follower_is_slow() -> None:
    """Fake clock: the probe's primer answers in 0.5 s; its followers are released at once;
    0.5 s later, with neither answered, the pipeline stops waiting for them."""
    t = [0.0]
    s = fill(warm_scheduler(lambda: t[0]), 3, 6)
    primer = s.next(32)
    assert primer is not None and primer.role == "primer" and s.wake_in() is None
    t[0] = 0.5
    s.answered(primer, True)
    s.finished(primer)
    a, b = s.next(32), s.next(32)
    assert a is not None and b is not None and a.batch == b.batch and s.next(32) is None
    assert s.wake_in() == pytest.approx(0.5)  # the pipeline pumps again then
    t[0] = 0.99
    assert s.next(32) is None and s.wake_in() == pytest.approx(0.01)
    t[0] = 1.0
    sent = []
    while (d := s.next(32)) is not None:
        sent.append(d)
    # The two other groups send their primers; the probe's group, two out, waits (cap 1).
    assert sorted((d.job.group, d.role) for d in sent) == [("g1:h1", "primer"), ("g2:h2", "primer")]
    assert s.wake_in() is None and s.control.probing
    # The slow followers land: a split. The cap drops to one for what is still to come.
    s.observe(a, TOKENS, 0)
    s.observe(b, TOKENS, 1000)
    assert (s.control.shape, s.control.cap) == ("per-slot", 1)


def test_a_fast_primer_still_gives_its_followers_the_minimum_settle_time() -> None:
    """A primer answered in 10 ms (a fast server) would give its followers 10 ms, less than the
    client's own jitter: they get SETTLE_MIN_S from their release instead."""
    t = [0.0]
    s = fill(warm_scheduler(lambda: t[0]), 3, 6)
    primer = s.next(32)
    assert primer is not None
    t[0] = 0.01
    s.answered(primer, True)
    s.finished(primer)
    assert s.next(32) is not None and s.next(32) is not None
    assert s.wake_in() == pytest.approx(SETTLE_MIN_S)
    t[0] = 0.01 + SETTLE_MIN_S / 2
    assert s.next(32) is None  # still isolated: 10 ms would have opened the other groups


def test_without_a_known_primer_latency_the_probe_waits_for_its_verdict() -> None:
    """A clock that does not move (no latency measured): no settle time, the old wait."""
    s = fill(warm_scheduler(lambda: 0.0), 2, 5)
    primer = s.next(32)
    assert primer is not None
    s.answered(primer, True)
    s.finished(primer)
    assert s.next(32) is not None and s.next(32) is not None
    assert s.wake_in() is None and s.next(32) is None


def test_the_probe_followers_are_the_shortest_replies() -> None:
    """The probe's verdict waits for both followers: it takes the two shortest reply budgets."""
    s = warm_scheduler(lambda: 0.0)
    for i, m in enumerate([1024, 512, 8, 256, 4, 16]):
        j = job(i, 0)
        s.add(Job(**{**{f: getattr(j, f) for f in j.__slots__}, "params": {"max_tokens": m}}))
    primer = s.next(32)
    assert primer is not None and primer.job.custom_id == "g0-4"
    s.answered(primer, True)
    a, b = s.next(32), s.next(32)
    assert a is not None and b is not None and s.next(32) is None
    assert {a.job.custom_id, b.job.custom_id} == {"g0-2", "g0-5"}
