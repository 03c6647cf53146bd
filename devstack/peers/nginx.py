"""nginx, the benchmark's floor: a reverse proxy that does nothing but pass requests on.

Owns :data:`NGINX_VERSION` (the pin: Debian bookworm's nginx), :func:`binary`,
:func:`is_built`, :func:`ensure`, :func:`version` and :func:`render_config`.
:func:`ensure` returns the installed ``nginx`` when the machine has one (PATH, or
``/usr/sbin/nginx``); otherwise it fetches Debian's ``nginx`` package with
``apt-get download`` (:func:`devstack.apt.download`: nothing is installed, no service
started, root not needed) and unpacks it with ``dpkg-deb -x`` into
``<cache root>/nginx-<version>/`` (~1.5 MB, a few seconds). Its shared libraries (libc,
libcrypt, libpcre2-8, libssl3, zlib) are the base system's; a missing one fails the build
with its name. A ``stamp`` holding the Debian version marks a complete unpack; a file lock
keeps two runs from building it at once. Only the binary is used: :func:`render_config`
writes a whole config, and every path nginx would write (pid, temp files) is set in it.

``python -m devstack build nginx`` builds it. Reference for the directives:
https://nginx.org/en/docs/http/ngx_http_upstream_module.html#keepalive and
https://nginx.org/en/docs/http/ngx_http_proxy_module.html
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Final, TextIO

from devstack import apt
from devstack.cache import BuildFailed, cache_root, locked, run_with_progress

__all__ = [
    "NGINX_VERSION",
    "BuildFailed",
    "binary",
    "cache_dir",
    "ensure",
    "is_built",
    "render_config",
    "version",
]

#: The upstream release of Debian bookworm's nginx; any Debian revision of it (security
#: updates: ``1.22.1-9+deb12uN``) is accepted, as the archive keeps only the newest.
NGINX_VERSION: Final = "1.22.1"
_PACKAGE: Final = "nginx"
_PREFIX: Final = "rolegate nginx: "
_SYSTEM: Final = Path("/usr/sbin/nginx")


def cache_dir() -> Path:
    """Where the unpacked package lives: ``<cache root>/nginx-<version>``."""
    return cache_root() / f"nginx-{NGINX_VERSION}"


def _installed() -> Path | None:
    """The machine's own nginx, if it has one."""
    found = shutil.which("nginx")
    if found:
        return Path(found)
    return _SYSTEM if os.access(_SYSTEM, os.X_OK) else None


def _cached() -> Path:
    return cache_dir() / "root" / "usr" / "sbin" / "nginx"


def _stamp_ok() -> bool:
    try:
        stamp = (cache_dir() / "stamp").read_text()
    except OSError:
        return False
    return stamp.startswith(f"{_PACKAGE} {NGINX_VERSION}-")


def is_built() -> bool:
    """Whether an nginx is at hand: the machine's, or the unpacked package (stamped)."""
    return _installed() is not None or (_stamp_ok() and _cached().is_file())


def binary() -> Path | None:
    """The nginx :func:`ensure` would return without building: the machine's, else the
    unpacked one; None when neither is there."""
    if (found := _installed()) is not None:
        return found
    return _cached() if _stamp_ok() and _cached().is_file() else None


def _missing_libraries(path: Path) -> list[str]:
    """The shared libraries ``ldd`` cannot find for ``path`` (none without ldd)."""
    if shutil.which("ldd") is None:
        return []
    done = subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def ensure(out: TextIO | None = None) -> Path:
    """An nginx binary: the machine's, else Debian's package unpacked into the cache
    (fetched and unpacked first when missing; progress on ``out``, default stderr).

    Raises:
        devstack.apt.AptUnavailable: there is no nginx and no apt-get to fetch one.
        BuildFailed: the fetch or unpack failed, the archive's nginx is not
            :data:`NGINX_VERSION`, or a shared library it needs is missing here.
    """
    out = out or sys.stderr
    if (found := _installed()) is not None:
        return found
    target = cache_dir()
    with locked(target):
        if _stamp_ok() and _cached().is_file():
            return _cached()
        started = time.monotonic()
        print(f"{_PREFIX}fetching Debian's {_PACKAGE} into {target} ...", file=out, flush=True)
        shutil.rmtree(target, ignore_errors=True)
        deb = apt.download(_PACKAGE, target / "deb", out)
        field = ["dpkg-deb", "--field", str(deb), "Version"]
        debian_version = subprocess.run(field, capture_output=True, text=True, check=True)
        got = debian_version.stdout.strip()
        if not got.startswith(f"{NGINX_VERSION}-"):
            raise BuildFailed(f"the archive's {_PACKAGE} is {got}, not {NGINX_VERSION}-*")
        run_with_progress(["dpkg-deb", "-x", str(deb), str(target / "root")], out, prefix=_PREFIX)
        lacking = _missing_libraries(_cached())
        if lacking:
            raise BuildFailed(f"{_cached()} needs shared libraries missing here: {lacking}")
        (target / "stamp").write_text(f"{_PACKAGE} {got}\n")
        elapsed = time.monotonic() - started
        print(f"{_PREFIX}nginx {got} ready in {elapsed:.0f} s", file=out, flush=True)
        return _cached()


def version(nginx: Path) -> str:
    """What ``nginx -v`` says of itself (``nginx/1.22.1``); ``unknown`` if it says nothing.

    Raises:
        OSError: it cannot be run.
    """
    done = subprocess.run([str(nginx), "-v"], capture_output=True, text=True, check=False)
    said = (done.stderr or done.stdout).strip()
    return said.rsplit(" ", 1)[-1] if said else "unknown"


def render_config(*, port: int, upstream: str, workdir: Path, workers: int) -> str:
    """nginx.conf text for a pass-through proxy on 127.0.0.1:``port`` to ``upstream``
    (``host:port``): ``workers`` worker processes, an ``upstream`` block keeping up to 64
    idle connections (``keepalive 64`` with HTTP/1.1 and an empty ``Connection`` header,
    nginx's documented recipe), response buffering off (streams pass event by event), no
    access log, errors to stderr at ``warn``, and the pid file and every temp path under
    ``workdir``. Run as root, the workers stay root (``user root``), as nginx would
    otherwise switch them to ``nobody``, who cannot use ``workdir``."""
    paths = "\n".join(
        f"    {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}worker_processes {workers};
pid {workdir / "nginx.pid"};
error_log stderr warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
{paths}
    upstream bench_upstream {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
