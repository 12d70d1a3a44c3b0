"""Top-1 accuracy from LoadGen's ``mlperf_log_accuracy.json``, scored as MLCommons scores it.

Mirrors ``vision/classification_and_detection/tools/accuracy-imagenet.py``: each record's
``data`` is the hex of the response bytes, element 0 decoded with ``--dtype`` is the predicted
class, and it is compared with the label on line ``qsl_idx`` of the val map. A ``qsl_idx``
seen again is skipped (LoadGen may send an image more than once). Unlike the reference,
unlabelled photos (label -1) are left out of the total and counted separately, and a bad log
is a one-line error instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from asyncbench.data.dataset import UNLABELLED, read_map
from asyncbench.errors import UserError

DTYPES = {"int32": np.int32, "float32": np.float32, "int64": np.int64}


@dataclass(frozen=True)
class AccuracyResult:
    """Counts over the distinct samples of one accuracy log."""

    good: int
    total: int  # distinct labelled samples
    unlabelled: int  # distinct samples whose val-map label is -1
    duplicates: int  # records skipped because their qsl_idx was already scored

    @property
    def accuracy(self) -> float | None:
        """Top-1 in percent, None when no labelled sample was scored."""
        return 100.0 * self.good / self.total if self.total else None

    def line(self) -> str:
        """The reference tool's summary line, ``accuracy=XX.XXX%, good=N, total=M``."""
        accuracy = self.accuracy
        if accuracy is None:
            return f"accuracy=n/a (no labelled samples), good={self.good}, total={self.total}"
        return f"accuracy={accuracy:.3f}%, good={self.good}, total={self.total}"


def load_accuracy_log(path: Path) -> list[dict]:
    """The records of a LoadGen accuracy log; a missing or malformed file is a UserError."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(
            f"accuracy log {path} does not exist: "
            "run LoadGen in accuracy mode first (it writes mlperf_log_accuracy.json)"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read accuracy log {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise UserError(f"accuracy log {path} is not text: expected LoadGen's mlperf_log_accuracy.json") from None
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"accuracy log {path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            "was the LoadGen run cut short?"
        ) from None
    if not isinstance(records, list):
        raise UserError(
            f"accuracy log {path}: expected a JSON list of LoadGen records, found a JSON {type(records).__name__}"
        )
    if not records:
        raise UserError(
            f"accuracy log {path} holds no responses: LoadGen only logs them in accuracy mode (AccuracyOnly)"
        )
    return records


def _qsl_idx(record: Any, position: int, source: str, count: int) -> int:
    """The record's sample index, checked against the val map's length."""
    if not isinstance(record, dict) or "qsl_idx" not in record or "data" not in record:
        raise UserError(
            f"{source}: record {position} is not a LoadGen accuracy record "
            f"(expected an object with qsl_idx and data, found {record!r:.80})"
        )
    idx = record["qsl_idx"]
    if not isinstance(idx, int) or isinstance(idx, bool):
        raise UserError(f"{source}: record {position} has qsl_idx {idx!r:.40}, expected an integer")
    if not 0 <= idx < count:
        raise UserError(
            f"{source}: record {position} has qsl_idx {idx} but the val map lists {count} images "
            f"(0..{count - 1}): is it the val map the run used?"
        )
    return idx


def _predicted_class(record: dict, position: int, source: str, dtype: np.dtype) -> int:
    """Element 0 of the response bytes, read as the reference tool reads it."""
    data = record["data"]
    where = f"{source}: record {position} (qsl_idx {record['qsl_idx']})"
    if not isinstance(data, str):
        raise UserError(f"{where} has data {data!r:.80}, expected a hex string")
    try:
        raw = bytes.fromhex(data)
    except ValueError as e:
        raise UserError(f"{where} has data that is not hex: {e}") from None
    if not raw:
        raise UserError(f"{where} has empty data: the SUT returned no response bytes")
    if len(raw) % dtype.itemsize:
        raise UserError(
            f"{where} has {len(raw)} response bytes, not a whole number of {dtype.name} values: is --dtype right?"
        )
    value = np.frombuffer(raw, dtype)[0]
    if not math.isfinite(float(value)):
        raise UserError(f"{where} decodes to {value} as {dtype.name}, not a class id: is --dtype right?")
    return int(value)


def compute_accuracy(
    entries: list[dict], labels: list[int], dtype: str = "int32", source: str = "accuracy log"
) -> AccuracyResult:
    """Score the records against the val-map labels; ``source`` names the log in error messages."""
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    np_dtype = np.dtype(DTYPES[dtype])
    seen: set[int] = set()
    good = total = unlabelled = 0
    for position, record in enumerate(entries):
        idx = _qsl_idx(record, position, source, len(labels))
        if idx in seen:
            continue
        seen.add(idx)
        found = _predicted_class(record, position, source, np_dtype)
        label = labels[idx]
        if label == UNLABELLED:
            unlabelled += 1
            continue
        total += 1
        good += int(found == label)
    return AccuracyResult(good=good, total=total, unlabelled=unlabelled, duplicates=len(entries) - len(seen))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m asyncbench accuracy`` (named as in MLCommons' tool where they overlap)."""
    parser.add_argument("--mlperf-accuracy-file", type=Path, required=True, help="LoadGen's mlperf_log_accuracy.json")
    parser.add_argument("--val-map", type=Path, required=True, help="the val map the run's QSL was built from")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default="int32",
        help="type of the response elements (default int32: the engines return int32 top-1 classes)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the accuracy line (and how many unlabelled samples were skipped, if any)."""
    labels = [entry.label for entry in read_map(args.val_map)]
    records = load_accuracy_log(args.mlperf_accuracy_file)
    result = compute_accuracy(records, labels, args.dtype, source=str(args.mlperf_accuracy_file))
    print(result.line())
    if result.unlabelled:
        print(f"skipped {result.unlabelled} unlabelled samples (label {UNLABELLED} in {args.val_map})")
    return 0
