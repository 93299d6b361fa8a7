"""A server still loading its model at the pre-flight check: wait for it, saying so.

llama.cpp's ``llama-server`` (and other self-hosted servers) listen at once and answer every
request with ``503 Loading model`` until the weights are in memory, which for a large model
takes minutes. A run started beside such a server sent every job into those 503s: each was
retried to the end of its budget and failed (``http_5xx``), exit 1, and ``--retry-failed`` was
needed to send them again. The pre-flight probe now treats a 503 from ``GET /models`` whose
body says ``loading`` as "not ready yet" (another 503, a provider overloaded or a proxy without
a healthy backend, still lets the run go on and retry its jobs): the run says once on stderr
that it waits, probes again every few seconds, and
starts when the server answers; a server still answering 503 after :data:`LOADING_WAIT_S` is
the transient stop (exit 75, nothing sent, nothing written), as an unreachable one is.
"""

from __future__ import annotations

from typing import Final

from yarl import URL

from .config import RunConfig

LOADING_CODE: Final = "server_loading"  # the probe's ErrorInfo.code for a 503
LOADING_WAIT_S: Final = 300.0  # README, "Exit codes" (75)
LOADING_POLL_S: Final = (0.5, 1.0, 2.0, 5.0)  # then every 5 s


def poll_delay(tries: int) -> float:
    return LOADING_POLL_S[min(tries, len(LOADING_POLL_S) - 1)]


def _say(config: RunConfig, said: str) -> None:
    from .logs import note

    note(said, log_format=config.log_format, quiet=config.quiet)


def say_unlisted(config: RunConfig, listed: tuple[str, ...] | None) -> None:
    """The configured model is not among those the server's ``/models`` listed: llama-server
    answers with its one model whatever the name, so the run went on while its summary
    recorded a model that never answered. Said once, before the first request.

    Only for a server that lists one model: a hosted provider that lists many answers models
    it does not list (Anthropic's aliases and pages of 20, Azure's deployment names,
    OpenRouter's ``:nitro``/``:free`` variants, a LiteLLM wildcard), and one that does not
    know the name refuses it (404, whose error names the listed models), so there a warning
    would be noise on every run. Ollama's ``llama3`` is its listed ``llama3:latest``."""
    model = config.model
    if not listed or len(listed) != 1 or model in listed or f"{model}:latest" in listed:
        return
    _say(
        config,
        f"the server lists the models {listed[0]}; {config.model!r} (--model, for jobs without "
        "a model of their own) is not among them: a server with one model (llama-server) "
        "answers with it whatever the name, others refuse it",
    )


def say_waiting(config: RunConfig, url: str, message: str, wait_s: float) -> None:
    """One line on stderr (a warning event under ``--log-format json``; nothing under -q)."""
    said = (
        f"{url} is not ready ({message}; a server still loading its model says so): waiting "
        f"for it up to {wait_s:.0f} s before sending anything (Ctrl-C stops)"
    )
    _say(config, said)


def local_hint(base_url: str) -> str:
    """For an unreachable server on this machine, the likelier cause than an outage: it is
    not started (yet), or the port is not its port (vLLM listens only once its model is
    loaded). Empty for a remote server."""
    try:
        url = URL(base_url)
    except ValueError:
        return ""
    host = (url.host or "").strip("[]")
    if host != "localhost" and host != "::1" and not host.startswith("127."):
        return ""
    return (
        f"; nothing answers at {host}:{url.port} on this machine: is the server started, and "
        "is that its port? (a server that listens only once its model is loaded, as vLLM, "
        "needs the time to load it)"
    )
