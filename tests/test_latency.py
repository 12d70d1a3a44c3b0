"""The harness's latency histogram: every sample counted once, spread over the bins its span covers."""

from __future__ import annotations

import pytest

from asyncbench.runtime.latency import EDGES_NS, LatencyHistogram


def test_a_span_spreads_its_samples_over_the_bins_it_covers() -> None:
    hist = LatencyHistogram()
    now = 10_000_000_000
    hist.add(now, [(now - 2_000_000, now - 1_000_000, 10),  # 10 samples arriving 2 ms .. 1 ms before completion
                   (now - 5_000, now - 5_000, 1)])  # one sample, 5 us
    assert hist.samples == 11 and sum(hist.counts) == pytest.approx(11)
    filled = [(EDGES_NS[k - 1], EDGES_NS[k]) for k, c in enumerate(hist.counts) if c and 0 < k < len(EDGES_NS)]
    assert filled[0][0] <= 5_000 < filled[0][1]  # the lone sample's bin
    assert all(1_000_000 - 200_000 <= low and high <= 2_000_000 + 300_000 for low, high in filled[1:])
    bins = hist.to_json()["bins"]
    assert sum(count for _, _, count in bins) == pytest.approx(11)
