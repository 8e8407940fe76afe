"""Where the compiled (Numba) kernels are cached: a directory named after nfbound's sources.

Numba's on-disk cache (``@njit(cache=True)``) is invalidated only when the *source file of the
cached function itself* changes. Kernels inline functions from other modules (the rounding
primitives of ``formats.fast`` into ``ops.conv_kernels`` and ``ops.linalg``), so after an
update of ``formats.fast`` alone a cached conv kernel would keep the old rounding — a wrong
runtime and an unsound bound, silently (seen here: a merged change to subnormal flushing left
a stale ``avg_pool`` kernel that broke an enclosure). Keying the cache directory by a hash of
the sources that define compiled code — every nfbound module that mentions ``numba``, which is
where every jitted function and every global a kernel freezes at compile time live — makes
any change of any kernel's source start a fresh cache.

The directory is ``<base>/nfbound-<version>-<hash>`` with ``<base>`` the user's
``NUMBA_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/nfbound`` (``~/.cache/nfbound``), else a
temporary directory when neither is writable. Old directories are left for the user to delete.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import numba

from . import __version__


def source_hash() -> str:
    """SHA-256 (12 hex digits) of the nfbound modules that mention ``numba``, in path order
    (this module excluded)."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        text = path.read_bytes()
        if b"numba" in text and path.name != "kernel_cache.py":
            h.update(str(path.relative_to(root)).encode())
            h.update(text)
    return h.hexdigest()[:12]


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, delete=True)
        probe.close()
        return True
    except OSError:
        return False


def configure() -> Path:
    """Point Numba's cache at the directory for the current sources (module doc); returns it."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        base = Path(os.environ["NUMBA_CACHE_DIR"])
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nfbound"
    path = base / f"nfbound-{__version__}-{source_hash()}"
    if not _writable(path):
        path = Path(tempfile.gettempdir()) / "nfbound-numba" / path.name
        path.mkdir(parents=True, exist_ok=True)
    numba.config.CACHE_DIR = str(path)
    return path


CACHE_DIR = configure()
