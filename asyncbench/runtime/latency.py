"""The harness's own per-sample latency record: a log-binned histogram filled once per batch.

LoadGen's percentiles are the official figures; this record is what a plot of the latency
distribution needs without LoadGen's (huge) trace. A sample's latency is from its arrival on
LoadGen's issue thread to the completion of its batch. Each batch adds its arrival spans (a
piece of an inbox chunk: first arrival, last arrival, samples): the samples of a span are taken
as evenly spread between its two arrivals and their share of each bin is added arithmetically,
so the cost is per span (a few per batch), never per sample.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

BINS_PER_DECADE = 20  # bins 12% wide: finer than any percentile reading needs
LOW_NS, HIGH_NS = 1_000, 100_000_000_000  # 1 us .. 100 s


def _edges() -> list[int]:
    decades = round(math.log10(HIGH_NS / LOW_NS))
    return [round(LOW_NS * 10 ** (k / BINS_PER_DECADE)) for k in range(decades * BINS_PER_DECADE + 1)]


EDGES_NS = _edges()


class LatencyHistogram:
    """Counts per bin: bin i holds [EDGES_NS[i-1], EDGES_NS[i]); bin 0 is below 1 us, the last above 100 s."""

    def __init__(self) -> None:
        self.counts = [0.0] * (len(EDGES_NS) + 1)
        self.samples = 0

    def add(self, now_ns: int, spans: Sequence[tuple[int, int, int]]) -> None:
        """Record the samples of one completed batch (spans of (first arrival, last arrival, samples))."""
        for first, last, n in spans:
            self.samples += n
            lo, hi = now_ns - last, now_ns - first  # the newest arrival waited least
            if hi - lo < 1 or n == 1:
                self.counts[bisect.bisect_right(EDGES_NS, (lo + hi) // 2)] += n
                continue
            i, j = bisect.bisect_right(EDGES_NS, lo), bisect.bisect_right(EDGES_NS, hi)
            per_ns = n / (hi - lo)
            for k in range(i, j + 1):
                start = max(lo, EDGES_NS[k - 1]) if k > 0 else lo
                stop = min(hi, EDGES_NS[k]) if k < len(EDGES_NS) else hi
                self.counts[k] += (stop - start) * per_ns

    def to_json(self) -> dict[str, object]:
        """The non-empty bins as [low edge ns, high edge ns, samples], for result.json and plots."""
        bins = []
        for k, count in enumerate(self.counts):
            if count > 0:
                low = EDGES_NS[k - 1] if k > 0 else 0
                high = EDGES_NS[k] if k < len(EDGES_NS) else None
                bins.append([low, high, round(count, 3)])
        return {"samples": self.samples, "bins_per_decade": BINS_PER_DECADE, "bins": bins}
