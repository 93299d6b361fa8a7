"""Which stop signals a run handles: those not ignored when it started.

``nohup runner run ...`` starts runner with SIGHUP ignored so that it outlives the session
that started it; a shell's background job (``runner run ... &`` in a script) has SIGINT
ignored. A handler of runner's own undid that: the ssh session closing stopped a nohup'd run
with exit 129. Python itself leaves an ignored SIGINT alone; so does runner, for each of its
stop signals (the drain on SIGINT, SIGTERM and SIGHUP: runner/api.py, the batch engine, the
``--workers`` parent that forwards them).
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

__all__ = ["not_ignored"]


def not_ignored(signals: Iterable[signal.Signals]) -> list[signal.Signals]:
    """``signals`` less those whose disposition is ``SIG_IGN`` now (inherited: nohup)."""
    return [s for s in signals if signal.getsignal(s) is not signal.SIG_IGN]
