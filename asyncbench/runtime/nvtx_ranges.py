"""``--nvtx``: NVTX ranges per batch (never per sample) in an ``asyncbench`` domain, for Nsight Systems.

Ranges are started and ended explicitly (not pushed and popped): the execute slots' batches
overlap on the one loop thread, which a per-thread range stack cannot express. The ``nvtx``
package (the ``[profile]`` extra) is imported only when the flag is given; without it the
runtime holds ``None`` and pays one ``is None`` check per batch. With it, calls go through the
domain object, and the attributes of the one message sent per LoadGen issue call (at Server
rates, one per sample) are built once: through the module-level helpers the mark cost LoadGen's
issue thread enough to lose the highest Server QPS on a 2-core machine.
"""

from __future__ import annotations

from typing import Any

from asyncbench.errors import UserError
from asyncbench.runtime.observer import Observer

DOMAIN = "asyncbench"


class NvtxRanges(Observer):
    """Marks and start/end ranges in the asyncbench domain, at the run's observer hooks."""

    active = True

    def __init__(self) -> None:
        try:
            import nvtx
        except ImportError:
            raise UserError("--nvtx needs the nvtx package: pip install '.[profile]' (or pip install nvtx)") from None
        self._domain = nvtx.get_domain(DOMAIN)
        self._issue: dict[int, Any] = {}  # samples per call -> prepared attributes

    def mark_issue(self, samples: int) -> None:
        """A LoadGen issue call of ``samples`` samples (attributes prepared once per size)."""
        attributes = self._issue.get(samples)
        if attributes is None:
            attributes = self._issue[samples] = self._domain.get_event_attributes(message=f"issue ({samples})")
        self._domain.mark(attributes)

    def mark(self, message: str) -> None:
        """An instant event (a batch being cut)."""
        self._domain.mark(self._domain.get_event_attributes(message=message))

    def start(self, message: str) -> Any:
        """Open a range; returns the handle ``end`` takes."""
        return self._domain.start_range(self._domain.get_event_attributes(message=message))

    def end(self, handle: Any) -> None:
        """Close a range opened by ``start``."""
        self._domain.end_range(handle)

    def issued(self, samples: int) -> None:
        self.mark_issue(samples)

    def pull_start(self, calls: int) -> Any:
        return self.start(f"inbox pull ({calls} calls)")

    def pull_end(self, token: Any) -> None:
        self.end(token)

    def execute_start(self, seq: int, size: int, slot: int | None) -> Any:
        self.mark(f"batch {seq} ({size}) " + ("inline" if slot is None else f"to slot {slot}"))
        return self.start(f"execute batch {seq} ({size})")

    def execute_end(self, token: Any) -> None:
        self.end(token)

    def complete_start(self, seq: int) -> Any:
        return self.start(f"complete batch {seq}")

    def complete_end(self, token: Any) -> None:
        self.end(token)
