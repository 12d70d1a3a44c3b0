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

from asyncbench.errors import UserError


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


def check_writable(path: Path, what: str) -> None:
    """Refuse an output file that cannot be written, before the work that fills it (no traceback after a long run).

    The probe is what ``write_atomic`` will do: create a temp file in the target's folder.
    """
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{what} {path}: {path.parent} is not an existing folder: create it or choose another path")
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise UserError(f"{what} {path} cannot be written ({e.strerror or e}): choose a writable path") from None
    os.close(fd)
    os.unlink(name)


def write_output(path: Path, data: bytes, what: str) -> None:
    """``write_bytes_atomic`` for a file the user asked for: a failure (a full disk) is one line."""
    try:
        write_bytes_atomic(path, data)
    except OSError as e:
        raise UserError(f"{what} {path} could not be written ({e.strerror or e})") from None
