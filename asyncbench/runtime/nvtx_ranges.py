"""``--nvtx``: NVTX ranges per batch (never per sample) in an ``asyncbench`` domain, for Nsight Systems.

Ranges are started and ended explicitly (not pushed and popped): the execute slots' batches
overlap on the one loop thread, which a per-thread range stack cannot express. The ``nvtx``
package (the ``[profile]`` extra) is imported only when the flag is given; without it the
runtime holds ``None`` and pays one ``is None`` check per batch.
"""

from __future__ import annotations

from typing import Any

from asyncbench.errors import UserError

DOMAIN = "asyncbench"


class NvtxRanges:
    """Marks and start/end ranges in the asyncbench domain."""

    def __init__(self) -> None:
        try:
            import nvtx
        except ImportError:
            raise UserError("--nvtx needs the nvtx package: pip install '.[profile]' (or pip install nvtx)") from None
        self._nvtx = nvtx

    def mark(self, message: str) -> None:
        """An instant event (a LoadGen issue call, a batch being cut)."""
        self._nvtx.mark(message, domain=DOMAIN)

    def start(self, message: str) -> Any:
        """Open a range; returns the handle ``end`` takes."""
        return self._nvtx.start_range(message, domain=DOMAIN)

    def end(self, handle: Any) -> None:
        """Close a range opened by ``start``."""
        self._nvtx.end_range(handle)
