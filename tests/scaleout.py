"""Helpers for the scaling-out tests and benchmarks: a real redis-server, several "hosts".

Hosts are Linux network namespaces when this machine allows them (root and ``ip netns``): one
namespace ``srv`` holds a bridge, Redis and the mock; each runner host is a namespace joined to
that bridge by a veth pair, on a private subnet that exists only inside these namespaces.
Otherwise every "host" is this machine's loopback. Everything started here is stopped by pid,
and every namespace created here is deleted.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
SUBNET = "10.213.77"


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def redis_missing_reason() -> str | None:
    """Why the Redis tests cannot run here, or None."""
    if redis_server_path() is None:
        return "redis-server is not installed (apt-get install redis-server; .ci/run does)"
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (pip install -e '.[redis]')"
    return None


def require_redis() -> None:
    """Skip the calling test (saying why) where no Redis can run; under CI, where ``.ci/run``
    installs ``redis-server``, a missing one fails instead, so CI never passes by skipping."""
    why = redis_missing_reason()
    if why is None:
        return
    import pytest

    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Hosts:
    """Command prefixes that run a program on the server host and on each runner host."""

    server_ip: str
    server: list[str]
    clients: list[list[str]]
    namespaces: bool
    names: list[str] = field(default_factory=list)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def netns_available() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    name = f"i13probe{os.getpid()}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return False
    with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        _ip("netns", "del", name)
    return True


@contextmanager
def hosts(n: int, *, use_netns: bool = True) -> Iterator[Hosts]:
    """``n`` runner hosts and one server host (namespaces when possible, else loopback)."""
    if not (use_netns and netns_available()):
        yield Hosts("127.0.0.1", [], [[] for _ in range(n)], namespaces=False)
        return
    tag = f"{os.getpid() % 100000}"
    srv = f"i13s{tag}"
    names = [srv]
    try:
        _ip("netns", "add", srv)
        _ip("-n", srv, "link", "set", "lo", "up")
        _ip("-n", srv, "link", "add", "br0", "type", "bridge")
        _ip("-n", srv, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        _ip("-n", srv, "link", "set", "br0", "up")
        clients: list[list[str]] = []
        for k in range(n):
            h = f"i13h{tag}x{k}"
            _ip("netns", "add", h)
            names.append(h)
            _ip("-n", h, "link", "set", "lo", "up")
            # both ends are created inside the client namespace, then one moves to the server
            _ip("-n", h, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{k}")
            _ip("-n", h, "link", "set", f"p{k}", "netns", srv)
            _ip("-n", srv, "link", "set", f"p{k}", "master", "br0")
            _ip("-n", srv, "link", "set", f"p{k}", "up")
            _ip("-n", h, "addr", "add", f"{SUBNET}.{10 + k}/24", "dev", "eth0")
            _ip("-n", h, "link", "set", "eth0", "up")
            clients.append(["ip", "netns", "exec", h])
        yield Hosts(f"{SUBNET}.1", ["ip", "netns", "exec", srv], clients, True, names)
    finally:
        for name in reversed(names):
            with suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                _ip("netns", "del", name)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    port: int

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_redis(prefix: list[str], host: str, port: int | None = None) -> Server:
    """A throwaway redis-server (no persistence) on ``host``; waits until it answers."""
    exe = redis_server_path()
    assert exe is not None
    if port is None:
        port = free_port() if not prefix else 6379 + os.getpid() % 1000
    cmd = [*prefix, exe, "--port", str(port), "--bind", host, "--save", "", "--appendonly", "no"]
    cmd += ["--protected-mode", "no"]  # only reachable on addresses this test created
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://{host}:{port}/0"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}")
        probe = [*prefix, PY, "-c", _PING, host, str(port)]
        if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0:
            return Server(proc, url, port)
        time.sleep(0.1)
    Server(proc, url, port).stop()
    raise RuntimeError("redis-server did not answer")


@contextmanager
def redis_with_users(*rules: tuple[str, ...]) -> Iterator[int]:
    """A throwaway loopback redis-server whose ACL has these ``ACL SETUSER`` rules (users with
    passwords, commands taken away); yields its port. Skips where no redis-server is."""
    require_redis()
    import redis

    server = start_redis([], "127.0.0.1")
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port)
        for rule in rules:
            admin.execute_command("ACL", "SETUSER", *rule)  # type: ignore[no-untyped-call]
        admin.close()
        yield server.port
    finally:
        server.stop()


_PING = (
    "import socket,sys;s=socket.create_connection((sys.argv[1],int(sys.argv[2])),1);"
    "s.sendall(b'PING\\r\\n');sys.exit(0 if s.recv(7).startswith(b'+PONG') else 1)"
)


def start_mock(prefix: list[str], host: str, *flags: str) -> Server:
    """``runner mock`` on ``host`` at a free port; the URL it prints."""
    proc = subprocess.Popen(
        [*prefix, PY, "-m", "runner.mock", "--host", host, "--port", "0", *flags],
        stdout=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().decode().strip()
    if not url.startswith("http"):
        Server(proc, url, 0).stop()
        raise RuntimeError(f"mock did not start: {url!r}")
    return Server(proc, url, int(url.rsplit(":", 1)[1].split("/")[0]))


def write_jobs(path: Path, prefix: str, n: int) -> None:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(f'{{"id": "{prefix}-{i}", "query": "question {i}"}}\n')
