"""Download pinned packages through the ordinary clients: pip for PyPI, apt-get for Debian."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REGISTRIES = ("pypi", "debian")


class FetchError(RuntimeError):
    """A package could not be downloaded (no network, no client, or the pin is gone)."""


def download(registry: str, package: str, version: str, dest: Path) -> Path:
    """Download one package archive into the empty directory ``dest``; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    if registry == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
               "--no-binary", ":all:", "--retries", "1", "--timeout", "20",
               "--dest", str(dest), f"{package}=={version}"]
    elif registry == "debian":
        if shutil.which("apt-get") is None:
            raise FetchError(f"cannot fetch Debian package {package}={version}: "
                             "apt-get not found (a Debian-based machine is needed)")
        cmd = ["apt-get", "download", "--quiet", f"{package}={version}"]
    else:
        raise ValueError(f"unknown registry '{registry}'; known: {', '.join(REGISTRIES)}")
    try:
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not download {registry} package {package} {version}: {e}") from e
    files = [p for p in dest.iterdir() if p.is_file()]
    if done.returncode != 0 or len(files) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        hint = ""
        if registry == "debian" and "was not found" in " ".join(tail):
            hint = (" (the package index may predate the pin: run `apt-get update` and try "
                    "again; if the pin left the archive, `apt-cache madison "
                    f"{package}` lists the versions on offer)")
        raise FetchError(f"could not download {registry} package {package} {version} "
                         f"(exit {done.returncode}): {' | '.join(tail)}{hint}")
    return files[0]
