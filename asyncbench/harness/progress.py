"""Progress lines during a run, from a loop timer: nothing is done per sample or per batch.

On a terminal one line a second, rewritten in place; otherwise (a log file, CI) one line a
minute. Each says: elapsed / LoadGen's minimum duration, samples completed, the rolling rate
since the previous line, samples in flight (issued, not completed) and samples failed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from asyncbench.runtime.observer import Counters, Observer

TERMINAL_INTERVAL_S = 1.0
LOG_INTERVAL_S = 60.0


def progress_interval(stream: TextIO, every_s: float | None) -> float:
    """``every_s`` when given, else once a second on a terminal and once a minute otherwise."""
    if every_s is not None:
        return every_s
    return TERMINAL_INTERVAL_S if stream.isatty() else LOG_INTERVAL_S


class Progress(Observer):
    """The progress line as a run observer: it watches the ledger beside LoadGen's test."""

    def __init__(self, every_s: float, stream: TextIO = sys.stderr) -> None:
        self.every_s, self.stream = every_s, stream

    async def watch(self, ledger: Counters, min_duration_s: float) -> None:
        """Print a progress line every ``every_s`` until cancelled (the run's end), then end the line."""
        stream, every_s = self.stream, self.every_s
        in_place = stream.isatty()
        start = last_time = time.monotonic()
        last_done = 0
        try:
            while True:
                await asyncio.sleep(every_s)
                now, done = time.monotonic(), ledger.completed
                rate = (done - last_done) / max(now - last_time, 1e-9)
                last_time, last_done = now, done
                line = (f"progress: {now - start:5.0f} / {min_duration_s:g} s, {done:,} completed, "
                        f"{rate:,.0f} samples/s, {ledger.issued - ledger.completed:,} in flight, "
                        f"{ledger.failed_samples:,} failed")
                stream.write(f"\r\x1b[K{line}" if in_place else f"{line}\n")
                stream.flush()
        finally:
            if in_place and last_done:
                stream.write("\n")
                stream.flush()
