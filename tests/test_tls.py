"""TLS still verifies after runner imports aiohttp with its CA load deferred (runner/_aiohttp.py).

Each check runs in a fresh interpreter, so that ``runner._aiohttp`` is the first to import aiohttp
(pytest has imported it long before). Certificates come from the ``openssl`` command: a test CA,
a server certificate it signs for 127.0.0.1, and a self-signed one nobody trusts. The CA is
trusted through ``SSL_CERT_FILE``, which OpenSSL reads when the default verify paths load.
"""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import runner

PY = sys.executable
# Under CI a missing openssl command fails these tests instead of skipping them.
pytestmark = pytest.mark.skipif(
    shutil.which("openssl") is None and not os.environ.get("CI"), reason="needs the openssl CLI"
)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tls")
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    key = ["-newkey", "rsa:2048", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=runner test CA", cwd=d)  # fmt: skip
    _openssl("req", *key, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=d)  # fmt: skip
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.cnf",
             cwd=d)  # fmt: skip
    _openssl("req", "-x509", *key, "-keyout", "self.key", "-out", "self.pem", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", cwd=d)  # fmt: skip
    return d


_REPLY = (
    b'{"id":"c1","object":"chat.completion","model":"m","choices":[{"index":0,'
    b'"message":{"role":"assistant","content":"4"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}'
)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._reply(b'{"data": []}')

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._reply(_REPLY)


@contextmanager
def https_server(cert: Path, key: Path) -> Iterator[str]:
    """A threaded HTTPS server on 127.0.0.1 and a free port; yields its base URL."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"https://127.0.0.1:{srv.server_address[1]}/v1"
    finally:
        srv.shutdown()
        srv.server_close()


# Run in a fresh interpreter: import aiohttp through runner, then GET each URL with aiohttp's
# default context (ssl=True) and with the run's own session, on the given event loop.
_CLIENT = textwrap.dedent(
    """
    import asyncio, ssl, sys
    import runner._aiohttp as ra
    import aiohttp, aiohttp.connector as conn
    from runner.config import RunConfig
    from runner.providers._http import make_session

    print("verified:", type(conn._SSL_CONTEXT_VERIFIED).__name__)
    print("unverified:", type(conn._SSL_CONTEXT_UNVERIFIED).__name__)
    print("shadow left:", "set_default_verify_paths" in vars(ssl.SSLContext))

    async def get(session, url):
        try:
            async with session.get(url + "/models") as r:
                return f"status {r.status}"
        except aiohttp.ClientConnectorCertificateError:
            return "certificate rejected"

    async def main():
        for url in sys.argv[2:]:
            async with aiohttp.ClientSession() as s:
                print("default", await get(s, url))
            s = make_session(RunConfig(), headers={})
            try:
                print("run session", await get(s, url))
            finally:
                await s.close()
        print("verified after use:", type(conn._SSL_CONTEXT_VERIFIED).__name__)

    if sys.argv[1] == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())
    """
)


def _client(loop: str, *urls: str, ca: Path | None) -> list[str]:
    env = dict(os.environ)
    env.pop("SSL_CERT_DIR", None)
    if ca is not None:
        env["SSL_CERT_FILE"] = str(ca)
    r = subprocess.run(
        [PY, "-c", _CLIENT, loop, *urls], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.splitlines()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_trusted_ca_verifies_and_untrusted_certificate_is_rejected(certs: Path, loop: str) -> None:
    with (
        https_server(certs / "server.pem", certs / "server.key") as good,
        https_server(certs / "self.pem", certs / "self.key") as bad,
    ):
        out = _client(loop, good, bad, ca=certs / "ca.pem")
    assert out == [
        # aiohttp built its contexts at import; their CA store was not read then
        "verified: DeferredCAContext",
        "unverified: DeferredCAContext",
        "shadow left: False",
        "default status 200",
        "run session status 200",
        "default certificate rejected",
        "run session certificate rejected",
        # loaded at the first handshake, then an ordinary context again
        "verified after use: SSLContext",
    ]


def test_without_the_test_ca_the_server_is_not_trusted(certs: Path) -> None:
    # The deferred load reads the system store, not nothing-at-all-trusted and not everything
    with https_server(certs / "server.pem", certs / "server.key") as good:
        out = _client("uvloop", good, ca=None)
    assert "default certificate rejected" in out
    assert "run session certificate rejected" in out


def test_an_application_that_imported_aiohttp_first_keeps_its_contexts() -> None:
    code = (
        "import aiohttp.connector as c, runner._aiohttp, ssl; "
        "print(type(c._SSL_CONTEXT_VERIFIED) is ssl.SSLContext, "
        "c._SSL_CONTEXT_VERIFIED.cert_store_stats() == ssl.create_default_context()"
        ".cert_store_stats())"
    )
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["True", "True"], r.stderr[-2000:]


def test_runner_run_over_https(certs: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "q-0", "query": "what is 2 plus 2?"}\n')
    env = dict(os.environ, SSL_CERT_FILE=str(certs / "ca.pem"))
    env.pop("SSL_CERT_DIR", None)
    args = ["run", str(jobs), "--provider", "openai", "--model", "m", "--no-resume",
            "--progress", "off", "-o", str(tmp_path / "r.jsonl")]  # fmt: skip
    with https_server(certs / "server.pem", certs / "server.key") as url:
        ok = runner(*args, "--base-url", url, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert '"content":"4"' in (tmp_path / "r.jsonl").read_text().replace(" ", "")
    with https_server(certs / "self.pem", certs / "self.key") as url:
        bad = runner(*args, "--base-url", url, "--timeout", "5", env=env)
    assert bad.returncode != 0
    assert "certificate" in bad.stderr.lower(), bad.stderr[-2000:]


def test_an_untrusted_certificate_is_a_config_error_not_a_transient_one(
    certs: Path, tmp_path: Path
) -> None:
    # Found by QA: a self-signed server made the pre-flight retry for 2 s and exit 75 ("run
    # again later"), so a scheduler retrying 75 would retry a misconfiguration forever. A
    # certificate the machine does not trust will not become trusted by waiting: exit 2,
    # naming the certificate and SSL_CERT_FILE; nothing is written.
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "q-0", "query": "what is 2 plus 2?"}\n')
    env = dict(os.environ)
    env.pop("SSL_CERT_DIR", None)
    env.pop("SSL_CERT_FILE", None)
    out = tmp_path / "out"
    args = ["run", str(jobs), "--provider", "openai", "--model", "m", "--progress", "off",
            "-o", f"{out}/"]  # fmt: skip
    with https_server(certs / "self.pem", certs / "self.key") as url:
        r = runner(*args, "--base-url", url, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "certificate" in r.stderr and "SSL_CERT_FILE" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
