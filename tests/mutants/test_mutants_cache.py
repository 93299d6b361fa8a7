"""Scheduler behaviour that surviving mutants of ``runner/cache.py`` showed untested.

Each test names the behaviour; docs/TESTING.md lists the mutants it was written against.
"""

from __future__ import annotations

import pytest
from helpers import ManualClock as Clock
from test_cache import drain, job, sched
from test_cachectl import warm_scheduler

from runner.cache import Dispatch, Scheduler

PROMPT_TOKENS = 2000  # what the server reports for one job (its prefix is nearly all of it)


def key_primer(n: int, siblings: int = 0, group: str | None = None) -> Dispatch:
    """The primer of the group's ``n``-th spread key, as the scheduler releases it."""
    return Dispatch(job(100 + n), "primer", f"rk-abc-{n}", group or f"g1:abc#{n}", siblings)


def spreads(s: Scheduler) -> bool:
    """Whether five jobs of one group still go out over more than the base cache key."""
    for i in range(5):
        s.add(job(i))
    (p,) = drain(s)
    s.answered(p, ok=True)
    return any(d.cache_key != "rk-abc" for d in drain(s))


@pytest.mark.parametrize(
    ("answers", "spread"),
    [
        ("", True),
        ("h", True),  # one warm key is not yet evidence
        ("hh", False),  # two warm keys: one cache serves every key, spreading only costs
        ("mhh", False),  # hits at least twice the misses
        ("mmhh", True),  # hits below twice the misses: keys do route to other machines
    ],
)
def test_spreading_over_keys_stops_once_new_keys_come_back_warm(answers: str, spread: bool) -> None:
    s = sched(key_rpm=2.0)
    for n, a in enumerate(answers, start=1):
        cached = PROMPT_TOKENS if a == "h" else 0
        s.observe(key_primer(n), PROMPT_TOKENS, cached)
    assert spreads(s) is spread


def test_only_a_new_keys_primer_sent_alone_is_evidence_about_key_routing() -> None:
    # A primer sent while its group had others in flight may have been warmed by them; a
    # primer of the base key (no '#') says nothing about other keys; a follower neither.
    for d in (
        key_primer(1, siblings=1),
        key_primer(1, group="g1:abc"),
        Dispatch(job(101), "follower", "rk-abc-1", "g1:abc#1", 0),
    ):
        s = sched(key_rpm=2.0)
        for _ in range(3):
            s.observe(d, PROMPT_TOKENS, PROMPT_TOKENS)
        assert spreads(s), d


@pytest.mark.parametrize("key_rpm", [None, 1000.0])  # without and with provider cache keys
def test_the_per_group_cap_counts_the_primer_still_in_flight(key_rpm: float | None) -> None:
    s = sched(max_per_group=3, key_rpm=key_rpm)
    for i in range(10):
        s.add(job(i))
    (p,) = drain(s)
    s.answered(p, ok=True)  # the primer's answer has begun: it still holds one of the 3
    first = drain(s)
    assert [d.job.custom_id for d in first] == ["j1", "j2"]
    assert [d.siblings for d in first] == [1, 2]  # the group's requests already in flight
    s.finished(first[0])
    assert [d.job.custom_id for d in drain(s)] == ["j3"]
    s.finished(p)
    assert [d.job.custom_id for d in drain(s)] == ["j4"]
    assert s.pending("g1:abc") == 3 + 5  # j2, j3, j4 in flight; j5..j9 held


def test_the_ttl_is_counted_from_the_last_answer_of_the_group() -> None:
    clock = Clock()
    s = sched(clock=clock)
    s.add(job(0))
    s.add(job(1))
    (p,) = drain(s)
    s.answered(p, ok=True)
    (f,) = drain(s)
    clock.t += 200.0
    s.finished(f)  # a hit refreshes the provider's TTL: 300 s from now
    clock.t += 200.0
    s.add(job(2))
    assert [(d.job.custom_id, d.role) for d in drain(s)] == [("j2", "follower")]
    clock.t += 100.0  # exactly the TTL since the last answer: still warm
    s.add(job(3))
    assert [(d.job.custom_id, d.role) for d in drain(s)] == [("j3", "follower")]


@pytest.mark.parametrize("key_rpm", [None, 1000.0])
def test_followers_released_by_one_answer_carry_what_the_controller_compares(
    key_rpm: float | None,
) -> None:
    s = sched(max_per_group=4, key_rpm=key_rpm)
    for i in range(4):
        s.add(job(i))
    (p,) = drain(s)
    assert p.batch == 0  # a primer is released on its own
    s.answered(p, ok=True)
    out = drain(s)
    assert [d.siblings for d in out] == [1, 2, 3]
    assert {d.epoch for d in out} == {s.control.epoch}
    assert {d.active for d in out} == {1}
    (batch,) = {d.batch for d in out}
    assert batch > 0  # one batch: their answers are compared with each other


def follower() -> Dispatch:
    return Dispatch(job(1), "follower", None, "g1:abc", 1)


