"""The QSL sample arena: LoadGen's performance samples, loaded once into one contiguous array.

LoadGen calls load_samples with the indices it will issue; they are read from the per-image
.npy files into one array so a batch is gathered with a single vectorised take (no per-sample
Python work on the hot path). The GPU path allocates that array in pinned host memory, so a
batch goes to the device by DMA straight from the arena.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE
from asyncbench.data.manifest import crc32_bytes, read_manifest
from asyncbench.errors import UserError

# allocate(count) -> an uninitialised int8 (count, 224, 224, 4) array the arena fills.
Allocator = Callable[[int], np.ndarray]


def host_allocator(count: int) -> np.ndarray:
    """Plain pageable memory (the CPU engines)."""
    return np.empty((count, *SAMPLE_SHAPE), dtype=SAMPLE_DTYPE)


class SampleArena:
    """Preprocessed int8 NHW4 samples addressed by QSL index."""

    def __init__(self, folder: Path, names: Sequence[str], allocate: Allocator = host_allocator,
                 on_load: Callable[[np.ndarray], None] | None = None) -> None:
        self.folder = folder
        self.names = list(names)
        self._allocate = allocate
        self._on_load = on_load  # sees each freshly loaded arena (the GPU engine mirrors it to devices)
        self._slot = np.full(len(self.names), -1, dtype=np.int64)
        self._data = np.empty((0, *SAMPLE_SHAPE), dtype=SAMPLE_DTYPE)
        self._recorded = read_manifest(folder)  # checksums preprocessing recorded (empty for older folders)

    @property
    def total(self) -> int:
        """Number of samples the dataset has (LoadGen's total sample count)."""
        return len(self.names)

    def load(self, indices: Sequence[int]) -> None:
        """Read the given samples into a fresh arena (LoadGen loads its whole performance set at once)."""
        wanted = np.unique(np.asarray(indices, dtype=np.int64))
        data = self._allocate(len(wanted))
        for slot, index in enumerate(wanted):
            data[slot] = self._read(self.folder / f"{self.names[index]}.npy")
        self._slot[:] = -1
        self._slot[wanted] = np.arange(len(wanted))
        self._data = data
        if self._on_load is not None:
            self._on_load(data)

    def _repair(self) -> str:
        """The command that rewrites this folder's damaged samples (built only when a sample is refused)."""
        return (f"run `python3 scripts/preprocess_data.py -d build/data -o {self.folder.parents[2]} -b mobilenet "
                f"--val_only`, which rewrites damaged samples")

    def _read(self, path: Path) -> np.ndarray:
        """One sample, checked against its recorded checksum, size, dtype and shape."""
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read preprocessed sample {path} ({e.strerror or e}): {self._repair()}") from None
        recorded = self._recorded.get(path.relative_to(self.folder).as_posix())
        if recorded is not None and crc32_bytes(raw) != recorded:
            raise UserError(f"preprocessed sample {path} does not match the checksum recorded when it was made "
                            f"(damaged since): {self._repair()}")
        try:
            sample = np.load(io.BytesIO(raw))
        except (OSError, ValueError, EOFError) as e:
            raise UserError(f"preprocessed sample {path} is not a valid .npy file ({e}): {self._repair()}") from None
        if sample.shape != SAMPLE_SHAPE or sample.dtype != SAMPLE_DTYPE:
            raise UserError(f"{path} holds {sample.dtype} {sample.shape}, expected int8 {SAMPLE_SHAPE}: "
                            f"{self._repair()}")
        return sample

    def unload(self, indices: Sequence[int]) -> None:
        """Forget the given samples (memory is released when none remain)."""
        self._slot[np.asarray(indices, dtype=np.int64)] = -1
        if not (self._slot >= 0).any():
            self._data = np.empty((0, *SAMPLE_SHAPE), dtype=SAMPLE_DTYPE)

    def slots(self, indices: Sequence[int]) -> np.ndarray:
        """Arena rows of these QSL indices (KeyError for one that is not loaded)."""
        slots = self._slot[np.asarray(indices, dtype=np.int64)]
        if (slots < 0).any():
            missing = np.asarray(indices)[slots < 0][0]
            raise KeyError(f"sample {missing} was issued but not loaded")
        return slots

    def gather(self, indices: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """One contiguous (n, 224, 224, 4) batch for these QSL indices.

        With `out` (a reused per-slot buffer of at least n samples) the copy lands in memory that
        is already paged in: allocating a fresh multi-megabyte array per batch costs page faults
        that showed up as Server tail latency.
        """
        slots = self.slots(indices)
        if out is None:
            return np.take(self._data, slots, axis=0)
        target = out[: len(slots)]
        np.take(self._data, slots, axis=0, out=target, mode="clip")  # slots are checked above
        return target
