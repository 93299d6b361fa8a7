"""aiohttp, imported without reading the system's CA store until a TLS connection needs it.

aiohttp (3.10 and later) builds its two default SSL contexts when ``aiohttp.connector`` is
imported, and each one loads the system CA bundle (``SSLContext.set_default_verify_paths``):
about 40 ms of CPU, a quarter of a one-job run's start-up, paid even when the endpoint is plain
``http://`` (README, "Performance"). Runner modules import aiohttp through this
module, which imports it with that one call deferred: while aiohttp loads, a plain
``ssl.SSLContext`` that asks for the default verify paths becomes a :class:`DeferredCAContext`,
which loads them (with the real call, so ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` are honoured as
before) the first time it wraps a connection or is asked for its CA store, then turns back into
a plain ``ssl.SSLContext``. Certificates are checked only during a handshake, which needs a
wrapped connection, so verification is unchanged: ``tests/test_tls.py`` shows a trusted test CA
still verifies and an untrusted certificate is still rejected, and fails if aiohttp stops
building its contexts this way.

Nothing of aiohttp's is patched; ``ssl.SSLContext.set_default_verify_paths`` is shadowed only
for the duration of ``import aiohttp`` and only when aiohttp is not loaded yet (an application
that imported aiohttp first keeps its contexts exactly as they are). A context created by another
thread in that window is deferred the same way, which is equally correct.
"""

from __future__ import annotations

import ssl
import sys
import threading
from typing import Any

__all__ = ["DeferredCAContext", "aiohttp"]

_NAME = "set_default_verify_paths"
_LOCK = threading.Lock()
# The C implementation (ssl.SSLContext inherits it from _ssl._SSLContext).
_set_default_verify_paths = ssl.SSLContext.set_default_verify_paths


class DeferredCAContext(ssl.SSLContext):
    """A client or server context whose default CA paths load before its first use."""

    def _load_ca(self) -> None:
        with _LOCK:
            if type(self) is DeferredCAContext:  # not loaded yet (another thread may have)
                _set_default_verify_paths(self)
                object.__setattr__(self, "__class__", ssl.SSLContext)  # an ordinary one now

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load_ca()
        return ssl.SSLContext.wrap_bio(self, *args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load_ca()
        return ssl.SSLContext.wrap_socket(self, *args, **kwargs)

    def get_ca_certs(self, binary_form: bool = False) -> Any:
        self._load_ca()
        return ssl.SSLContext.get_ca_certs(self, binary_form)

    def cert_store_stats(self) -> dict[str, int]:
        self._load_ca()
        return ssl.SSLContext.cert_store_stats(self)

    def set_default_verify_paths(self) -> None:
        self._load_ca()


def _defer(self: ssl.SSLContext) -> None:
    if type(self) is ssl.SSLContext:
        self.__class__ = DeferredCAContext
    else:  # someone's own subclass: leave it alone
        _set_default_verify_paths(self)


def _import_deferring_ca() -> None:
    shadowed = _NAME in vars(ssl.SSLContext)
    if shadowed:  # someone else shadows it already: do not stack on top of them
        import aiohttp

        return
    setattr(ssl.SSLContext, _NAME, _defer)
    try:
        import aiohttp  # noqa: F401
    finally:
        delattr(ssl.SSLContext, _NAME)


if "aiohttp" not in sys.modules:
    _import_deferring_ca()

import aiohttp as aiohttp  # noqa: E402  (loaded above; this binds the name for importers)
