"""Value semantics for the dataclass records, written once instead of generated per class.

Python 3.11's ``@dataclass`` compiles every method it generates from source text, at every
start-up (about 0.5-1 M instructions each; runner defines some twenty records on the way to a
run's first request). ``__init__`` must stay generated (it is the fast constructor of the hot
path), but ``__eq__``, ``__hash__`` and ``__repr__`` need not: a record passes ``eq=False,
repr=False`` and inherits them from :class:`Record` (frozen) or :class:`MutableRecord`, which
behave exactly as the generated ones (same tuple comparison, hash and text):

* ``a == b``: the fields with ``compare=True``, as tuples, when both are of the same class;
  otherwise ``NotImplemented``;
* ``hash(a)``: the hash of the tuple of the hashed fields (``hash=None`` follows ``compare``);
  a :class:`MutableRecord` is unhashable, as a mutable dataclass with ``eq=True`` is;
* ``repr(a)``: ``Name(field=value!r, ...)`` over the fields with ``repr=True``, ``...`` for a
  record that contains itself.

``tests/test_records.py`` checks each record against a twin that ``@dataclass`` generates.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable
from dataclasses import fields
from operator import attrgetter
from typing import Any

__all__ = ["MutableRecord", "Record"]

_Key = Callable[[Any], tuple[Any, ...]]


class _Shape:
    """What one record class compares, hashes and shows, worked out on first use."""

    __slots__ = ("compare", "hashed", "shown")

    def __init__(self, cls: type) -> None:
        fs = fields(cls)
        self.compare = _getter([f.name for f in fs if f.compare])
        self.hashed = _getter([f.name for f in fs if (f.compare if f.hash is None else f.hash)])
        self.shown = tuple(f.name for f in fs if f.repr)


def _getter(names: list[str]) -> _Key:
    if len(names) > 1:
        return attrgetter(*names)  # already a tuple
    if names:
        one = attrgetter(names[0])
        return lambda obj: (one(obj),)
    return lambda obj: ()


_SHAPES: dict[type, _Shape] = {}


def _shape(cls: type) -> _Shape:
    shape = _SHAPES.get(cls)
    if shape is None:
        shape = _SHAPES[cls] = _Shape(cls)
    return shape


class Record:
    """Base of a frozen ``@dataclass(eq=False, repr=False)`` record: equality, hash, repr."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        key = _shape(self.__class__).compare
        return key(self) == key(other)

    def __hash__(self) -> int:
        return hash(_shape(self.__class__).hashed(self))

    @reprlib.recursive_repr()
    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={getattr(self, n)!r}" for n in _shape(self.__class__).shown)
        return f"{self.__class__.__qualname__}({shown})"


class MutableRecord(Record):
    """Base of a mutable record: like :class:`Record`, but unhashable."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]
