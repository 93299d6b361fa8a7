"""Set-up shared by the tests that drive the sinks directly (no engine)."""

from __future__ import annotations

import os
from pathlib import Path

from runner.sinks import Outputs


def ten_jobs(tmp: Path) -> Path:
    """``jobs.jsonl`` in ``tmp`` with ids j1..j10."""
    path = tmp / "jobs.jsonl"
    path.write_text("".join(f'{{"id": "j{i}", "query": "q"}}\n' for i in range(1, 11)))
    return path


def crash(out: Outputs) -> None:
    """What kill -9 does to an open run: the descriptors close, nothing else happens."""
    for fd in out._fds:
        os.close(fd)
    for _, fd in out._extra_locks:
        os.close(fd)
    if out._pend_fd >= 0:
        os.close(out._pend_fd)
