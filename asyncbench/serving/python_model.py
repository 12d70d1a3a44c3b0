"""The Triton Python-backend model asyncbench serves: one of its engines behind Triton's batcher.

Imported only inside Triton's stub process (``triton_python_backend_utils`` exists nowhere else).
Each model instance opens its own engine from the JSON parameter ``asyncbench`` of config.pbtxt
(asyncbench.serving.tritonserver.ServedModel), warms it up at every batch size it prepared, and
runs each batch Triton's dynamic batcher forms as one ``infer``: the requests' samples are
joined, and the classes split back per request. With numpy 2 tensors cross through DLPack both
ways (the bundled backend's own numpy conversion reads wrong input bytes and returns empty output
tensors there; its capsule destructor logs an ignored ValueError for the first few outputs); with
numpy 1 through that conversion (numpy 1's DLPack capsule crashes the stub).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from asyncbench.config import BatchingConfig, EngineConfig, EngineKind, Precision, RunConfig, TorchCompile
from asyncbench.engines.base import Engine
from asyncbench.engines.sizing import open_engine
from asyncbench.paths import BuildPaths

NUMPY_2 = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _tensor(name: str, array: np.ndarray) -> Any:
    """An output tensor in the way this numpy's version survives the stub (see the module docstring)."""
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY_2 else pb_utils.Tensor(name, array)


def _array(tensor: Any) -> np.ndarray:
    """An input tensor as numpy, read the way this numpy's version gets the right bytes (module docstring)."""
    return np.from_dlpack(tensor) if NUMPY_2 else tensor.as_numpy()


def engine_config(spec: dict[str, Any]) -> RunConfig:
    """The run configuration that opens the served engine (only its engine and batching sections matter)."""
    precision = spec.get("precision")
    return RunConfig(
        batching=BatchingConfig(max_batch_size=int(spec["max_batch_size"])),
        engine=EngineConfig(kind=EngineKind.parse(spec["engine"]),
                            precision=None if precision is None else Precision.parse(precision),
                            threads=spec.get("threads"), null_spec=spec.get("null_spec", ""),
                            torch_compile=TorchCompile.parse(spec.get("torch_compile", "default"))))


class TritonPythonModel:
    """Triton's Python-backend interface: initialize, execute, finalize."""

    engine: Engine

    def initialize(self, args: dict[str, str]) -> None:
        """Open and warm the engine the model config names."""
        config = json.loads(args["model_config"])
        spec = json.loads(config["parameters"]["asyncbench"]["string_value"])
        self.engine = open_engine(engine_config(spec), BuildPaths(Path(spec["build_dir"])),
                                  say=lambda line: print(f"asyncbench: {line}", flush=True))
        self.engine.warmup(self.engine.capabilities.buckets)
        print(f"asyncbench: {self.engine.name} ready on {self.engine.device} (instance {args['model_instance_name']})",
              flush=True)

    def execute(self, requests: list[Any]) -> list[Any]:
        """One engine batch for all of Triton's requests; a failure answers every request with its error."""
        inputs = [_array(pb_utils.get_input_tensor_by_name(r, "input")) for r in requests]
        try:
            batch = inputs[0] if len(inputs) == 1 else np.concatenate(inputs)
            top1 = self.engine.infer(np.ascontiguousarray(batch)).astype(np.int32, copy=False).reshape(-1, 1)
        except Exception as e:  # noqa: BLE001 - every request gets the error; the server stays up
            error = pb_utils.TritonError(f"{self.engine.name} failed: {type(e).__name__}: {e}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for x in inputs:
            part = np.ascontiguousarray(top1[start:start + len(x)])
            start += len(x)
            responses.append(pb_utils.InferenceResponse(output_tensors=[_tensor("top1", part)]))
        return responses

    def finalize(self) -> None:
        """Release the engine (GPU memory, worker threads)."""
        self.engine.close()
