"""Tests for the warm-then-fan-out scheduler (pure logic, a fake clock)."""

from __future__ import annotations

from helpers import ManualClock as Clock

from runner.cache import Dispatch, Scheduler
from runner.models import Job

PREFIX_CHARS = 8000  # about 2,000 tokens: above the minimum cacheable length


def job(i: int, group: str | None = "g1:abc", prefix_chars: int = PREFIX_CHARS) -> Job:
    return Job(
        custom_id=f"j{i}",
        line=i,
        messages=({"role": "user", "content": "q"},),
        prefix_len=1 if group else 0,
        group=group,
        cache_id=group.split(":")[0] if group else None,
        model=None,
        params={},
        prompt_chars=prefix_chars + 10,
        prefix_chars=prefix_chars if group else 0,
    )


def sched(strategy: str = "warm", clock: Clock | None = None, **kw: object) -> Scheduler:
    args: dict[str, object] = {
        "strategy": strategy,
        "ttl_s": 300.0,
        "max_active_groups": 2,
        "min_cacheable_tokens": 1024,
        "clock": clock or Clock(),
        # The fan-out policy with fixed limits; the learned limits are tested in test_cachectl.py.
        "adapt": False,
    }
    args.update(kw)
    return Scheduler(**args)  # type: ignore[arg-type]


def drain(s: Scheduler, slots: int = 1000) -> list[Dispatch]:
    """Take every dispatchable job, each using up one of ``slots`` free pipeline slots."""
    out: list[Dispatch] = []
    while len(out) < slots and (d := s.next(slots - len(out))) is not None:
        out.append(d)
    return out


def test_followers_wait_for_the_primer() -> None:
    s = sched()
    for i in range(5):
        s.add(job(i))
    first = drain(s)
    assert [(d.job.custom_id, d.role) for d in first] == [("j0", "primer")]
    s.answered(first[0], ok=True)
    rest = drain(s)
    assert [d.role for d in rest] == ["follower"] * 4
    assert [d.job.custom_id for d in rest] == ["j1", "j2", "j3", "j4"]


def test_jobs_arriving_after_warm_go_straight_out() -> None:
    s = sched()
    s.add(job(0))
    (p,) = drain(s)
    s.answered(p, ok=True)
    s.add(job(1))
    assert [(d.job.custom_id, d.role) for d in drain(s)] == [("j1", "follower")]


def test_failed_primer_promotes_a_follower() -> None:
    s = sched()
    for i in range(3):
        s.add(job(i))
    (p,) = drain(s)
    s.answered(p, ok=False)
    (p2,) = drain(s)
    assert (p2.job.custom_id, p2.role) == ("j1", "primer")
    # A late success of the first primer must not release the group twice.
    s.answered(p, ok=True)
    assert drain(s) == []
    s.answered(p2, ok=True)
    assert [d.job.custom_id for d in drain(s)] == ["j2"]


def test_lapsed_ttl_reprimes() -> None:
    clock = Clock()
    s = sched(clock=clock)
    s.add(job(0))
    s.add(job(1))
    (p,) = drain(s)
    s.answered(p, ok=True)
    assert len(drain(s)) == 1
    clock.t += 301.0
    s.add(job(2))
    s.add(job(3))
    out = drain(s)
    assert [(d.job.custom_id, d.role) for d in out] == [("j2", "primer")]


def test_edited_context_is_another_group() -> None:
    s = sched()
    s.add(job(0, group="legal:aaaa"))
    s.add(job(1, group="legal:bbbb"))
    roles = [(d.job.custom_id, d.role) for d in drain(s)]
    assert roles == [("j0", "primer"), ("j1", "primer")]


def test_active_groups_are_bounded_and_opened_most_populated_first() -> None:
    s = sched(max_active_groups=2)
    counts = {"a": 1, "b": 3, "c": 5, "d": 2}
    i = 0
    for g, n in counts.items():
        for _ in range(n):
            s.add(job(i, group=f"{g}:h"))
            i += 1
    primers = drain(s)
    assert sorted(d.job.group or "" for d in primers) == ["b:h", "c:h"]
    assert primers[0].job.group == "c:h"  # the biggest group first
    assert all(d.role == "primer" for d in primers)


def test_group_drains_before_the_next_opens() -> None:
    s = sched(max_active_groups=1)
    for i in range(2):
        s.add(job(i, group="a:h"))
    for i in range(2, 4):
        s.add(job(i, group="b:h"))
    (p,) = drain(s, slots=1)
    s.answered(p, ok=True)
    (f,) = drain(s, slots=1)
    assert f.job.group == p.job.group
    s.finished(p)
    assert drain(s, slots=0) == []  # the other group still waits: a follower is in flight
    s.finished(f)
    nxt = drain(s, slots=1)
    assert [(d.job.group, d.role) for d in nxt] == [("b:h", "primer")]


def test_short_prefix_and_none_strategy_skip_priming() -> None:
    s = sched()
    s.add(job(0, prefix_chars=100))
    s.add(job(1, prefix_chars=100))
    assert [d.role for d in drain(s)] == ["none", "none"]
    n = sched(strategy="none")
    for i in range(3):
        n.add(job(i))
    assert [d.role for d in drain(n)] == ["none"] * 3


def test_idle_pipeline_opens_groups_beyond_the_cap() -> None:
    s = sched(max_active_groups=1)
    s.add(job(0, group="a:h"))
    s.add(job(1, group="b:h"))
    (p,) = drain(s, slots=4)
    s.answered(p, ok=True)  # group a is warm with nothing held, slots are free
    (p2,) = drain(s, slots=3)
    assert (p2.job.group, p2.role) == ("b:h", "primer")


