"""The torch engine as the runtime runs it against plain torch doing the same math, in one process.

Rerun: python benchmarks/engine_variants.py [--sizes 1,8,64,256,1024] [--variants engine,int8,plain,nodes]

Variants, all int8 NHW4 in and int32 top-1 out, all built from the same ONNX weights:
- engine: TorchBackend as the runtime builds it (fused Triton body, fp32 classifier), timed by
  the runtime's own DeviceWorker.time_compute (its CUDA graph per bucket, CUDA events).
- int8: the same with --precision int8 (the integer Triton body, asyncbench.engines.triton_int8,
  scales from the calibration cache), timed the same way.
- plain: a hand-written nn.Sequential MobileNet v1, exact TF SAME padding (F.pad(x, (0, 1, 0, 1))
  before every stride-2 conv), fp16 channels_last, torch.compile default with a static shape per
  size, CUDA graph per size. The reference the engine must beat.
- nodes: the engine's general path (every ONNX node through asyncbench.model.torch_ops, fp16,
  torch.compile default, static per bucket).
Each is timed on back-to-back graph replays (median of 5 timings). The engine's and int8's top-1
on the 104 embedded photos are compared with the onnxruntime fp32 engine's; the form each
separable block runs in at each batch size is printed. --profile N prints the engine's
kernels at batch N (torch.profiler, one eager call).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from asyncbench.data.dataset import VAL_LAYOUT, read_map, resolve_dataset
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.onnxruntime_engine import OnnxRuntimeEngine
from asyncbench.engines.torch_engine import TorchBackend, use_cache_dir
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.paths import BuildPaths

ROOT = Path(__file__).resolve().parent.parent


def plain_mobilenet(model: onnx.ModelProto) -> Any:
    """nn.Sequential MobileNet v1 from the graph's Conv weights: what a person would write in torch."""
    import torch
    import torch.nn.functional as F

    consts = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    scale = next(float(consts[n.input[1]]) for n in model.graph.node if n.op_type == "Mul")
    layers: list[Any] = []
    convs = [n for n in model.graph.node if n.op_type == "Conv"]

    class TfPad(torch.nn.Module):
        def forward(self, x: Any) -> Any:
            return F.pad(x, (0, 1, 0, 1))

    for node in convs[:-1]:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        w = torch.from_numpy(consts[node.input[1]].copy())
        stride, groups = attrs["strides"][0], attrs.get("group", 1)
        conv = torch.nn.Conv2d(w.shape[1] * groups, w.shape[0], w.shape[2], stride,
                               padding=0 if stride == 2 else w.shape[2] // 2, groups=groups)
        conv.weight.data.copy_(w)
        conv.bias.data.copy_(torch.from_numpy(consts[node.input[2]].copy()))
        layers += ([TfPad()] if stride == 2 else []) + [conv, torch.nn.ReLU6()]
    head = convs[-1]
    classifier = torch.nn.Linear(consts[head.input[1]].shape[1], consts[head.input[1]].shape[0])
    classifier.weight.data.copy_(torch.from_numpy(consts[head.input[1]][:, :, 0, 0].copy()))
    classifier.bias.data.copy_(torch.from_numpy(consts[head.input[2]]))
    body = torch.nn.Sequential(*layers)

    class Plain(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.classifier = body, classifier

        def forward(self, x: Any) -> Any:
            x = (x[..., :3].permute(0, 3, 1, 2).to(torch.float16) * scale).contiguous(
                memory_format=torch.channels_last)
            x = self.body(x).mean((2, 3))
            return self.classifier(x)[:, 1:].argmax(1).to(torch.int32)

    return Plain().to(torch.float16).to(memory_format=torch.channels_last)


def graph_seconds(fn: Any, x: Any, repeats: int) -> float:
    """Seconds per call of ``fn(x)``: its CUDA graph replayed ``repeats`` times back to back, CUDA events."""
    import torch

    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn(x)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn(x)
        graph.replay()
        times = []
        for _ in range(5):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(repeats):
                graph.replay()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / repeats)
    return statistics.median(times)


def engine_rates(engine: GpuEngine, sizes: list[int]) -> dict[int, float]:
    """Images/s per size, the runtime's own timing (DeviceWorker.time_compute), median of 5."""
    worker = engine.workers[0]
    return {b: b / statistics.median(worker.time_compute(b, max(10, 6_400 // b)) for _ in range(5)) for b in sizes}


def photos(paths: BuildPaths) -> np.ndarray:
    dataset = resolve_dataset(paths)
    folder = dataset.preprocessed_dir(paths.preprocessed, VAL_LAYOUT)
    return np.stack([np.load(folder / f"{e.name}.npy") for e in read_map(dataset.val_map)])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1,8,64,256,1024")
    p.add_argument("--variants", default="engine,int8,plain")
    p.add_argument("--profile", type=int, default=0, help="print the engine's kernels at this batch size")
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    p.add_argument("--json", type=Path, default=Path(tempfile.gettempdir()) / "engine_variants.json")
    args = p.parse_args()
    import torch
    import triton

    sizes = [int(s) for s in args.sizes.split(",")]
    variants = args.variants.split(",")
    paths = BuildPaths(Path(args.build_dir))
    use_cache_dir(paths.compile_cache)
    fp32, _ = ensure_engine_models(paths, log=lambda _: None)
    print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}, triton {triton.__version__}", flush=True)
    rates: dict[str, dict[int, float]] = {}
    out: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "sizes": sizes}
    batch = photos(paths)
    ort = OnnxRuntimeEngine(fp32, max_batch_size=len(batch))
    try:
        want = ort.infer(batch)
    finally:
        ort.close()
    for variant, precision in (("engine", "fp16"), ("int8", "int8")):
        if variant not in variants:
            continue
        t0 = time.perf_counter()
        backend = TorchBackend(fp32, 0, sizes, precision, calibration=paths.calibration_cache)
        engine = GpuEngine([backend], 1)
        try:
            print(f"{variant}: {backend.path}; built, tuned and captured in {time.perf_counter() - t0:.1f} s",
                  flush=True)
            step = max(b for b in sizes if b <= len(batch))
            got = np.concatenate([engine.infer(batch[i:i + step]) for i in range(0, len(batch), step)])
            agree = int((got == want).sum())
            print(f"{variant} top-1 = onnxruntime fp32 top-1 on {agree}/{len(batch)} photos", flush=True)
            out.setdefault("agreement", {})[variant] = [agree, len(batch)]
            rates[variant] = engine_rates(engine, sizes)
            from asyncbench.engines import triton_chain, triton_int8

            kernels = ((triton_chain._stem, triton_chain._separable, triton_chain._depthwise) if precision == "fp16"
                       else (triton_int8._stem, triton_int8._separable, triton_int8._depthwise, triton_int8._pointwise))
            out.setdefault("tuned", {})[variant] = {str(k): str(v) for kern in kernels for k, v in kern.cache.items()}
            forms = {str(b): "".join("S" if split else "F" for split in f) for b, f in backend.body.forms.items()}
            print(f"{variant} forms per batch (F fused, S split, per separable block): {forms}", flush=True)
            out.setdefault("forms", {})[variant] = forms
            if args.profile:
                profile(backend, args.profile)
        finally:
            engine.close()
    model = onnx.load(str(fp32))
    if "plain" in variants:
        t0 = time.perf_counter()
        plain = torch.compile(plain_mobilenet(model).cuda().eval(), dynamic=False)
        rates["plain"] = {}
        with torch.inference_mode():
            x_all = torch.from_numpy(np.resize(batch, (max(sizes), *batch.shape[1:]))).cuda()
            got = plain(x_all[:len(batch)]).cpu().numpy()
            print(f"plain top-1 = onnxruntime fp32 top-1 on {int((got == want).sum())}/{len(batch)} photos", flush=True)
            for b in sizes:
                rates["plain"][b] = b / graph_seconds(plain, x_all[:b], max(10, 6_400 // b))
        print(f"plain: compiled and timed in {time.perf_counter() - t0:.1f} s", flush=True)
    if "nodes" in variants:
        t0 = time.perf_counter()
        engine = GpuEngine([TorchBackend(fp32, 0, sizes, "fp16", fused=False)], 1)
        try:
            rates["nodes"] = engine_rates(engine, sizes)
        finally:
            engine.close()
        print(f"nodes: compiled and timed in {time.perf_counter() - t0:.1f} s", flush=True)
    out["rates"] = {k: {str(b): r for b, r in v.items()} for k, v in rates.items()}
    args.json.write_text(json.dumps(out, indent=1))
    names = list(rates)
    ratios = [n for n in ("engine", "int8") if n in names and "plain" in names]
    print("\nimages/s (engine-only, CUDA-graph replay, CUDA events, median of 5)")
    print("batch | " + " | ".join(names) + "".join(f" | {n} / plain" for n in ratios))
    for b in sizes:
        cells = [f"{rates[n][b]:,.0f}" for n in names]
        print(f"{b} | " + " | ".join(cells) + "".join(f" | {rates[n][b] / rates['plain'][b]:.2f}" for n in ratios))


def profile(backend: TorchBackend, size: int) -> None:
    """CUDA time per kernel of one eager engine call at ``size`` (after a warm call)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    x = torch.zeros((size, 224, 224, 4), dtype=torch.int8, device="cuda").random_(-128, 127)
    with torch.inference_mode():
        backend._fn(x)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            backend._fn(x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)


if __name__ == "__main__":
    main()
