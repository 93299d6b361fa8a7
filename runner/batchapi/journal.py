"""The batch journal: every chunk, upload, batch id and state, in the output's meta file.

The journal is the ``batch`` section of ``R.meta.json`` (see :mod:`runner.sinks`), rewritten
durably (fsync'd temporary file, then rename) at every transition, *before* the action it
announces when the action may be repeated safely, *after* it when it may not:

* ``planned`` -> ``uploading`` (journaled first; a crash re-uploads, a file is not a batch)
  -> ``uploaded`` (file id) -> ``creating`` (journaled first, with the time) -> ``submitted``
  (batch id) -> ``done`` (its results written, its retriable rows planned as a new chunk in the
  same rewrite).
* A chunk found in ``creating`` may have been created by a process that died before it could
  journal the id (or whose create answer was lost): the next pass looks the batch up (OpenAI:
  by the metadata it carries; Anthropic: an unknown batch of the same size, the one created
  nearest the create's local time first) and submits only when none exists. One chunk at a
  time is ever in ``creating``, so the lookup is unambiguous for OpenAI. An Anthropic batch
  carries no metadata, so another batch of the same size can match: it is adopted only
  tentatively (``verify``) and, once ended, used only if its rows' custom ids are exactly the
  ones the chunk sent (each ``<chunk key>-<position>``, the key holding the run's random tag);
  otherwise it goes to ``foreign`` (never cancelled, never read again) and the lookup is
  repeated. Time only bounds how far back the lookup lists (``wire.LOOKUP_BACK_S``).
* ``lost``: the batch answered 404 and the user chose ``--resubmit-lost-batches``; its unwritten
  jobs went into a new chunk in the same rewrite.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from ..errors import ResumeError
from ..sinks import read_meta_section, write_meta_section

__all__ = ["ACTIVE_STATES", "JOURNAL_VERSION", "Chunk", "Journal", "refuse_direct_while_in_flight"]

JOURNAL_VERSION: Final = 1
SECTION: Final = "batch"
ACTIVE_STATES: Final = frozenset({"planned", "uploading", "uploaded", "creating", "submitted"})


@dataclass(slots=True)
class Chunk:
    """A set of jobs sent as one provider batch (one attempt of each of them)."""

    key: str
    kind: str  # "jobs" | "primer"
    model: str
    attempt: int
    ids: list[str]  # custom ids, in the order sent
    sent: list[str] | None = None  # ids as sent, where they differ (Anthropic's id pattern)
    after: list[str] = field(default_factory=list)  # chunks that must be done first
    state: str = "planned"
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's last reported status
    counts: dict[str, int] = field(default_factory=dict)
    creating_at: float | None = None
    submitted_at: float | None = None
    ended_at: float | None = None
    note: str | None = None
    # Adopted after a crash by time and size alone (Anthropic: no metadata): its rows' ids
    # must equal ``sent_ids()`` before any is used; batches found not to be ours.
    verify: bool = False
    foreign: list[str] = field(default_factory=list)

    def sent_ids(self) -> list[str]:
        return self.sent if self.sent is not None else self.ids


class Journal:
    """The batch section of one results file's meta file; the caller holds the outputs lock."""

    __slots__ = ("chunks", "provider", "results", "run_id", "seq")

    def __init__(self, results: Path, *, provider: str, run_id: str) -> None:
        self.results = results
        self.provider = provider
        self.run_id = run_id
        self.seq = 0
        self.chunks: list[Chunk] = []

    @classmethod
    def load(cls, results: Path, *, provider: str, run_id: str) -> Journal:
        """The journal of ``results``, or a new one for this run."""
        raw = read_meta_section(results, SECTION)
        if raw is None:
            return cls(results, provider=provider, run_id=run_id)
        if not isinstance(raw, dict) or raw.get("version") != JOURNAL_VERSION:
            raise ResumeError(f"{results}: the batch journal in its meta file is not readable")
        if raw.get("provider") != provider:
            raise ResumeError(
                f"cannot resume {results}: its batches were sent through the "
                f"{raw.get('provider')} batch API, not {provider}; run with --no-resume to "
                "start afresh (batches still running would be abandoned)"
            )
        j = cls(results, provider=provider, run_id=str(raw["run_id"]))
        j.seq = int(raw.get("seq", 0))
        j.chunks = [Chunk(**c) for c in raw.get("chunks", [])]
        return j

    def save(self) -> None:
        doc: dict[str, Any] = {
            "version": JOURNAL_VERSION,
            "provider": self.provider,
            "run_id": self.run_id,
            "seq": self.seq,
            "updated_at": time.time(),
            "chunks": [asdict(c) for c in self.chunks],
        }
        write_meta_section(self.results, SECTION, doc)

    def new_key(self) -> str:
        self.seq += 1
        return f"{self.run_id}-{self.seq:04d}"

    def active(self) -> list[Chunk]:
        return [c for c in self.chunks if c.state in ACTIVE_STATES]

    def by_key(self, key: str) -> Chunk | None:
        return next((c for c in self.chunks if c.key == key), None)

    def ready(self, chunk: Chunk) -> bool:
        """Whether every chunk this one waits for (a cache primer) is done (or lost)."""
        for key in chunk.after:
            dep = self.by_key(key)
            if dep is not None and dep.state in ACTIVE_STATES:
                return False
        return True


def refuse_direct_while_in_flight(results: Path) -> None:
    """A direct run onto outputs whose batches may still run would send their jobs twice.

    :raises ResumeError: the journal of ``results`` has chunks not yet done.
    """
    raw = read_meta_section(results, SECTION)
    if not isinstance(raw, dict):
        return
    active = [c for c in raw.get("chunks", []) if c.get("state") in ACTIVE_STATES]
    if active:
        raise ResumeError(
            f"{results} has {len(active)} provider batches not yet collected; finish them with "
            "--via batch (or run with --no-resume to start afresh)"
        )
