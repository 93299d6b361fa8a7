"""The CPU priority of a run beside a server on the same machine.

A ``runner run`` whose server is on this machine (a loopback base URL: a local llama-server,
vLLM, SGLang, ``runner mock``) shares the cores with it, and every request it sends waits on
that server. When both want a core, the run finishes sooner if the server gets it: a client that
holds a core while the server waits in the queue only makes its own answers later. Measured on
two cores with ``--workers 2`` and the mock (``benchmarks/bench_scaleout.py workers
--sched-trace``): at equal priority the kernel kept a preempted server waiting on one CPU while
the other sat idle for about a tenth of the run. So such a run lowers its own priority to nice
``LOCAL_NICE`` (a higher nice it was started with stays); ``--workers`` processes inherit it.
Against a remote server nothing changes. ``nice = 0`` (``--nice 0``) keeps the priority the run
was started with; ``nice = N`` (1-19) sets at least N whatever the server.

Only ``runner run`` does this: the Python API never changes the priority of the process that
calls it, and a lower priority is not taken back (an unprivileged process cannot raise its own).
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlsplit

from .config import RunConfig

__all__ = ["LOCAL_NICE", "is_local", "wanted_nice", "yield_to_local_server"]

LOCAL_NICE = 5


def is_local(base_url: str | None) -> bool:
    """Whether ``base_url`` names this machine: ``localhost`` or a loopback address (also the
    unspecified address, which Linux connects to this machine, and IPv4 inside IPv6)."""
    if not base_url:
        return False
    try:
        host = urlsplit(base_url).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_unspecified


def wanted_nice(config: RunConfig) -> int:
    """The nice value ``config`` asks this run's processes to have at least."""
    if config.nice is not None:
        return config.nice
    return LOCAL_NICE if is_local(config.base_url) else 0


def yield_to_local_server(config: RunConfig) -> int | None:
    """Lower this process's priority to :func:`wanted_nice` (never raise it); the nice value it
    now runs at, or ``None`` where the platform has no such thing."""
    if not hasattr(os, "getpriority"):
        return None
    now = os.getpriority(os.PRIO_PROCESS, 0)
    want = wanted_nice(config)
    if want > now:
        os.setpriority(os.PRIO_PROCESS, 0, want)
        now = want
    return now
