"""Model profiles: how each supported MobileNet ONNX file is fed and read.

A profile is recognised from the model's inputs and outputs, never from its file name, so a
user who drops new weights in gets the right preprocessing or a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnx

from asyncbench.errors import UserError
from asyncbench.paths import BuildPaths


@dataclass(frozen=True)
class ModelProfile:
    """What an ONNX classifier expects and returns, relative to the int8 NHW4 sample (pixel - 128)."""

    name: str
    input_name: str
    layout: str  # "NHWC" or "NCHW", 3 channels
    input_scale: float  # model input = int8 sample value * input_scale
    output_name: str
    num_classes: int
    class_offset: int  # index of ImageNet class 0 in the output (1 when class 0 is background)

    def describe(self) -> str:
        """One line for error messages: the contract this profile matches."""
        shape = "[N,224,224,3]" if self.layout == "NHWC" else "[N,3,224,224]"
        out = f"[N,{self.num_classes}]"
        return f"{self.name}: input {self.input_name!r} float {shape}, output {self.output_name!r} {out}"


# Our import of Google's MobileNet v1, and MLPerf's float model: (pixel - 128) / 128, 1001 classes.
MOBILENET_V1 = ModelProfile("mobilenet_v1_1.0_224", "input:0", "NHWC", 1.0 / 128.0,
                            "MobilenetV1/Predictions/Reshape_1:0", 1001, 1)
# NVIDIA's v0.5 model: float graph with integer-valued weights fed pixel - 128, Gemm logits.
SYM_NO_BN = ModelProfile("mobilenet_sym_no_bn", "0", "NCHW", 1.0, "169", 1000, 0)
PROFILES = (MOBILENET_V1, SYM_NO_BN)


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in value_info.type.tensor_type.shape.dim]


def detect_profile(model: onnx.ModelProto, path: Path) -> ModelProfile:
    """The profile whose input/output names and shapes this model has; else a UserError naming them."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    outputs = list(model.graph.output)
    for p in PROFILES:
        if len(inputs) != 1 or inputs[0].name != p.input_name:
            continue
        if p.output_name not in {o.name for o in outputs}:
            continue
        in_dims = _dims(inputs[0])
        want = [224, 224, 3] if p.layout == "NHWC" else [3, 224, 224]
        out_dims = _dims(next(o for o in outputs if o.name == p.output_name))
        if in_dims[1:] == want and out_dims[-1:] == [p.num_classes]:
            return p
    found = ", ".join(f"input {i.name!r} {_dims(i)}" for i in inputs) + "; " + ", ".join(
        f"output {o.name!r} {_dims(o)}" for o in outputs)
    expected = " | ".join(p.describe() for p in PROFILES)
    raise UserError(f"{path} is not a MobileNet this tool knows (found {found}); expected one of: {expected}")


def load_onnx(path: Path) -> onnx.ModelProto:
    """Load an ONNX file, turning a missing or corrupt file into one clear line."""
    if not path.is_file():
        raise UserError(f"model {path} does not exist: run `python -m asyncbench prepare` (or `make calibrate`)")
    try:
        return onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError/ValueError/OSError variants by the damage
        raise UserError(f"{path} is not a valid ONNX model ({type(e).__name__}); replace it or delete it and "
                        f"run `python -m asyncbench prepare`") from None


def source_model_path(paths: BuildPaths) -> Path:
    """The network to calibrate: NVIDIA's sym_no_bn file when the user dropped it in, else our fp32 import."""
    return paths.sym_no_bn_model if paths.sym_no_bn_model.exists() else paths.fp32_model
