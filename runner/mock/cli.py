"""``runner mock``: run the simulated provider from the command line until SIGINT/SIGTERM.

Every ``MockConfig`` field is a flag of the same name (``cache_block_tokens`` is
``--cache-block-tokens``); the base URL is printed on stdout once the port is bound, so a script
can start ``runner mock --port 0`` and read where it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from dataclasses import MISSING, fields
from typing import Any

import orjson

from ..gcpolicy import tune as tune_gc
from .config import MockConfig
from .server import MockServer

__all__ = ["add_arguments", "main"]

# The young generation's threshold for the mock's own process (runner.gcpolicy): clients at 1,024
# connections made the collector run about 290 times per 20,000 requests with CPython's default,
# 1 s of the mock's CPU, and the mock, not the client under test, set the pace.
GC_GEN0_THRESHOLD = 100_000

_DEST = "mock_"  # namespaced dests so the top-level parser's own options never collide

_HELP = {
    "models": "model ids listed by GET /v1/models (any model is accepted in requests)",
    "seed": "seed for reply text, jitter, early stops and faults",
    "latency": "'model' applies the latency knobs, 'zero' answers at once",
    "base_ms": "fixed part of the time to first token",
    "prefill_ms_per_token": "time to first token added per uncached prompt token",
    "cached_prefill_ms_per_token": "time to first token added per cached prompt token",
    "decode_ms_per_token": "time per output token after the first",
    "jitter": "relative latency jitter, uniform in [1-j, 1+j]",
    "default_max_tokens": "reply length when a request sets no max_tokens",
    "stop_rate": "probability that a reply stops early at a seeded shorter length",
    "cache": "simulate the prefix cache",
    "cache_block_tokens": "cache block size in tokens (16 reproduces vLLM)",
    "cache_min_prefix_tokens": "shortest prompt (prefix) that is cached",
    "cache_capacity_tokens": "LRU capacity of each cache, in tokens",
    "cache_ttl_s": "idle lifetime of an OpenAI cache entry, refreshed on hit",
    "replicas": "OpenAI: simulated machines, each with its own cache",
    "key_rpm": "OpenAI: requests/min per routing key before traffic overflows",
    "slots": "OpenAI: llama.cpp-like server slots, each keeping its last prompt (0: LRU cache)",
    "report_cache_write": "OpenAI: report prompt_tokens_details.cache_write_tokens",
    "gemini_min_cache_tokens": "Gemini: smallest cachedContents the server accepts",
    "gemini_implicit_cache": "Gemini: cache prefixes of plain requests implicitly",
    "gemini_max_ttl_s": "Gemini: cap every cache's TTL so caches expire early",
    "gemini_patch_omit": "Gemini: fields a cache PATCH answer leaves out, comma-separated"
    " (createTime, updateTime, expireTime), as some proxies and emulators do",
    "gemini_create_delay_ms": "Gemini: a cache create happens at once but is answered this late"
    " (a client that gives up on it still has it, billed)",
    "rpm": "requests per minute limit (off when unset)",
    "tpm": "tokens per minute limit (off when unset)",
    "output_tpm": "Anthropic output tokens per minute limit (off when unset)",
    "insufficient_quota_after": "serve this many chat requests, then only quota errors",
    "api_key": "require exactly this key (prefer --require-api-key on shared machines)",
    "require_api_key": "require some non-empty key",
    "slow_first_byte_ms": "extra delay of the slow_first_byte fault",
    "fault_429_retry_ms": "delay, in ms, that a fault_http_429 answer asks the client to wait",
    "batch": "batch endpoints as JSON, e.g. '{\"duration_s\": 1}' (runner/mock/batch.py)",
}


def _json_table(text: str) -> dict[str, Any]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--host``, ``--port`` and one flag per ``MockConfig`` field to ``parser``."""
    parser.add_argument(
        "--host", dest=_DEST + "host", default="127.0.0.1", help="address to bind (loopback)"
    )
    parser.add_argument("--port", dest=_DEST + "port", type=int, default=0, help="0: any free")
    for f in fields(MockConfig):
        flag = "--" + f.name.replace("_", "-")
        ann = str(f.type)
        default = f.default if f.default is not MISSING else None
        fault = f"rate of the {f.name[6:]} fault, per request"
        text = _HELP.get(f.name, fault if f.name.startswith("fault_") else "")
        kw: dict[str, Any] = {"dest": _DEST + f.name, "default": None}
        kw["help"] = f"{text} (default: {default})" if text else f"default: {default}"
        if ann == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif ann.startswith("Mapping"):
            kw["type"] = _json_table
            kw["metavar"] = "JSON"
        elif ann.startswith("tuple"):
            kw["nargs"] = "+"
            kw["metavar"] = "MODEL"
        elif f.name == "latency":
            kw["choices"] = ("model", "zero")
        elif "float" in ann:
            kw["type"] = float
            kw["metavar"] = "X"
        elif "int" in ann:
            kw["type"] = int
            kw["metavar"] = "N"
        else:
            kw["metavar"] = "TEXT"
        parser.add_argument(flag, **kw)


def config_from_namespace(ns: argparse.Namespace) -> MockConfig:
    """The ``MockConfig`` the flags describe; unset flags keep the defaults."""
    given = {
        f.name: getattr(ns, _DEST + f.name)
        for f in fields(MockConfig)
        if getattr(ns, _DEST + f.name, None) is not None
    }
    return MockConfig(**given)


class _CannotListen(Exception):
    """The address could not be bound: a busy port, an unknown host (exit 2, one line)."""


async def _serve_until_signal(config: MockConfig, host: str, port: int) -> None:
    server = MockServer(config)
    try:
        url = await server.start(host, port)
    except OSError as exc:
        raise _CannotListen(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(url, flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(ns: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; 0 on a clean stop, 2 on a bad option."""
    try:
        config = config_from_namespace(ns)
    except (TypeError, ValueError) as exc:
        print(f"runner mock: {exc}", file=sys.stderr)
        return 2
    host = getattr(ns, _DEST + "host", "127.0.0.1")
    port = getattr(ns, _DEST + "port", 0)
    if not 0 <= port <= 65535:  # 99999 bound port 34463 (the value wrapped), -5 a traceback
        print(
            f"runner mock: --port must be 0-65535 (0: any free port), got {port}", file=sys.stderr
        )
        return 2
    tune_gc(GC_GEN0_THRESHOLD)
    try:
        import uvloop
    except ImportError:  # uvloop is not available on Windows
        run = asyncio.run
    else:
        run = uvloop.run
    try:
        run(_serve_until_signal(config, host, port))
    except _CannotListen as exc:  # a busy port was a traceback and exit 1
        print(f"runner mock: {exc}", file=sys.stderr)
        return 2
    return 0
