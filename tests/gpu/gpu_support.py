"""Skips shared by the GPU tests."""

from __future__ import annotations

import pytest


def torch_or_skip() -> None:
    """Skip unless torch with CUDA imports (the torch extra)."""
    from asyncbench.engines.torch_engine import torch_available

    if not torch_available():
        pytest.skip("torch with CUDA is not installed")
