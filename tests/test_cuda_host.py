"""The parts of asyncbench.cuda and the GPU frame that need no GPU: run detection, argument checks."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from asyncbench.cuda.memory import contiguous_runs


def test_runs_of_consecutive_rows() -> None:
    starts, rows, lengths = contiguous_runs(np.array([3, 4, 5, 9, 9, 10, 2]))
    assert starts.tolist() == [3, 9, 9, 2]
    assert rows.tolist() == [0, 3, 4, 6]
    assert lengths.tolist() == [3, 1, 2, 1]


def test_no_rows_no_runs() -> None:
    assert all(part.size == 0 for part in contiguous_runs(np.array([], np.int64)))


@given(st.lists(st.integers(0, 50), max_size=200))
def test_runs_cover_the_batch_in_order(slots: list[int]) -> None:
    starts, rows, lengths = contiguous_runs(np.array(slots, np.int64))
    rebuilt = [s + k for s, n in zip(starts.tolist(), lengths.tolist(), strict=True) for k in range(n)]
    assert rebuilt == slots
    assert rows.tolist() == (np.cumsum(lengths) - lengths).tolist()  # each run lands after the previous ones
