"""apt-get installs for tests that need system packages (SLURM, Chromium), one at a time:
with parallel test workers two installs would otherwise race for dpkg's lock."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

LOCK = Path("/tmp/ssae-tests-apt.lock")


def apt_install(packages: list[str], recommends: bool = True) -> str | None:
    """Install ``packages`` with apt-get; the reason it could not, or None on success."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"{' '.join(packages)}: not installed and cannot be (needs root and apt-get)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", *([] if recommends else ["--no-install-recommends"]), *packages],
        ):
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if result.returncode != 0:
                return f"{' '.join(cmd)} failed: {result.stderr[-500:]}"
    return None
