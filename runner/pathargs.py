"""A command-line argument that must name a runner output file (``runner merge``, ``status``,
``caches``): a directory is exit 2 naming it. ``.`` has no file name, so the meta and manifest
paths beside it (``Path.with_name``) raised a ``ValueError`` traceback."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError


def results_file(path: Path, what: str = "a results file") -> Path:
    """``path``, unless it is a directory (or has no file name: ``.``, ``..``, ``/``)."""
    if not path.name or path.name == ".." or path.is_dir():
        raise ConfigError(f"{path}: is a directory, not {what}")
    return path
