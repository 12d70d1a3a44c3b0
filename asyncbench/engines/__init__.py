"""Inference engines: one interface (``Engine``) over every backend the runtime can drive."""