def test_cache_keys_spread_above_the_per_key_rate_and_each_key_is_primed() -> None:
    s = sched(key_rpm=2.0)
    for i in range(5):
        s.add(job(i))
    (p,) = drain(s)
    assert p.cache_key == "rk-abc"
    s.answered(p, ok=True)
    out = drain(s)
    # Two dispatches a minute per key: the primer and j1 use the base key; j2 and j4 open new
    # keys, which may route to a cold machine, so each is primed; j3 waits behind j2.
    assert [(d.job.custom_id, d.role, d.cache_key) for d in out] == [
        ("j1", "follower", "rk-abc"),
        ("j2", "primer", "rk-abc-1"),
        ("j4", "primer", "rk-abc-2"),
    ]
    s.answered(out[1], ok=True)
    assert [(d.job.custom_id, d.role, d.cache_key) for d in drain(s)] == [
        ("j3", "follower", "rk-abc-1")
    ]
    for d in [p, *out]:
        s.finished(d)
    assert s.held == 0


def test_groups_are_primed_just_in_time() -> None:
    """A group is not primed while a full round of known work is already queued."""
    s = sched(max_active_groups=8, lookahead=3)
    for i in range(5):
        s.add(job(i, group="a:h"))
    for i in range(5, 8):
        s.add(job(i, group="b:h"))
    (p,) = drain(s, slots=10)  # a's four held followers already cover the lookahead
    assert p.job.group == "a:h"
    s.answered(p, ok=True)
    first = [d.job.group for d in drain(s, slots=2)]
    assert first == ["a:h", "a:h"]
    # Two of a's followers are still queued, below the lookahead of 3: now b is primed.
    rest = drain(s, slots=10)
    assert [(d.job.group, d.role) for d in rest] == [
        ("a:h", "follower"),
        ("a:h", "follower"),
        ("b:h", "primer"),
    ]


def with_budget(j: Job, m: int | None) -> Job:
    return Job(**{**{f: getattr(j, f) for f in j.__slots__}, "params": {"max_tokens": m}})


def test_primer_is_the_job_with_the_shortest_reply_and_its_followers_go_longest_first() -> None:
    """The run ends when its last long reply does: a long follower queued behind a whole group
    of short ones (made demo: 1,024-token replies among 48-token ones) pushed the wall out."""
    s = sched()
    lengths = [512, 64, 1024, 16, 256]
    for i, m in enumerate(lengths):
        s.add(with_budget(job(i), m))
    (p,) = drain(s)
    assert (p.job.custom_id, p.role) == ("j3", "primer")
    s.answered(p, ok=True)
    assert [d.job.custom_id for d in drain(s)] == ["j2", "j0", "j4", "j1"]


def test_a_job_without_a_reply_budget_counts_with_the_runs_default() -> None:
    """A job that sets no max_tokens gets the config's (or the provider's) default: with a
    default of 48 it is the shortest reply, not an unknown one that loses to any explicit 128."""
    s = sched(default_max_tokens=48)
    for i, m in enumerate([128, None, 1024, None]):
        s.add(with_budget(job(i), m))
    (p,) = drain(s)
    assert (p.job.custom_id, p.role) == ("j1", "primer")
    s.answered(p, ok=True)
    assert [d.job.custom_id for d in drain(s)] == ["j2", "j0", "j3"]
    # Without a known default, a job without a budget may be long: never the primer.
    s = sched()
    for i, m in enumerate([128, None, 1024, None]):
        s.add(with_budget(job(i), m))
    (p,) = drain(s)
    assert p.job.custom_id == "j0"


def test_admission_time_travels_with_the_job_to_its_dispatch() -> None:
    """The pipeline's admission time comes back on the Dispatch, whichever way the job goes
    out: on its own, as a primer, as a follower, or through a per-key sub-group."""
    s = sched()
    s.add(job(0, group=None), 1.0)  # no prefix to warm: ready at once
    for i in range(1, 5):
        s.add(job(i), 10.0 + i)
    first = drain(s)
    assert {d.job.custom_id: (d.role, d.admitted) for d in first} == {
        "j0": ("none", 1.0),
        "j1": ("primer", 11.0),
    }
    s.answered(first[1], ok=True)
    assert [(d.job.custom_id, d.admitted) for d in drain(s)] == [
        ("j2", 12.0),
        ("j3", 13.0),
        ("j4", 14.0),
    ]
    keyed = sched(key_rpm=1)
    for i in range(4):
        keyed.add(job(i), 20.0 + i)
    out, keys = drain(keyed), set()
    while out:
        for d in out:
            keys.add(d.cache_key)
            assert d.admitted == 20.0 + int(d.job.custom_id[1:])
            keyed.answered(d, ok=True)
            keyed.finished(d)
        out = drain(keyed)
    assert len(keys) > 1  # the per-key sub-groups were used


def test_the_group_with_the_most_reply_tokens_held_opens_first() -> None:
    """Equal counts, unequal work: the group holding the long replies opens first (its long
    replies decide when the run ends); with one budget for every job, the most-populated."""
    for long_budget, first in ((1024, "long:b"), (16, "short:a")):
        s = sched(max_active_groups=1, default_max_tokens=48)
        for i in range(3):
            s.add(with_budget(job(i, group="short:a"), None))  # 3 x 48 tokens
        s.add(with_budget(job(3, group="long:b"), long_budget))
        s.add(with_budget(job(4, group="long:b"), None))
        p = s.next(1)
        assert p is not None and p.job.group == first, long_budget
