"""argparse value types shared by every command line, so each rejects bad input with the same words."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeVar

_N = TypeVar("_N", int, float)


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (rejects nan and inf)."""
    value = _parse(text, float, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{value:g} must be greater than 0")
    return value


def rate_qps(text: str) -> float:
    """A query rate of at least 1 per second: below it a run of LoadGen's 1,024 queries takes hours and,
    since Server stops early only once queries pile up, cannot be stopped promptly either."""
    value = positive_float(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value:g} QPS is below 1: LoadGen's 1,024 queries would take "
                                         f"{1024 / value / 3600:.3g} h; use at least 1")
    return value


def _parse(text: str, cast: Callable[[str], _N], what: str) -> _N:
    try:
        return cast(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
