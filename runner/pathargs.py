"""A command-line argument that must name a runner output file (``runner merge``, ``status``,
``caches``): a directory is exit 2 naming it. ``.`` has no file name, so the meta and manifest
paths beside it (``Path.with_name``) raised a ``ValueError`` traceback."""

from __future__ import annotations

import stat
from pathlib import Path

from .errors import ConfigError


def results_file(path: Path, what: str = "a results file") -> Path:
    """``path``, unless it is a directory (or has no file name: ``.``, ``..``, ``/``)."""
    if not path.name or path.name == ".." or path.is_dir():
        raise ConfigError(f"{path}: is a directory, not {what}")
    try:
        mode = path.stat().st_mode
    except OSError:  # not there (yet), a loop: each command says what it makes of that
        return path
    if not stat.S_ISREG(mode):  # a FIFO: reading it would wait for a writer, forever
        raise ConfigError(f"{path}: is not a regular file, not {what}")
    return path
