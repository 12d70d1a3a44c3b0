"""Atomic file replacement, the one way this package writes a file that others read.

Models, caches, engines, samples and manifests are read by later runs (and by concurrent
processes) that must never see a half-written file: each is written to a temp file in the
target's folder and renamed over the target, so a reader sees the old file or the new one,
and a crash or Ctrl-C mid-write leaves the old file in place.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write`` fill a temp file beside ``path``, then rename it into place; on failure remove it and re-raise.

    The temp file is in the same folder (a rename is only atomic within one file system) and
    hidden (``.<name>.<random>.tmp``), so a folder scan never mistakes it for a finished file.
    The folder must exist. The result is mode 0o644, as a plain write gives under the usual umask.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0o600; the result is shared like any other output
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Replace ``path`` with ``data`` atomically (see `write_atomic`)."""
    write_atomic(path, lambda tmp: tmp.write_bytes(data))
