"""An output on a read-only file system says so, not only "not writable".

Found running the README's cron line with its output volume remounted read-only (as root,
where the mode bits allow writing): "the results file (-o) ... is not writable" sent the
operator to the permissions. Needs a mount namespace (``unshare -rm``); skipped without one.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FAST = 'progress = "off"\n[mock]\nlatency = "zero"\n'


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _unshare_works(), reason="no mount namespace (unshare -rm)")


@pytest.mark.parametrize("existing", [True, False], ids=["existing-results", "new-results"])
def test_an_output_on_a_read_only_mount_names_the_read_only_file_system(
    tmp_path: Path, existing: bool
) -> None:
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"id": "q1", "query": "hi"}\n')
    config = tmp_path / "fast.toml"
    config.write_text(FAST)
    vol = tmp_path / "vol"
    vol.mkdir()
    run = f"{sys.executable} -m runner run {jobs} -c {config} -o {vol}/r.results.jsonl"
    script = (
        f"mount -t tmpfs -o size=1m tmpfs {vol} && "
        + (f"{run} -q && " if existing else "")
        + f"mount -o remount,ro {vol} && {run}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "read-only file system" in done.stderr, done.stderr
