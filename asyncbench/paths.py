"""Where things live under the build directory (the seed harness's layout)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_MAPS = REPO_ROOT / "data_maps"


@dataclass(frozen=True)
class BuildPaths:
    """Every build artefact's location, derived from one root (default ./build)."""

    root: Path = Path("build")

    @property
    def wheels(self) -> Path:
        return self.root / "wheels"

    @property
    def models(self) -> Path:
        return self.root / "models" / "MobileNet"

    @property
    def fp32_model(self) -> Path:
        return self.models / "mobilenet_v1_1.0_224.onnx"

    @property
    def sym_no_bn_model(self) -> Path:
        return self.models / "mobilenet_sym_no_bn.onnx"

    @property
    def fp32_nhw4_model(self) -> Path:
        """The fp32 network wrapped to the engine contract: int8 NHW4 in, int32 top-1 out."""
        return self.models / "mobilenet_fp32_nhw4.onnx"

    @property
    def int8_model(self) -> Path:
        """The calibrated INT8 QDQ network with the same contract as fp32_nhw4_model (built for this CPU)."""
        return self.models / "mobilenet_int8_nhw4.onnx"

    @property
    def int8_signed_model(self) -> Path:
        """The INT8 QDQ network with symmetric signed activations and 8-bit weights: TensorRT's input."""
        return self.models / "mobilenet_int8_nhw4_signed.onnx"

    @property
    def calibration_cache(self) -> Path:
        return self.models / "calibration.cache"

    @property
    def engine_cache(self) -> Path:
        """Serialized TensorRT engines, one per (model, TensorRT version, GPU, max batch)."""
        return self.root / "engines"

    @property
    def compile_cache(self) -> Path:
        """Compiled GPU kernels and their tuning choices, reused across runs (Triton, inductor)."""
        return self.root / "cache"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tune(self) -> Path:
        """Tuning runs (one folder each) and the per-system tuned settings (systems/)."""
        return self.root / "tune"

    @property
    def embedded_images(self) -> Path:
        return self.data / "embedded"

    @property
    def preprocessed(self) -> Path:
        return self.root / "preprocessed_data"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def audits(self) -> Path:
        """Where `audit` writes its folders (one per compliance test run)."""
        return self.root / "audits"
