"""`evaluate`: feed the preprocessed validation set straight to the engines (no LoadGen).

This is the accuracy check that exists before the LoadGen runtime: it prints the same
``accuracy=XX.XXX%, good=N, total=M`` line as MLCommons' accuracy script, and INT8 vs fp32
top-1 agreement, which is what the unlabelled embedded photos are for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from asyncbench.contract import SAMPLE_DTYPE, SAMPLE_SHAPE
from asyncbench.data.dataset import UNLABELLED, VAL_LAYOUT, Dataset, MapEntry, read_map, require_preprocessed
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.errors import UserError
from asyncbench.loadgen.accuracy import AccuracyResult


@dataclass(frozen=True)
class ModelRun:
    """One model's predictions over the validation map."""

    model: str
    predictions: np.ndarray
    seconds: float

    def accuracy(self, labels: np.ndarray) -> AccuracyResult:
        """Top-1 over the labelled entries only."""
        labelled = labels != UNLABELLED
        good = int(np.sum(self.predictions[labelled] == labels[labelled]))
        return AccuracyResult(good, int(labelled.sum()), int((~labelled).sum()), 0)


def val_batches(folder: Path, entries: list[MapEntry], batch_size: int) -> Iterator[np.ndarray]:
    """Validation samples as int8 NHW4 batches, read lazily so 50,000 images never sit in memory."""
    require_preprocessed(folder, [e.name for e in entries], "--val_only")
    for start in range(0, len(entries), batch_size):
        batch = np.stack([np.load(folder / f"{e.name}.npy") for e in entries[start:start + batch_size]])
        if batch.shape[1:] != SAMPLE_SHAPE or batch.dtype != SAMPLE_DTYPE:
            raise UserError(f"{folder} holds samples of {batch.dtype} {batch.shape[1:]}, expected int8 {SAMPLE_SHAPE}: "
                            f"preprocess again with --val_only --force")
        yield batch


def run_model(name: str, model_path: Path, folder: Path, entries: list[MapEntry], batch_size: int,
              threads: int | None = None) -> ModelRun:
    """Predict every validation sample with one engine model."""
    engine = OnnxRuntimeEngine(model_path, max_batch_size=batch_size, intra_op_threads=threads)
    try:
        outputs, busy = [], 0.0
        for batch in val_batches(folder, entries, batch_size):
            t0 = time.perf_counter()
            outputs.append(engine.infer(batch))
            busy += time.perf_counter() - t0
    finally:
        engine.close()
    return ModelRun(name, np.concatenate(outputs), busy)


def evaluate(dataset: Dataset, preprocessed: Path, models: dict[str, Path], batch_size: int = 32,
             threads: int | None = None, log=print) -> dict[str, ModelRun]:
    """Run each model over the val map and print accuracy, speed and (for two models) agreement."""
    entries = read_map(dataset.val_map)
    labels = np.array([e.label for e in entries])
    folder = dataset.preprocessed_dir(preprocessed, VAL_LAYOUT)
    n_lab = int((labels != UNLABELLED).sum())
    log(f"evaluate: dataset {dataset.name} ({len(entries)} samples, {n_lab} labelled), engine onnxruntime CPU, "
        f"batch {batch_size}, no LoadGen (engine fed directly)")
    runs = {}
    for name, path in models.items():
        run = run_model(name, path, folder, entries, batch_size, threads)
        runs[name] = run
        log(f"{name}: {run.accuracy(labels).line()}  ({len(entries)} samples, {len(entries) / run.seconds:.1f} img/s "
            f"in the engine)")
    if len(runs) == 2:
        a, b = runs.values()
        same = a.predictions == b.predictions
        cal = {e.name for e in read_map(dataset.cal_map)}
        held = np.array([e.name not in cal for e in entries])
        line = f"{a.model} vs {b.model} top-1 agreement: {100 * same.mean():.1f}% ({same.sum()}/{len(same)})"
        if held.any():
            line += (f"; on the {held.sum()} samples not in the calibration map: {100 * same[held].mean():.1f}% "
                     f"({same[held].sum()}/{held.sum()})")
        log(line)
    return runs
