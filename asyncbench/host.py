"""What this machine is, in one place: its CPU (recorded beside every CPU figure, and it chooses the INT8
recipe), its GPUs, the package versions and the checkout a result came from."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from typing import Any

from asyncbench.paths import REPO_ROOT

_PACKAGES = ("numpy", "onnxruntime", "onnx", "mlcommons-loadgen", "uvloop", "cuda-python", "torch", "triton",
             "tensorrt")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The vector-ISA flags that decide CPU engine speed (AVX2, AVX-512 VNNI, AMX); empty where unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in flags if f.startswith(("avx", "amx")))


def git_commit() -> dict[str, object] | None:
    """The checkout's commit and whether it has local changes (None outside a git checkout)."""
    if not (REPO_ROOT / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "dirty": bool(dirty)}


def gpus() -> list[str] | None:
    """Names of the visible GPUs, with the driver version (None where CUDA is not usable)."""
    from asyncbench.cuda.api import CudaError, call, device_count, device_name

    try:
        names = [device_name(i) for i in range(device_count())]
        driver = call("cudaDriverGetVersion")
    except CudaError:
        return None
    return [f"{name} (driver API {driver // 1000}.{driver % 1000 // 10})" for name in names]


def environment(device: str) -> dict[str, Any]:
    """Host, device and package versions; GPUs are queried only for a run on a GPU."""
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": {"model": cpu_model(), "logical_cores": os.cpu_count(), "flags": cpu_flags()},
        "gpus": gpus() if device.startswith("cuda") else None,
        "packages": versions,
    }
