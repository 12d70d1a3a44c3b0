"""Engine-only images/s of the torch engine with and without the pad-channel fold, side by side.

Rerun: python benchmarks/torch_rewrites.py [--sizes 64,256]

Both engines are built in this process (torch.compile default, one CUDA graph per size) and
timed with CUDA events on back-to-back graph replays (benchmarks/engine_roofline.py's method).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from asyncbench.cuda.api import device_name
from asyncbench.engines.gpu import GpuEngine
from asyncbench.engines.torch_engine import TorchBackend
from asyncbench.model.calibrate import ensure_engine_models
from asyncbench.paths import BuildPaths

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="64,256")
    p.add_argument("--build-dir", default=str(ROOT / "build"))
    args = p.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    fp32, _ = ensure_engine_models(BuildPaths(Path(args.build_dir)), log=lambda _: None)
    print(f"GPU: {device_name(0)}")
    for fold in (False, True):
        engine = GpuEngine([TorchBackend(fp32, 0, sizes, "fp16", "default", fold=fold, fused=False)], 1)
        try:
            worker = engine.workers[0]
            rates = {b: b / worker.time_compute(b, max(20, 12_800 // b)) for b in sizes}
        finally:
            engine.close()
        print(f"fold={fold}: " + ", ".join(f"bs {b}: {r:,.0f} img/s" for b, r in rates.items()), flush=True)


if __name__ == "__main__":
    main()
