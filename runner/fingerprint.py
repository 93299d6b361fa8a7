"""Whole-file fingerprints of a run's inputs, so that a resume notices any edit.

The meta file of an output records the size and SHA-256 of the whole jobs file and of the whole
contexts file that wrote it. On resume (and ``--retry-failed``) one streaming pass over each input
decides:

* the jobs file still starts with exactly the bytes the earlier run hashed (jobs were appended,
  or nothing changed): resume, and only jobs without a result are sent;
* anything else (an edited, removed or reordered line, a shorter file, any change at all to the
  contexts file): refuse, naming the file, because a kept answer could belong to the old text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from ._records import Record
from .errors import InputError

__all__ = ["Fingerprint", "PrefixCheck", "fingerprint"]

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Fingerprint(Record):
    """A file's size and SHA-256, as the meta file records them."""

    size: int
    sha256: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256}

    @classmethod
    def from_json(cls, obj: Any) -> Fingerprint | None:
        if not isinstance(obj, dict):
            return None
        size, digest = obj.get("size"), obj.get("sha256")
        if type(size) is not int or size < 0 or not isinstance(digest, str):
            return None
        return cls(size, digest)


class PrefixCheck:
    """The fingerprint of a file now, and whether it starts with an earlier version of itself.

    Never compared or shown: a plain slotted class with Final fields, like
    :class:`runner.cache.Dispatch` (start-up cost).
    """

    __slots__ = ("continues_last_line", "now", "starts_with_old")

    def __init__(
        self, now: Fingerprint, starts_with_old: bool, continues_last_line: bool = False
    ) -> None:
        self.now: Final = now
        self.starts_with_old: Final = starts_with_old  # the first old.size bytes hash to old.sha256
        # The old bytes did not end a line and the new ones carry on that line (`echo ... >>`
        # onto a file without a final newline): the old last line, a job already run, was changed.
        self.continues_last_line: Final = continues_last_line


def fingerprint(path: Path, old: Fingerprint | None = None) -> PrefixCheck:
    """Hash the whole file in one streaming pass, checking the prefix ``old`` covered on the way.

    :raises InputError: the file cannot be read.
    """
    h = hashlib.sha256()
    size = 0
    at_old: str | None = None
    want = old.size if old is not None else -1
    old_end = after = -1  # the old part's last byte and the byte after it
    try:
        with open(path, "rb") as fh:
            while True:
                n = _CHUNK if want < 0 or size >= want else min(_CHUNK, want - size)
                chunk = fh.read(n)
                if not chunk:
                    break
                if size == want:
                    after = chunk[0]
                h.update(chunk)
                size += len(chunk)
                if size == want:
                    at_old = h.copy().hexdigest()
                    old_end = chunk[-1]
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if want == 0:
        at_old = hashlib.sha256().hexdigest()
    now = Fingerprint(size, h.hexdigest())
    joined = old_end not in (-1, 0x0A) and after not in (-1, 0x0A, 0x0D)
    return PrefixCheck(now, old is not None and at_old == old.sha256, joined)
