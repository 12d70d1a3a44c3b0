"""Serving asyncbench's engines from a real Triton Inference Server (``asyncbench serve``)."""
