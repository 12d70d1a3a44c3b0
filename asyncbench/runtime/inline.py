"""The inline driver: latency-bound scenarios run each query on LoadGen's issue thread and complete it there.

In SingleStream and MultiStream LoadGen holds one query outstanding at a time, so there is
nothing to batch across queries, and the hand-offs to the event loop and back were most of a
query's time on a device engine. The loop, the batcher and the completion thread stay out of the
way; the same ``Ledger`` (counters, latency record, stage times, the failure, exactly once) and
``Observer`` as the loop pipeline's apply.
"""

from __future__ import annotations

import asyncio

from asyncbench.errors import RunFailure
from asyncbench.runtime.execution import Execution, InlineExecution
from asyncbench.runtime.ledger import Ledger
from asyncbench.runtime.observer import BatchStamps


class InlineDriver:
    """Runs each issue call on the calling thread, split at ``max_batch_size``, and completes it from there."""

    def __init__(self, execution: Execution, max_batch_size: int, ledger: Ledger, *,
                 timeout_s: float | None = None) -> None:
        if not isinstance(execution, InlineExecution):
            raise TypeError("the inline driver needs an execution with run_now (a device engine)")
        self._execution = execution
        self._run_now = execution.run_now
        self._max = max_batch_size
        self.ledger = ledger
        self.timeout_s = timeout_s
        self._sizes: dict[int, int] = {}
        self._seq = 0
        self._ended = asyncio.Event()  # set by close(): the test has ended and the execution may close

    @property
    def wakeups(self) -> int:
        """Times LoadGen's thread woke the loop: never, on this path."""
        return 0

    async def start(self) -> None:
        """Before the first query: the execution's per-loop resources."""
        await self._execution.start()

    def issue(self, ids: list[int], indices: list[int]) -> None:
        """LoadGen's issue thread: run this query now and complete it; after a failure, complete it as failed."""
        ledger, observer = self.ledger, self.ledger.observer
        arrival = ledger.clock()
        ledger.issued += len(ids)
        for start in range(0, len(ids), self._max):
            chunk = ids[start:start + self._max]
            if ledger.failure is not None:  # a failed chunk (or an abort) completes the rest as failed
                ledger.finish(ids[start:], None)
                return
            seq, self._seq = self._seq, self._seq + 1
            token = observer.execute_start(seq, len(chunk), None) if observer.active else None
            started = ledger.clock()
            try:
                top1 = self._run_now(indices[start:start + self._max], self.timeout_s)
            except Exception as e:  # noqa: BLE001 - any engine error fails the run, with its traceback kept
                ledger.fail(RunFailure.caused_by(f"engine failed: {type(e).__name__}: {e}", e))
                ledger.finish(ids[start:], None)
                return
            finally:
                if observer.active:
                    observer.execute_end(token)
            executed = ledger.clock()
            now = ledger.complete_batch(seq, chunk, top1, [(arrival, arrival, len(chunk))])
            self._sizes[len(chunk)] = self._sizes.get(len(chunk), 0) + 1
            if observer.active:
                observer.batch_done(BatchStamps(seq, len(chunk), 0, arrival, started, started, executed, now, True,
                                                0, 1))

    async def run(self) -> None:
        """Nothing runs on the loop (``issue`` does the work): wait for the test's end, then close the execution."""
        try:
            await self._ended.wait()
        finally:
            self._execution.close()

    def abort(self, reason: RunFailure | str) -> None:
        """Fail the run: the query running now finishes, every later one is completed as failed."""
        self.ledger.fail(reason)

    def close(self) -> None:
        """LoadGen's test ended (nothing is pending between queries on this path): ``run`` returns."""
        self._ended.set()

    def histogram(self) -> dict[int, int]:
        """Batches run per batch size, by size."""
        return dict(sorted(self._sizes.items()))

    def statistics(self) -> dict[str, object]:
        """No queues on this path."""
        return {"pending_samples": 0}

