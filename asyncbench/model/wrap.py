"""Wrap a profiled classifier to the engine contract: int8 NHW4 in, int32 top-1 out.

The sample layout conversion (drop the pad channel, scale, NHWC->NCHW) and the arg-max run
inside the graph, so no engine ever converts layouts or dtypes on the host and only 4 bytes
per sample come back. A trailing Softmax is skipped: arg-max of the logits is the same class.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from asyncbench.contract import SAMPLE_SHAPE
from asyncbench.model.profiles import ModelProfile

ENGINE_INPUT = "input"
ENGINE_OUTPUT = "top1"
MIN_OPSET = 13


def _logits_tensor(graph: onnx.GraphProto, output: str) -> str:
    producer = next((n for n in graph.node if output in n.output), None)
    return producer.input[0] if producer is not None and producer.op_type == "Softmax" else output


def _live(nodes: list[onnx.NodeProto], output: str) -> list[onnx.NodeProto]:
    """The nodes `output` depends on, in their original order (drops e.g. the now unread Softmax)."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep: set[int] = set()
    stack = [output]
    while stack:
        i = producers.get(stack.pop())
        if i is not None and i not in keep:
            keep.add(i)
            stack.extend(nodes[i].input)
    return [n for i, n in enumerate(nodes) if i in keep]


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove initializers no node reads (after a rewrite dropped or replaced their readers)."""
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def wrap_for_engine(model: onnx.ModelProto, profile: ModelProfile) -> onnx.ModelProto:
    """A new model: input ``input`` int8 [N,224,224,4] -> the network -> output ``top1`` int32 [N]."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), MIN_OPSET)
    if opset < MIN_OPSET:
        model = version_converter.convert_version(model, MIN_OPSET)
    else:
        model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    logits = _logits_tensor(g, profile.output_name)

    consts = {
        "wrap/c_starts": np.array([0], np.int64), "wrap/c_ends": np.array([3], np.int64),
        "wrap/c_axes": np.array([3], np.int64),
        "wrap/k_starts": np.array([profile.class_offset], np.int64),
        "wrap/k_ends": np.array([profile.class_offset + 1000], np.int64),
        "wrap/k_axes": np.array([1], np.int64),
    }
    head = [
        helper.make_node("Cast", [ENGINE_INPUT], ["wrap/f32"], name="wrap/cast", to=TensorProto.FLOAT),
        helper.make_node("Slice", ["wrap/f32", "wrap/c_starts", "wrap/c_ends", "wrap/c_axes"], ["wrap/rgb"],
                         name="wrap/drop_pad_channel"),
    ]
    x = "wrap/rgb"
    if profile.input_scale != 1.0:
        consts["wrap/scale"] = np.array(profile.input_scale, np.float32)
        head.append(helper.make_node("Mul", [x, "wrap/scale"], ["wrap/scaled"], name="wrap/scale"))
        x = "wrap/scaled"
    if profile.layout == "NCHW":
        head.append(helper.make_node("Transpose", [x], ["wrap/nchw"], name="wrap/to_nchw", perm=[0, 3, 1, 2]))
        x = "wrap/nchw"
    head.append(helper.make_node("Identity", [x], [profile.input_name], name="wrap/model_input"))
    tail = [
        helper.make_node("Slice", [logits, "wrap/k_starts", "wrap/k_ends", "wrap/k_axes"], ["wrap/imagenet_logits"],
                         name="wrap/drop_background"),
        helper.make_node("ArgMax", ["wrap/imagenet_logits"], ["wrap/argmax"], name="wrap/argmax", axis=1, keepdims=0),
        helper.make_node("Cast", ["wrap/argmax"], [ENGINE_OUTPUT], name="wrap/to_int32", to=TensorProto.INT32),
    ]
    nodes = _live(head + list(g.node) + tail, ENGINE_OUTPUT)
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(g)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    kept_inputs = [i for i in g.input if i.name != profile.input_name]
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(ENGINE_INPUT, TensorProto.INT8, ["N", *SAMPLE_SHAPE])] + kept_inputs)
    del g.output[:]
    g.output.extend([helper.make_tensor_value_info(ENGINE_OUTPUT, TensorProto.INT32, ["N"])])
    del g.value_info[:]
    onnx.checker.check_model(model)
    return model
