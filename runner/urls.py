"""URLs as they may be shown: never with the credentials of ``user:password@host``."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["public_url"]


def public_url(url: object) -> str:
    """``url`` (a ``str`` or ``yarl.URL``) without its user and password, for messages and
    logs; unchanged when it carries none."""
    text = str(url)
    if "@" not in text:
        return text
    parts = urlsplit(text)
    if "@" not in parts.netloc:
        return text
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