@pytest.mark.parametrize(
    ("cached", "hit"),
    [(2000, True), (1100, True), (900, False), (0, False)],  # half the prefix decides
)
def test_a_follower_is_a_hit_when_at_least_half_its_prefix_was_cached(
    cached: int, hit: bool
) -> None:
    s = sched()
    # 2,000 prompt tokens, of which the prefix is 8,000 of 8,010 characters: about 1,998.
    s.observe(follower(), PROMPT_TOKENS, cached)
    assert (s.control.hits, s.control.misses) == ((1, 0) if hit else (0, 1))


def test_answers_that_say_nothing_about_the_cache_are_not_counted() -> None:
    s = sched()
    s.observe(Dispatch(job(1), "none", None), PROMPT_TOKENS, 0)  # not scheduled for caching
    s.observe(follower(), PROMPT_TOKENS, None)  # the server reported no cached count
    s.observe(follower(), 0, 0)  # no usage reported
    assert (s.control.hits, s.control.misses) == (0, 0)


def test_spread_keys_share_the_groups_cap_and_record_what_was_in_flight() -> None:
    s = sched(key_rpm=2.0, max_per_group=3)
    for i in range(6):
        s.add(job(i))
    (p,) = drain(s)
    assert (p.siblings, p.epoch, p.batch) == (0, s.control.epoch, 0)
    s.answered(p, ok=True)
    out = drain(s)
    # p and j1 on the base key, j2 primes key 1: with it the cap of 3 counts the whole family
    # (the group and its per-key sub-groups), so nothing more goes out.
    assert [(d.job.custom_id, d.role, d.cache_key, d.siblings) for d in out] == [
        ("j1", "follower", "rk-abc", 1),
        ("j2", "primer", "rk-abc-1", 2),
    ]
    assert (out[1].epoch, out[1].batch) == (s.control.epoch, 0)
    assert s.pending("g1:abc") == 2 + 3  # p and j1 in flight, j3 to j5 held
    assert s.pending("g1:abc#1") == 1  # its primer


def test_a_reprimed_group_still_counts_the_followers_in_flight() -> None:
    clock = Clock()
    s = sched(clock=clock)
    for i in range(3):
        s.add(job(i))
    (p,) = drain(s)
    s.answered(p, ok=True)
    followers = drain(s)
    s.finished(p)
    assert len(followers) == 2
    clock.t += 301.0  # the TTL lapses while both followers are out
    s.add(job(3))
    (p2,) = drain(s)
    assert p2.role == "primer"
    assert s.pending("g1:abc") == 3
    for d in followers:
        s.finished(d)
    assert s.pending("g1:abc") == 1  # the group stays open for its primer
    s.add(job(4))
    assert drain(s) == []  # held behind the new primer, not primed a second time


def test_a_cut_takes_back_only_the_excess_and_keeps_other_groups_work() -> None:
    from test_cachectl import TOKENS, shared
    from test_cachectl import job as cjob

    s = warm_scheduler(lambda: 0.0)
    shared(s.control)  # a shared cache so far: full fan-out
    s.control.shape = "per-slot"  # then a split shows slots after all (as in test_cachectl)
    for i in range(10):
        s.add(cjob(i, 0))
    (primer,) = drain(s, slots=1)
    s.answered(primer, True)
    s.finished(primer)
    a, b, c = drain(s, slots=3)
    assert a.batch == b.batch == c.batch != 0
    s.add(cjob(0, 1))  # another group's primer waits in the queue behind the followers
    s.observe(a, TOKENS, 1000)
    s.finished(a)
    s.observe(b, TOKENS, 1000)
    s.finished(b)
    s.observe(c, TOKENS, 0)  # two of three hit: a per-slot cache with two places
    assert s.control.cap == 2
    # c is still in flight, so of the six released only one more may go; the other group's
    # primer is not the cut group's business.
    rest = drain(s)
    assert [(d.job.custom_id, d.role) for d in rest] == [("g0-4", "follower"), ("g1-0", "primer")]
    s.finished(c)
    s.finished(rest[0])
    again = drain(s)
    assert [d.job.custom_id for d in again] == ["g0-5", "g0-6"]  # taken back in order


def starved(s: Scheduler) -> bool:
    return s.control.cap_starved


def test_the_cap_is_reported_starved_only_when_it_holds_a_warm_group_back_from_idle_slots() -> None:
    s = sched(max_per_group=2, concurrency=8)
    for i in range(5):
        s.add(job(i))
    (p,) = drain(s, slots=8)
    assert s.next(8) is None
    assert starved(s) is False  # held behind the primer, not behind the cap
    s.answered(p, ok=True)
    (f,) = drain(s, slots=7)  # p and j1 fill the cap of 2
    assert s.next(6) is None
    assert starved(s) is True
    s.control.cap_starved = False
    assert s.next(2) is None  # two idle slots of eight: a passing gap, not the cap's doing
    assert starved(s) is False
    assert s.next(3) is None
    assert starved(s) is True
    s.finished(p)
    s.finished(f)
    assert len(drain(s, slots=8)) == 2
    assert s.next(6) is None
    assert starved(s) is True
