"""The INT8 engine model rewritten for TensorRT: int8 NCHW input read through one DequantizeLinear.

Our NHW4 sample buffer (NHWC int8 with a zero fourth channel) is, byte for byte, TensorRT's CHW4
vectorized layout of an int8 NCHW ``[N,3,224,224]`` tensor. Declaring the network input that way
lets TensorRT read the samples in place, so the head wrap.py builds for the CPU engines (Cast,
drop the pad channel, scale, relayout) is replaced by a DequantizeLinear with the sample scale.
When the network's first QuantizeLinear re-quantizes that very tensor (same scale, zero point 0),
the dequantize/quantize round trip is the identity and is dropped: the first convolution then
reads the int8 input directly, as in NVIDIA's own MobileNet engine.

TensorRT cannot dequantize int32 tensors, and onnxruntime's quantizer stores each convolution
bias as int32 behind a DequantizeLinear; those constant dequantizations are computed here, with
the operator's own float32 arithmetic, and the biases stored as float32.
"""

from __future__ import annotations

import heapq

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from asyncbench.contract import SAMPLE_SHAPE
from asyncbench.model.profiles import PROFILES, ModelProfile
from asyncbench.model.wrap import ENGINE_INPUT, ENGINE_OUTPUT, _live, drop_unused_initializers

TRT_INPUT_SHAPE = (3, 224, 224)
_DEQUANTIZED = "trt/dequantized"
_SCALE = "trt/input_scale"
_ZERO_POINT = "trt/input_zero_point"
_HEAD_FORM = "Cast -> Slice -> [Mul] -> [Transpose] -> Identity (wrap_for_engine's head)"
# wrap_for_engine's head nodes, (name, op), in order; the Mul and the Transpose are optional.
_CAST, _SLICE = ("wrap/cast", "Cast"), ("wrap/drop_pad_channel", "Slice")
_MUL, _TRANSPOSE, _IDENTITY = ("wrap/scale", "Mul"), ("wrap/to_nchw", "Transpose"), ("wrap/model_input", "Identity")


def _foreign(detail: str) -> ValueError:
    return ValueError(f"not an engine model this rewrite knows: {detail}; expected {_HEAD_FORM}")


def _readers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _const(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(inits[name]) if name in inits else None


def _perm(node: onnx.NodeProto) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _parse_head(graph: onnx.GraphProto) -> tuple[list[onnx.NodeProto], ModelProfile]:
    """The wrap/ head nodes from the engine input to the profile's input, and the profile they feed.

    Every step is checked against what wrap_for_engine builds, so a model from elsewhere is
    refused instead of being rewritten into something that computes a different network.
    """
    inputs = {i.name: i for i in graph.input}
    if ENGINE_INPUT not in inputs:
        raise _foreign(f"no graph input {ENGINE_INPUT!r}")
    tensor = inputs[ENGINE_INPUT].type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    if tensor.elem_type != TensorProto.INT8 or dims[1:] != list(SAMPLE_SHAPE):
        raise _foreign(f"input {ENGINE_INPUT!r} is not int8 [N,{','.join(map(str, SAMPLE_SHAPE))}]")
    readers = _readers(list(graph.node))
    inits = {i.name: i for i in graph.initializer}
    head: list[onnx.NodeProto] = []

    def step(*allowed: tuple[str, str]) -> onnx.NodeProto:
        """The single reader of the last head output, which must be one of the allowed (name, op)."""
        source = head[-1].output[0] if head else ENGINE_INPUT
        found = readers.get(source, [])
        if len(found) != 1:
            raise _foreign(f"{source!r} is read by {len(found)} nodes, not 1")
        node = found[0]
        if (node.name, node.op_type) not in allowed:
            wanted = " or ".join(f"{op} {name!r}" for name, op in allowed)
            raise _foreign(f"{source!r} feeds {node.op_type} {node.name!r}, not {wanted}")
        head.append(node)
        return node

    cast = step(_CAST)
    if next((a.i for a in cast.attribute if a.name == "to"), None) != TensorProto.FLOAT:
        raise _foreign("wrap/cast does not cast to float")
    rgb = step(_SLICE)
    cut = [_const(inits, name) for name in rgb.input[1:]]
    if [None if c is None else c.tolist() for c in cut] != [[0], [3], [3]]:
        raise _foreign("wrap/drop_pad_channel does not keep channels 0..2 of the last axis")
    node = step(_MUL, _TRANSPOSE, _IDENTITY)
    scale = 1.0
    if node.op_type == "Mul":
        factor = _const(inits, node.input[1])
        if factor is None or factor.size != 1:
            raise _foreign("wrap/scale does not multiply by a constant scalar")
        scale = float(factor.reshape(()))
        node = step(_TRANSPOSE, _IDENTITY)
    layout = "NHWC"
    if node.op_type == "Transpose":
        if _perm(node) != [0, 3, 1, 2]:
            raise _foreign("wrap/to_nchw is not an NHWC -> NCHW transpose")
        layout = "NCHW"
        node = step(_IDENTITY)
    profile = next((p for p in PROFILES if p.input_name == node.output[0]), None)
    if profile is None:
        raise _foreign(f"wrap/model_input feeds {node.output[0]!r}, which is no known profile's input")
    if profile.layout != layout or np.float32(profile.input_scale) != np.float32(scale):
        raise _foreign(f"the head gives {layout} x {scale}, but {profile.name} expects "
                       f"{profile.layout} x {profile.input_scale}")
    return head, profile


def _is_sample_quantizer(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], scale: float) -> bool:
    """A per-tensor int8 QuantizeLinear with exactly the sample scale and zero point 0."""
    if node.op_type != "QuantizeLinear" or len(node.input) < 3:
        return False
    q_scale, q_zero = _const(inits, node.input[1]), _const(inits, node.input[2])
    return (q_scale is not None and q_zero is not None and q_scale.size == 1 and q_zero.size == 1
            and q_zero.dtype == np.int8 and int(q_zero.reshape(())) == 0
            and np.float32(q_scale.reshape(())) == np.float32(scale))


