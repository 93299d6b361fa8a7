"""The records' equality, hash and repr (runner/_records.py) are the ones @dataclass generates.

Each record is checked against a twin: a class with the same fields and options, decorated by a
plain ``@dataclass`` (which generates ``__eq__``, ``__hash__`` and ``__repr__``). Both get the
same field values; every comparison, hash and text must agree.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner._records import MutableRecord, Record
from runner.accounting import LiveStats
from runner.api import BatchResult
from runner.config import RunConfig
from runner.fingerprint import Fingerprint
from runner.models import (
    Attempt,
    BadLine,
    Context,
    ErrorInfo,
    Job,
    LatencyRecord,
    Price,
    RateInfo,
    Usage,
)
from runner.pipeline import RunOutcome
from runner.providers.capabilities import Capabilities
from runner.results import ResultLine
from runner.retry import RetryPolicy
from runner.stats import Timeline

_JOB = Job.from_dict({"id": "q1", "query": "hi", "params": {"max_tokens": 4}})
_RECORD = LatencyRecord("q1", prompt_tokens=3, itl_ms=[1.0, float("nan")])

# Two different instances of each record (they differ in at least one compared field).
SAMPLES: list[tuple[Any, Any]] = [
    (Context("c", ({"role": "system", "content": "s"},), "d", 1), Context("c", (), "d", 1)),
    (_JOB, Job.from_dict({"id": "q2", "query": "hi"})),
    (BadLine(3, None, "query", "f:3: query: missing"), BadLine(4, "x", None, "m")),
    (Usage(10, None, 2, 5), Usage(10, 0, 2, 5)),
    (ErrorInfo("rate_limited", "slow down", True, 1.5), ErrorInfo("auth", "no", False)),
    (RateInfo(limit_requests=10.0), RateInfo()),
    (Attempt(200, {"a": 1}, usage=Usage(1, 0, 0, 1)), Attempt(None)),
    (_RECORD, LatencyRecord("q2")),
    (Price(1.0, 2.0, cached_input=0.5), Price(1.0, 2.0)),
    (RunConfig(), RunConfig(concurrency=3)),
    (RunOutcome({"jobs": 1}, 0, None), RunOutcome({}, 75, "signal")),
    (BatchResult("q1", {"id": "x"}, _RECORD), BatchResult(None, {}, LatencyRecord(None))),
    (RetryPolicy(max_attempts=3), RetryPolicy(max_attempts=3, base_s=0.001)),
    (Capabilities(prewarm=True), Capabilities()),
    (Fingerprint(3, "abc"), Fingerprint(3, "abd")),
    (LiveStats(), LiveStats(done=2)),
    (ResultLine("r1", "q1", 1, 200, body={"a": 1}), ResultLine("r2", None, 2)),
    (Timeline(), Timeline(max_bins=10)),
]


@functools.cache
def _twin_class(cls: type) -> type:
    """``cls``'s fields and options under a plain ``@dataclass`` that generates eq/hash/repr."""
    params = cls.__dataclass_params__  # type: ignore[attr-defined]
    ns: dict[str, Any] = {"__annotations__": {}, "__qualname__": cls.__qualname__}
    for f in dataclasses.fields(cls):
        ns["__annotations__"][f.name] = f.type
        ns[f.name] = dataclasses.field(compare=f.compare, hash=f.hash, repr=f.repr)
    twin = type(cls.__name__, (), ns)
    return dataclasses.dataclass(frozen=params.frozen, eq=True, repr=True, init=False)(twin)


def _twin(obj: Any) -> Any:
    cls: Any = type(obj)
    twin: Any = object.__new__(_twin_class(cls))
    for f in dataclasses.fields(obj):
        object.__setattr__(twin, f.name, getattr(obj, f.name))
    return twin


def test_every_record_inherits_its_methods_and_generates_none() -> None:
    for a, _ in SAMPLES:
        cls = type(a)
        params = cls.__dataclass_params__
        assert not params.eq and not params.repr, cls  # nothing compiled for these
        assert isinstance(a, MutableRecord if not params.frozen else Record), cls
        assert isinstance(a, MutableRecord) != params.frozen, cls


@pytest.mark.parametrize(("a", "b"), SAMPLES, ids=lambda x: type(x).__name__)
def test_eq_hash_and_repr_are_the_generated_ones(a: Any, b: Any) -> None:
    ta, tb = _twin(a), _twin(b)
    assert repr(a) == repr(ta)
    assert repr(b) == repr(tb)
    copy = dataclasses.replace(a) if all(f.init for f in dataclasses.fields(a)) else a
    for x, y, tx, ty in [(a, a, ta, ta), (a, b, ta, tb), (a, copy, ta, _twin(copy))]:
        assert (x == y) is (tx == ty)
        assert (x != y) is (tx != ty)
    assert a != b
    assert a.__eq__(_twin(a)) is NotImplemented  # another class is never equal
    assert a.__eq__(1) is NotImplemented
    if type(ta).__hash__ is None:
        with pytest.raises(TypeError, match="unhashable type"):
            hash(a)
    else:
        try:
            want: int | type[TypeError] = hash(ta)
        except TypeError:  # a field holds a dict: the generated hash raises too
            want = TypeError
        if want is TypeError:
            with pytest.raises(TypeError):
                hash(a)
        else:
            assert hash(a) == want


def test_a_record_that_contains_itself_shows_dots() -> None:
    a = Attempt(200)
    a.body = a
    twin = _twin(a)
    twin.body = twin
    assert repr(a) == repr(twin)
    assert repr(a).startswith("Attempt(status=200, body=..., raw=None")


def test_orjson_still_serialises_the_records_natively(tmp_path: Path) -> None:
    assert orjson.loads(orjson.dumps(_RECORD))["prompt_tokens"] == 3
    assert orjson.loads(orjson.dumps(Usage(1, None, 0, 2))) == {
        "prompt_tokens": 1,
        "cached_tokens": None,
        "cache_write_tokens": 0,
        "completion_tokens": 2,
    }
