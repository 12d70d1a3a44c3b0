"""The sample contract every engine, the QSL arena and the preprocessing share (defined here only).

A sample is one preprocessed image: int8 NHWC with a zero fourth channel (NVIDIA's NHW4 input
layout), values ``pixel - 128``. A result is the int32 top-1 ImageNet class of each sample.
"""

from __future__ import annotations

import numpy as np

SAMPLE_SHAPE: tuple[int, int, int] = (224, 224, 4)
SAMPLE_DTYPE = np.dtype(np.int8)
SAMPLE_BYTES = int(np.prod(SAMPLE_SHAPE)) * SAMPLE_DTYPE.itemsize
RESULT_DTYPE = np.dtype(np.int32)


def check_batch(batch: np.ndarray, max_batch_size: int, name: str) -> int:
    """Validate a batch against the contract (type, dtype, shape, size); returns its size."""
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy array, got {type(batch).__name__}")
    if batch.dtype != SAMPLE_DTYPE:
        raise ValueError(f"batch must be int8, got {batch.dtype}")
    if batch.ndim != 4 or batch.shape[1:] != SAMPLE_SHAPE:
        raise ValueError(f"batch must have shape (n, {', '.join(map(str, SAMPLE_SHAPE))}), got {batch.shape}")
    n = batch.shape[0]
    if not 1 <= n <= max_batch_size:
        raise ValueError(f"batch size {n} is outside 1..{max_batch_size} for {name}")
    return n