def _fold_requantize(nodes: list[onnx.NodeProto], inits: dict[str, onnx.TensorProto], scale: float) -> None:
    """Point the readers of Q(relayout(DQ(input))) at the int8 input when that is the identity.

    Only Identity/Transpose nodes whose permutations compose to no permutation may sit between:
    then Q gives back exactly the int8 samples (x * s / s rounds to x).
    """
    readers = _readers(nodes)
    tensor, perm = _DEQUANTIZED, [0, 1, 2, 3]
    while len(readers.get(tensor, [])) == 1:
        node = readers[tensor][0]
        if node.op_type == "Identity":
            tensor = node.output[0]
        elif node.op_type == "Transpose":
            perm = [perm[axis] for axis in _perm(node)]
            tensor = node.output[0]
        else:
            if perm == [0, 1, 2, 3] and _is_sample_quantizer(node, inits, scale):
                for reader in readers.get(node.output[0], []):
                    reader.input[:] = [ENGINE_INPUT if name == node.output[0] else name for name in reader.input]
            return


def _fold_int32_dequantize(nodes: list[onnx.NodeProto], graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes without their DequantizeLinear of int32 constants, whose float32 results become initializers.

    Computes ``float32(x - zero_point) * scale`` along the node's axis, the arithmetic of the
    ONNX operator (and of onnxruntime's kernel), so the network's function is unchanged.
    """
    inits = {i.name: i for i in graph.initializer}
    kept = []
    for node in nodes:
        maybe = [_const(inits, name) for name in node.input] if node.op_type == "DequantizeLinear" else []
        args = [a for a in maybe if a is not None]
        if len(args) < 2 or len(args) != len(maybe) or args[0].dtype != np.int32:
            kept.append(node)
            continue
        values, scale = args[0], args[1]
        zero = args[2] if len(args) > 2 else np.zeros((), np.int32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % max(values.ndim, 1)
        shape = [-1 if i == axis else 1 for i in range(values.ndim)] if scale.ndim == 1 else list(scale.shape)
        shifted = values.astype(np.int64) - zero.astype(np.int64).reshape(shape)
        result = shifted.astype(np.float32) * scale.astype(np.float32).reshape(shape)
        graph.initializer.append(numpy_helper.from_array(result, node.output[0]))
    return kept


def _toposort(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in dependency order, keeping the given order where free (onnxruntime's quantizer appends its Q/DQ)."""
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    waiting = [len({producer[name] for name in node.input if name in producer}) for node in nodes]
    users: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        for dep in {producer[name] for name in node.input if name in producer}:
            users.setdefault(dep, []).append(i)
    ready = [i for i, count in enumerate(waiting) if count == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for user in users.get(i, []):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(nodes):
        raise ValueError("the model's graph has a cycle")
    return [nodes[i] for i in order]


def tensorrt_form(int8_model: onnx.ModelProto) -> onnx.ModelProto:
    """A new model: input ``input`` int8 [N,3,224,224] -> DequantizeLinear -> the network -> ``top1`` int32 [N].

    ``int8_model`` is an engine-contract model from wrap_for_engine (usually its QDQ INT8 build);
    it is left unchanged. Raises ValueError when its head is not the one wrap_for_engine makes.
    """
    model = onnx.ModelProto.FromString(int8_model.SerializeToString())
    graph = model.graph
    head, profile = _parse_head(graph)
    dropped = {id(n) for n in head}
    new_head = [helper.make_node("DequantizeLinear", [ENGINE_INPUT, _SCALE, _ZERO_POINT], [_DEQUANTIZED],
                                 name="trt/dequantize")]
    x = _DEQUANTIZED
    if profile.layout == "NHWC":
        new_head.append(helper.make_node("Transpose", [x], ["trt/nhwc"], name="trt/to_nhwc", perm=[0, 2, 3, 1]))
        x = "trt/nhwc"
    new_head.append(helper.make_node("Identity", [x], [profile.input_name], name="trt/model_input"))
    graph.initializer.extend([numpy_helper.from_array(np.array(profile.input_scale, np.float32), _SCALE),
                              numpy_helper.from_array(np.array(0, np.int8), _ZERO_POINT)])
    inits = {i.name: i for i in graph.initializer}
    nodes = new_head + [n for n in graph.node if id(n) not in dropped]
    _fold_requantize(nodes, inits, profile.input_scale)
    nodes = _toposort(_live(_fold_int32_dequantize(nodes, graph), ENGINE_OUTPUT))
    del graph.node[:]
    graph.node.extend(nodes)
    drop_unused_initializers(graph)
    for value in graph.input:
        if value.name == ENGINE_INPUT:
            value.CopyFrom(helper.make_tensor_value_info(ENGINE_INPUT, TensorProto.INT8, ["N", *TRT_INPUT_SHAPE]))
    del graph.value_info[:]  # shapes recorded for the old head's tensors no longer hold
    onnx.checker.check_model(model)
    return model
