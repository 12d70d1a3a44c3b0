"""The checksums preprocessing records beside its samples, so a damaged sample is found before a run uses it.

Each output folder holds ``CRC32SUMS``: one ``<crc32 hex> <bytes> <file name>`` line per sample file.
CRC-32 (zlib) rather than sha256: it is checked for every sample at the start of every run, and it
finds the damage that matters here (truncation, bit rot, a stray write) at memory speed.
"""

from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

from asyncbench.fileio import write_atomic

MANIFEST = "CRC32SUMS"

Entry = tuple[int, int]  # (crc32, size in bytes)


def crc32_bytes(data: bytes | memoryview) -> Entry:
    """The manifest entry of an in-memory file."""
    return zlib.crc32(data), len(data)


def crc32_file(path: Path) -> Entry:
    """The manifest entry of a file on disk."""
    crc, size = 0, 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return crc, size


def read_manifest(folder: Path) -> dict[str, Entry]:
    """File name -> entry; empty when the folder has no manifest yet. Malformed lines are skipped."""
    try:
        text = (folder / MANIFEST).read_text()
    except OSError:
        return {}
    entries = {}
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1].isdigit():
            with contextlib.suppress(ValueError):
                entries[parts[2]] = (int(parts[0], 16), int(parts[1]))
    return entries


def write_manifest(folder: Path, entries: dict[str, Entry]) -> None:
    """Replace the folder's manifest atomically (a concurrent reader sees the old or the new one)."""
    text = "".join(f"{crc:08x} {size} {name}\n" for name, (crc, size) in sorted(entries.items()))
    write_atomic(folder / MANIFEST, lambda tmp: tmp.write_text(text))
