"""Start llama.cpp's ``llama-server`` (built by ``make realserver``) for benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import stop

HOME = Path(
    os.environ.get("RUNNER_REALSERVER")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "runner-realserver"
)
BINARY = HOME / "bin" / "llama-server"
MODEL = HOME / "tiny.gguf"


def built() -> bool:
    return BINARY.is_file() and os.access(BINARY, os.X_OK) and MODEL.is_file()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(slots: int = 8, log: Path | None = None) -> Iterator[str]:
    """A fresh server on a free loopback port (one thread); yields the base URL; stops by pid."""
    port = free_port()
    cmd = [
        str(BINARY), "-m", str(MODEL), "--alias", "tiny", "--host", "127.0.0.1",
        "--port", str(port), "-c", str(4096 * slots), "-np", str(slots), "--kv-unified",
        "-t", "1", "-tb", "1", "-b", "512", "-ub", "512", "--cache-reuse", "256",
        "--cache-ram", "1024", "--metrics", "--slots", "--no-webui",
    ]  # fmt: skip
    out = open(log, "wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"llama-server exited with {proc.returncode}")
            try:
                with urllib.request.urlopen(url + "/v1/models", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("llama-server not ready after 60 s")
            time.sleep(0.1)
        yield url + "/v1"
    finally:
        stop(proc)
        if log:
            out.close()  # type: ignore[union-attr]
