"""asyncbench: an asyncio re-implementation of NVIDIA's MLPerf Inference v0.5 MobileNet harness."""

__version__ = "0.1.0"
