"""An ``Engine`` on ONNX Runtime's CPU provider: the portable baseline every machine can run.

``InferenceSession.run`` releases the GIL for the whole computation, so worker threads driving
this engine do not stall the asyncio event loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from asyncbench.contract import RESULT_DTYPE, SAMPLE_DTYPE, SAMPLE_SHAPE, check_batch
from asyncbench.engines.base import Capabilities, EngineError, ExecutionForm, HostEngine, batch_sizes_upto
from asyncbench.errors import UserError

_ORT_TYPES = {"float": "float32", "double": "float64", "float16": "float16"}
OPTIMIZATION_LEVELS = {
    "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _describe(arg: ort.NodeArg) -> str:
    """``int8 [N, 224, 224, 4]`` from ONNX Runtime's ``tensor(int8)`` and shape list."""
    kind = arg.type
    if kind.startswith("tensor(") and kind.endswith(")"):
        kind = kind[len("tensor(") : -1]
        kind = _ORT_TYPES.get(kind, kind)
    dims = ", ".join("N" if d is None else str(d) for d in (arg.shape or []))
    return f"{kind} [{dims}]"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class OnnxRuntimeEngine(HostEngine):
    """Runs a contract model (int8 NHW4 in, int32 top-1 out) with ONNX Runtime on the CPU.

    Blocking form: ``slots`` batches run at once on the runtime's worker threads (one being
    computed while the next is gathered), sharing the session's intra-op thread pool.
    """

    def __init__(self, model_path: Path, max_batch_size: int = 32, intra_op_threads: int | None = None,
                 slots: int = 2, *, spinning: bool = True, optimization: str = "all",
                 optimized_model: Path | None = None) -> None:
        """``spinning``: intra-op threads spin while waiting for work (onnxruntime's default) or sleep.
        ``optimization``: the graph optimisation level (none, basic, extended, all).
        ``optimized_model``: where onnxruntime writes the optimised graph; when it is already there it is
        loaded instead, with no optimisation pass (it is specific to this machine's CPU and onnxruntime).
        """
        super().__init__()
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        if intra_op_threads is not None and intra_op_threads < 1:
            raise ValueError(f"intra_op_threads must be at least 1, got {intra_op_threads}")
        model_path = Path(model_path)
        if not model_path.is_file():
            raise UserError(
                f"model {model_path} does not exist: run `python -m asyncbench calibrate` "
                "(or `python -m asyncbench prepare`) to build it"
            )
        if optimization not in OPTIMIZATION_LEVELS:
            raise ValueError(f"optimization must be one of {', '.join(OPTIMIZATION_LEVELS)}, got {optimization!r}")
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION_LEVELS[optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        load_path = model_path
        if optimized_model is not None:
            if optimized_model.is_file():
                load_path = optimized_model
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            else:
                options.optimized_model_filepath = str(optimized_model)
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        try:
            session = ort.InferenceSession(str(load_path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # ONNX Runtime's load errors share no public base class
            raise UserError(f"cannot load model {model_path}: {_first_line(e)}") from e

        self.name = f"onnxruntime-cpu:{model_path.name}"
        self.model_path = model_path
        self.max_batch_size = max_batch_size
        self.capabilities = Capabilities(ExecutionForm.BLOCKING, slots, slots, batch_sizes_upto(max_batch_size))
        self._fixed_batch = self._check_contract(session, model_path, max_batch_size)
        self._input_name = session.get_inputs()[0].name
        self._output_name = session.get_outputs()[0].name
        self._session: ort.InferenceSession | None = session

    @staticmethod
    def _check_contract(session: ort.InferenceSession, path: Path, max_batch_size: int) -> int | None:
        """Reject a model that does not take int8 NHW4 and return int32 classes; its fixed N, if any."""
        inputs, outputs = session.get_inputs(), session.get_outputs()
        expected_in = f"one int8 [N, {', '.join(map(str, SAMPLE_SHAPE))}] input"
        if len(inputs) != 1:
            found = ", ".join(_describe(a) for a in inputs) or "none"
            raise UserError(f"model {path}: expected {expected_in}, found {len(inputs)} inputs ({found})")
        model_in = inputs[0]
        shape = model_in.shape or []
        dims_ok = len(shape) == 4 and list(shape[1:]) == list(SAMPLE_SHAPE)
        if model_in.type != "tensor(int8)" or not dims_ok:
            raise UserError(f"model {path}: expected {expected_in}, found {_describe(model_in)}")
        out_shape = outputs[0].shape if len(outputs) == 1 else None
        rank_ok = not out_shape or len(out_shape) == 1  # ONNX Runtime reports [] when it cannot infer a shape
        if len(outputs) != 1 or outputs[0].type != "tensor(int32)" or not rank_ok:
            found = ", ".join(_describe(a) for a in outputs) or "none"
            raise UserError(f"model {path}: expected one int32 [N] output (top-1 class), found {found}")
        fixed = shape[0] if isinstance(shape[0], int) else None
        if fixed is not None and fixed < max_batch_size:
            raise UserError(
                f"model {path} has a fixed batch size of {fixed} but a max batch size of {max_batch_size} "
                f"was requested: use a max batch size of at most {fixed} or a model with a dynamic batch dimension"
            )
        return fixed

    def infer(self, batch: np.ndarray) -> np.ndarray:
        """Top-1 classes of ``batch``; ONNX Runtime computes with the GIL released."""
        n = check_batch(batch, self.max_batch_size, self.name)
        session = self._session
        if session is None:
            raise EngineError(f"{self.name} is closed")
        feed = np.ascontiguousarray(batch)
        if self._fixed_batch is not None and n < self._fixed_batch:
            feed = np.concatenate([feed, np.zeros((self._fixed_batch - n, *SAMPLE_SHAPE), SAMPLE_DTYPE)])
        start = time.perf_counter()
        try:
            (result,) = session.run([self._output_name], {self._input_name: feed})
        except Exception as e:  # ONNX Runtime's run errors share no public base class
            raise EngineError(f"{self.name} failed on a batch of {n}: {_first_line(e)}") from e
        elapsed = time.perf_counter() - start
        result = result[:n]
        if result.dtype != RESULT_DTYPE or result.shape != (n,):
            raise EngineError(f"{self.name} returned {result.dtype} {result.shape}, expected int32 ({n},)")
        self._latency.record(n, elapsed)
        return result

    def close(self) -> None:
        """Drop the session (and its thread pool); later ``infer`` calls raise EngineError."""
        self._session = None
