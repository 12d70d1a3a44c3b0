#!/usr/bin/env python3
"""Seed-compatible entry point for preprocessing.

    python3 scripts/preprocess_data.py -d build/data -o build/preprocessed_data -b mobilenet [--val_only|--cal_only]

Runs from a plain checkout (no install), and reports user errors as one ``error:`` line.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from asyncbench.cli import exit_code
from asyncbench.data.preprocess import add_arguments, run
from asyncbench.errors import AsyncbenchError


def _sigterm_as_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Parse the seed's options and preprocess; the return value is the process exit status.

    SIGTERM is taken like Ctrl-C, so the samples finished so far are recorded in their folders'
    checksum manifests (the default SIGTERM action would kill the process first, and a rerun would
    rewrite them all).
    """
    parser = argparse.ArgumentParser(
        prog="preprocess_data.py",
        description="Preprocess the ImageNet (or embedded) images for the MobileNet benchmark.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        return run(args)
    except AsyncbenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt:
        print("error: interrupted; finished outputs are kept and a rerun resumes where this one stopped",
              file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
