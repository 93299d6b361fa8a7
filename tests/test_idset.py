"""Tests for the compact id-hash set."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from runner.idset import IdSet


def test_add_reports_new_and_repeated_values() -> None:
    s = IdSet()
    assert s.add(hash("a")) is True
    assert s.add(hash("a")) is False
    assert hash("a") in s and hash("b") not in s
    assert len(s) == 1


def test_zero_and_extreme_hashes_are_ordinary_values() -> None:
    s = IdSet()
    assert s.add(0) and s.add(-5) and s.add(-(2**63)) and s.add(2**63 - 1)
    assert not s.add(0) and 0 in s and -5 in s and 1 not in s
    assert len(s) == 4


def test_holds_many_values_and_keeps_everything() -> None:
    s = IdSet()
    values = [hash(f"job-{i}") for i in range(50_000)]
    assert all(s.add(v) for v in values)
    assert len(s) == 50_000
    assert all(v in s for v in values)
    assert not any(s.add(v) for v in values[::97])
    assert hash("job-50000") not in s


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=300))
def test_behaves_like_a_set(values: list[int]) -> None:
    s = IdSet()
    seen: set[int] = set()
    for v in values:
        assert s.add(v) == (v not in seen)
        seen.add(v)
    assert len(s) == len(seen)
    assert all(v in s for v in seen)
