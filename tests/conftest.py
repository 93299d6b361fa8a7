"""Suite-wide set-up.

A stop signal that is ignored when a run starts stays ignored (runner/stopsignals.py: `nohup`
and a non-interactive shell's `&` ignore SIGHUP and SIGINT, and the run must not undo that).
The suite inherits the same dispositions from however it was started, and passes them on to
every run it starts, in this process or as a child. The tests that deliver a stop signal test a
run that did not inherit an ignored one, so the suite restores the defaults first: otherwise
`nohup make test &` would fail them all. The inherited case has its own tests.
"""

from __future__ import annotations

import signal

for _sig in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
    if _sig is not None and signal.getsignal(_sig) is signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig is signal.SIGINT else signal.SIG_DFL)
