"""Download pinned package archives: PyPI files through pip's index settings, Debian packages
through apt-get.

A PyPI part names its archive file and that file's sha256. The file is taken straight from
where pip is configured to look (index-url, extra-index-url, find-links: ``PIP_*`` variables,
``pip config``, else pip's default index), so no build backend runs and nothing but the file
travels; a file whose sha256 differs is refused.
"""

from __future__ import annotations

import functools
import hashlib
import html
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REGISTRIES = ("pypi", "debian")
_TIMEOUT_S = 60
_LINK = re.compile(r"<a\s[^>]*?href=\"([^\"]+)\"[^>]*>([^<]+)</a>", re.IGNORECASE)


class FetchError(RuntimeError):
    """A package could not be downloaded (no network, no client, or the pin is gone)."""


def download(registry: str, package: str, version: str, dest: Path, *,
             filename: str | None = None, sha256: str | None = None) -> Path:
    """Download one package archive into the directory ``dest``; return its path.

    PyPI needs ``filename`` and ``sha256`` (the pinned file); Debian takes ``package=version``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if registry == "pypi":
        if not (filename and sha256):
            raise ValueError(f"PyPI package {package} {version}: the archive file name and its "
                             "sha256 are needed")
        return download_index_file(package, filename, sha256, dest)
    if registry == "debian":
        return _apt_download(package, version, dest)
    raise ValueError(f"unknown registry '{registry}'; known: {', '.join(REGISTRIES)}")


def download_index_file(package: str, filename: str, sha256: str, dest: Path) -> Path:
    """Fetch ``filename`` of ``package`` from the first place pip is configured to look that
    has it (index, extra indexes, find-links); check its sha256."""
    target = dest / filename
    if target.is_file() and _sha256(target.read_bytes()) == sha256:
        return target
    tried = []
    for where in locations():
        try:
            data = _fetch_from(where, package, filename)
        except FetchError as e:
            tried.append(str(e))
            continue
        if data is None:
            tried.append(f"not listed on {where}")
            continue
        if _sha256(data) != sha256:
            tried.append(f"{where} has sha256 {_sha256(data)}, pinned {sha256}")
            continue
        tmp = target.with_name(target.name + ".partial")
        tmp.write_bytes(data)
        tmp.replace(target)
        return target
    raise FetchError(f"could not download {filename} ({package}): " + "; ".join(tried))


def locations() -> list[str]:
    """Where pip looks, in order: the index (``$PIP_INDEX_URL``, ``pip config``'s index-url,
    else pip's default), the extra indexes, then find-links (prefixed ``find-links:``)."""
    index = _pip_setting("index-url")
    if not index:
        try:
            from pip._internal.models.index import PyPI
        except ImportError as e:
            raise FetchError("pip is needed to find the package index (python -m pip)") from e
        index = PyPI.simple_url
    extra = (_pip_setting("extra-index-url") or "").split()
    links = ["find-links:" + f for f in (_pip_setting("find-links") or "").split()]
    return [u for u in index.split()[:1] + extra] + links


def _fetch_from(where: str, package: str, filename: str) -> bytes | None:
    """The file's bytes from one index or find-links location; None where it is not listed."""
    if where.startswith("find-links:"):
        page = where.removeprefix("find-links:")
    else:
        page = f"{where.rstrip('/')}/{re.sub(r'[-_.]+', '-', package).lower()}/"
    local = _local_path(page)
    if local is not None:
        if (local / filename).is_file():
            return (local / filename).read_bytes()
        if local.is_dir() and not (local / "index.html").is_file():
            return None
        if local.is_dir():
            page = (local / "index.html").as_uri()
        elif not local.is_file():
            return None
    links = {html.unescape(name).strip(): urllib.parse.urljoin(page, html.unescape(href))
             for href, name in _LINK.findall(_get(page).decode("utf-8", "replace"))}
    return _get(links[filename].split("#", 1)[0]) if filename in links else None


def _local_path(url: str) -> Path | None:
    """The directory or file of a ``file:`` URL or plain path; None for a web address."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    return None if parsed.scheme in ("http", "https") else Path(url)


def _pip_setting(name: str) -> str | None:
    """A pip setting: ``$PIP_<NAME>``, else ``pip config``'s download section, else global."""
    env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
    if env:
        return env
    configured = _pip_config()
    return configured.get(f"download.{name}") or configured.get(f"global.{name}")


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    try:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    pairs = (line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return {k.strip(): v.strip().strip("'\"") for k, v in pairs}


def _get(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "text/html",
                                                   "User-Agent": "lowprec-corpus"})
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S, context=_tls()) as response:
            return response.read()
    except (OSError, urllib.error.URLError) as e:
        raise FetchError(f"could not download {url}: {e}") from e


def _tls() -> ssl.SSLContext:
    """Certificates as pip finds them: ``$PIP_CERT`` or pip's ``cert`` setting, else pip's
    bundled ones, else the system's."""
    cafile = os.environ.get("PIP_CERT") or _pip_setting("cert")
    if not cafile:
        try:
            from pip._vendor import certifi
            cafile = certifi.where()
        except ImportError:
            cafile = None
    return ssl.create_default_context(cafile=cafile)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _apt_download(package: str, version: str, dest: Path) -> Path:
    if shutil.which("apt-get") is None:
        raise FetchError(f"cannot fetch Debian package {package}={version}: "
                         "apt-get not found (a Debian-based machine is needed)")
    cmd = ["apt-get", "download", "--quiet", f"{package}={version}"]
    try:
        done = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"could not download debian package {package} {version}: {e}") from e
    files = [p for p in dest.iterdir() if p.is_file()]
    if done.returncode != 0 or len(files) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        hint = ""
        if "was not found" in " ".join(tail):
            hint = (" (the package index may predate the pin: run `apt-get update` and try "
                    "again; if the pin left the archive, `apt-cache madison "
                    f"{package}` lists the versions on offer)")
        raise FetchError(f"could not download debian package {package} {version} "
                         f"(exit {done.returncode}): {' | '.join(tail)}{hint}")
    return files[0]
