"""NVIDIA's MobileNet image preprocessing, with Pillow and numpy instead of OpenCV.

Each image is converted to RGB, resized (bilinear) so its short side is 256 while keeping
the aspect ratio, centre-cropped to 224x224 and shifted to int8 (pixel - 128). The
validation set is stored as the engine's input, NHWC with a zero fourth channel (200,704
bytes a sample); the calibration set as fp32 NCHW holding the same values.

Outputs are keyed by image name, so a bad image is named and skipped without shifting any
other image's label; the run then fails with one line listing what was wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from asyncbench.argtypes import positive_int
from asyncbench.data.dataset import CAL_LAYOUT, VAL_LAYOUT, Dataset, read_map, resolve_dataset
from asyncbench.data.manifest import Entry, crc32_bytes, crc32_file, read_manifest, write_manifest
from asyncbench.errors import ConfigError, UserError
from asyncbench.fileio import write_bytes_atomic
from asyncbench.paths import DATA_MAPS, BuildPaths

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event

RESIZE = 256
CROP = 224
SUPPORTED_BENCHMARKS = ("mobilenet",)
_SHOWN_FAILURES = 3
_CHUNK_MAX = 32  # images a worker takes at once: large enough to amortise IPC, small enough for a live bar

# Set in pool workers so a Ctrl-C drains the queue instead of killing workers mid-write.
_STOP: Event | None = None


def load_image(path: Path) -> np.ndarray:
    """Decode one image into the (224, 224, 3) int8 pixel - 128 array MobileNet consumes."""
    with Image.open(path) as img:
        rgb = _to_rgb(img)
    width, height = rgb.size
    if width <= height:
        size = (RESIZE, round(height * RESIZE / width))
    else:
        size = (round(width * RESIZE / height), RESIZE)
    resized = rgb.resize(size, Image.Resampling.BILINEAR)
    left = (size[0] - CROP) // 2
    top = (size[1] - CROP) // 2
    crop = resized.crop((left, top, left + CROP, top + CROP))
    return (np.asarray(crop, dtype=np.int16) - 128).astype(np.int8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit grayscale is scaled down (Pillow's own conversion clips it, making it nearly all white)."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(img, dtype=np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"{img.mode} pixels outside 0..65535: convert it to an 8- or 16-bit image")
        return Image.fromarray(np.round(pixels / 257).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        raise ValueError("floating-point pixels (mode F): convert it to an 8- or 16-bit image")
    return img.convert("RGB")


def to_nhwc4(x: np.ndarray) -> np.ndarray:
    """The engine's input layout: channels padded to 4 so each pixel is one aligned 32-bit word."""
    out = np.zeros(x.shape[:2] + (4,), dtype=np.int8)
    out[:, :, :3] = x
    return out


def to_fp32_nchw(x: np.ndarray) -> np.ndarray:
    """The calibrator's layout: planar float32 with the same pixel - 128 values."""
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


@dataclass(frozen=True)
class Summary:
    """What a preprocessing run did, counted in source images."""

    dataset: str
    written: int
    up_to_date: int
    failed: int
    seconds: float
    output_dirs: tuple[Path, ...]
    repaired: int = 0  # of the written: outputs that no longer matched the checksum recorded when they were made

    @property
    def images_per_second(self) -> float:
        """Decode throughput: images written per wall-clock second."""
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        """One line for the end of a run."""
        dirs = ", ".join(str(d) for d in self.output_dirs)
        rate = f" ({self.images_per_second:.0f} images/s)" if self.written else ""
        return (
            f"preprocess: {self.dataset}: {self.written} written, {self.up_to_date} up to date, "
            f"{self.failed} failed in {self.seconds:.1f} s{rate} -> {dirs}"
            + (f"; {self.repaired} damaged since they were made (checksum mismatch) and rewritten"
               if self.repaired else "")
        )


class PreprocessError(UserError):
    """Some source images were missing or unreadable; every other image was still written."""

    def __init__(self, message: str, summary: Summary) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class _Task:
    """One source image and the outputs wanted from it (None: not in that map), with their recorded checksums."""

    name: str
    source: Path
    val_out: Path | None
    cal_out: Path | None
    recorded: tuple[tuple[Path, Entry], ...] = ()  # what the folders' manifests say about the outputs


class _Progress:
    """A dependency-free progress bar: redrawn in place on a TTY, a line per 10% otherwise."""

    _WIDTH = 30
    _MIN_REDRAW_S = 0.1

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled and total > 0
        self.tty = self.enabled and stream.isatty()
        self.done = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self._last_decile = 0
        self._drawn = False

    def update(self) -> None:
        """Count one finished image and redraw if it is time to."""
        if not self.enabled:
            return
        self.done += 1
        now = time.monotonic()
        if self.tty:
            if now - self._last_draw >= self._MIN_REDRAW_S or self.done == self.total:
                self._last_draw = now
                self.stream.write("\r" + self._line(now))
                self.stream.flush()
                self._drawn = True
        else:
            decile = self.done * 10 // self.total
            if decile > self._last_decile:
                self._last_decile = decile
                self.stream.write(self._line(now) + "\n")
                self.stream.flush()

    def close(self) -> None:
        """End the in-place line so whatever is printed next starts on its own line."""
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _line(self, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = self.done / elapsed
        filled = self.done * self._WIDTH // self.total
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        minutes, secs = divmod(int(eta + 0.5), 60)
        return (
            f"preprocess [{'#' * filled}{'.' * (self._WIDTH - filled)}] {self.done}/{self.total}"
            f" {rate:.0f} img/s ETA {minutes}:{secs:02d}"
        )


def _failure_reason(e: BaseException) -> str:
    """A short, single-line cause for a source image that could not be used."""
    if isinstance(e, FileNotFoundError):
        return "missing"
    if isinstance(e, IsADirectoryError):
        return "is a directory"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, UnidentifiedImageError):
        return "not a readable image"
    text = " ".join(str(e).split()) or type(e).__name__
    return f"corrupt image ({text})"


def _check_output(output: Path, source_mtime_ns: int, recorded: Entry | None) -> str:
    """"fresh" (as new as its source and matching its manifest entry), "damaged" (new but not matching) or "stale"."""
    try:
        if output.stat().st_mtime_ns < source_mtime_ns or recorded is None:
            return "stale"
        return "fresh" if crc32_file(output) == recorded else "damaged"
    except OSError:
        return "stale"


def _save_atomic(path: Path, array: np.ndarray) -> Entry:
    """Write the .npy atomically, so an interrupted run leaves no truncated sample; returns its manifest entry."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getbuffer()
    write_bytes_atomic(path, data)
    return crc32_bytes(data)


_Result = tuple[str, _Task, str, dict[Path, Entry]]


def _process(task: _Task, force: bool) -> _Result:
    """Preprocess one image; returns (status, task, detail, checksums of its outputs) and never raises for a bad image.

    An output is rewritten when it is older than its source or does not match the checksum its
    folder's manifest recorded (a damaged or hand-edited sample).
    """
    if _STOP is not None and _STOP.is_set():
        return "stopped", task, "", {}
    try:
        source_mtime = task.source.stat().st_mtime_ns
    except OSError as e:
        return "failed", task, _failure_reason(e), {}
    outputs = [p for p in (task.val_out, task.cal_out) if p is not None]
    sums: dict[Path, Entry] = {}
    damaged = False
    if not force:
        recorded = dict(task.recorded)
        for out in outputs:
            state = _check_output(out, source_mtime, recorded.get(out))
            if state == "fresh":
                sums[out] = recorded[out]
            damaged |= state == "damaged"
        outputs = [p for p in outputs if p not in sums]
        if not outputs:
            return "up_to_date", task, "", sums
    try:
        pixels = load_image(task.source)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return "failed", task, _failure_reason(e), sums
    for out in outputs:
        array = to_nhwc4(pixels) if out == task.val_out else to_fp32_nchw(pixels)
        try:
            sums[out] = _save_atomic(out, array)
        except OSError as e:
            return "write_error", task, f"cannot write {out}: {e.strerror or e}", sums
    return ("repaired" if damaged else "written"), task, "", sums


def _init_worker(stop: Event) -> None:
    """Workers ignore Ctrl-C and SIGTERM (a process-group signal reaches them too); the parent sets
    ``stop`` and lets them finish the file in hand, so the pool never loses a task to a dead worker."""
    global _STOP
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _STOP = stop


def _check_image_dir(dataset: Dataset) -> None:
    """Fail before reading maps when the whole image folder is absent, saying how to get it."""
    if dataset.image_dir.is_dir():
        return
    if dataset.name == "embedded":
        raise UserError(
            f"preprocess: the embedded photos are not extracted yet ({dataset.image_dir} does not exist): "
            "run `python -m asyncbench prepare`"
        )
    raise UserError(
        f"preprocess: the {dataset.name} image folder {dataset.image_dir} does not exist: "
        "put the images there or pass the right -d/--data_dir"
    )


def _failure_message(failures: list[tuple[_Task, str]], total: int, maps: dict[str, list[Path]]) -> str:
    """One line naming the first few bad images and the map(s) to fix."""
    failures.sort(key=lambda f: f[0].name)
    shown = "; ".join(f"{task.source}: {reason}" for task, reason in failures[:_SHOWN_FAILURES])
    if len(failures) > _SHOWN_FAILURES:
        shown += f"; and {len(failures) - _SHOWN_FAILURES} more"
    map_paths = sorted({str(m) for task, _ in failures for m in maps[task.name]})
    return (
        f"preprocess: {len(failures)} of {total} images failed ({shown}): "
        f"fix the files or remove them from {' and '.join(map_paths)}"
    )


def preprocess(
    dataset: Dataset,
    out_root: Path,
    *,
    val: bool = True,
    cal: bool = True,
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Summary:
    """Write every mapped image's .npy in parallel, skipping outputs newer than their source.

    Raises UserError (one line) when the image folder is absent or an output cannot be written,
    and PreprocessError, after all other images are done, when any source image is missing or
    unreadable.
    """
    if not (val or cal):
        raise ValueError("nothing to preprocess: val and cal are both False")
    workers = workers if workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    _check_image_dir(dataset)

    wanted: list[tuple[str, Path]] = []
    if val:
        wanted.append((VAL_LAYOUT, dataset.val_map))
    if cal:
        wanted.append((CAL_LAYOUT, dataset.cal_map))
    outputs: dict[str, dict[str, Path]] = {}
    maps: dict[str, list[Path]] = {}
    out_dirs: list[Path] = []
    for layout, map_path in wanted:
        out_dir = dataset.preprocessed_dir(out_root, layout)
        out_dirs.append(out_dir)
        for entry in read_map(map_path):
            outputs.setdefault(entry.name, {})[layout] = out_dir / f"{entry.name}.npy"
            maps.setdefault(entry.name, []).append(map_path)
    manifests = {folder: read_manifest(folder) for folder in out_dirs}
    keys = {p: _manifest_key(p, out_dirs) for outs in outputs.values() for p in outs.values()}
    tasks = [
        _Task(name, dataset.image_dir / name, outs.get(VAL_LAYOUT), outs.get(CAL_LAYOUT),
              tuple((p, known) for p in outs.values() if (known := manifests[keys[p][0]].get(keys[p][1])) is not None))
        for name, outs in outputs.items()
    ]

    for folder in sorted({p.parent for outs in outputs.values() for p in outs.values()}):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"preprocess: cannot create output folder {folder}: {e.strerror or e}") from None

    counts = {"written": 0, "up_to_date": 0, "repaired": 0}
    failures: list[tuple[_Task, str]] = []
    bar = _Progress(len(tasks), sys.stderr, progress)
    start = time.monotonic()
    started_ns = time.time_ns()
    work = functools.partial(_process, force=force)
    workers = min(workers, len(tasks))
    try:
        if workers == 1:
            _collect(map(work, tasks), counts, failures, bar, manifests, keys)
        else:
            stop = multiprocessing.Event()
            chunksize = max(1, min(_CHUNK_MAX, len(tasks) // (workers * 4)))
            with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(stop,)) as pool:
                try:
                    _collect(pool.imap_unordered(work, tasks, chunksize), counts, failures, bar, manifests,
                             keys)
                except BaseException:
                    stop.set()
                    raise
                finally:
                    pool.close()
                    pool.join()
    except KeyboardInterrupt:
        _record_unreported(keys, manifests, started_ns)
        raise
    finally:
        bar.close()
        for folder, entries in manifests.items():
            with contextlib.suppress(OSError):  # an unwritable folder was already reported
                write_manifest(folder, entries)
    seconds = time.monotonic() - start

    summary = Summary(dataset.name, counts["written"], counts["up_to_date"], len(failures), seconds, tuple(out_dirs),
                      counts["repaired"])
    if failures:
        raise PreprocessError(_failure_message(failures, len(tasks), maps), summary)
    return summary


def _record_unreported(keys: dict[Path, tuple[Path, str]], manifests: dict[Path, dict[str, Entry]],
                       started_ns: int) -> None:
    """After an interrupt: enter the samples this run wrote whose results the workers had not sent yet.

    Workers report a chunk of images at a time, so an interrupt loses the entries of finished files;
    every output is written atomically, so one that exists and is newer than this run's start is whole.
    """
    for path, (folder, key) in keys.items():
        if key in manifests[folder]:
            continue
        with contextlib.suppress(OSError):
            if path.stat().st_mtime_ns >= started_ns:
                manifests[folder][key] = crc32_file(path)


def _manifest_key(output: Path, out_dirs: list[Path]) -> tuple[Path, str]:
    """The layout folder whose manifest records ``output``, and its key there: the path below that folder.

    A map name may hold subfolders (``n01440764/x.JPEG``); their samples are recorded in the layout
    folder's one manifest, so the arena finds them by the same relative name.
    """
    folder = next(d for d in out_dirs if d in output.parents)
    return folder, output.relative_to(folder).as_posix()


def _collect(results: Iterable[_Result], counts: dict[str, int], failures: list[tuple[_Task, str]], bar: _Progress,
             manifests: dict[Path, dict[str, Entry]], keys: dict[Path, tuple[Path, str]]) -> None:
    """Tally worker results and their checksums; an unwritable output aborts at once since every image would hit it."""
    for status, task, detail, sums in results:
        for path, entry in sums.items():
            folder, key = keys[path]
            manifests[folder][key] = entry
        if status == "write_error":
            raise UserError(f"preprocess: {detail}: check free space and permissions of the output folder")
        if status == "failed":
            failures.append((task, detail))
        elif status == "repaired":
            counts["written"] += 1
            counts["repaired"] += 1
        else:
            counts[status] += 1
        bar.update()


def _benchmarks(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    supported = ", ".join(SUPPORTED_BENCHMARKS)
    if not names:
        raise ConfigError(f"-b/--benchmarks is empty: the supported benchmark is {supported}")
    for name in names:
        if name not in SUPPORTED_BENCHMARKS:
            raise ConfigError(f"-b/--benchmarks: unsupported benchmark {name!r}: "
                              f"the supported benchmark is {supported}")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The seed's preprocess_data.py options, plus idempotency and parallelism controls."""
    paths = BuildPaths()
    parser.add_argument("-d", "--data_dir", type=Path, default=paths.data,
                        help="folder holding imagenet/ or embedded/ (default: %(default)s)")
    parser.add_argument("-o", "--preprocessed_data_dir", type=Path, default=paths.preprocessed,
                        help="output root (default: %(default)s)")
    parser.add_argument("-b", "--benchmarks", default="mobilenet",
                        help="comma-separated benchmarks to preprocess; only mobilenet is supported")
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--val_only", action="store_true", help="preprocess only the validation set")
    only.add_argument("--cal_only", action="store_true", help="preprocess only the calibration set")
    parser.add_argument("--data_maps", type=Path, default=DATA_MAPS,
                        help="folder holding imagenet/ and embedded/ val_map.txt and cal_map.txt (default: repo's)")
    parser.add_argument("--force", action="store_true", help="rewrite outputs even when newer than their source")
    parser.add_argument("-j", "--workers", type=positive_int, default=None,
                        help="worker processes (default: one per CPU core)")
    parser.add_argument("--no-progress", dest="no_progress", action="store_true",
                        help="do not draw the progress bar on stderr")


def run(args: argparse.Namespace) -> int:
    """Preprocess the dataset the build directory holds (ImageNet if present, else embedded)."""
    _benchmarks(args.benchmarks)
    dataset = resolve_dataset(BuildPaths(), data_dir=args.data_dir, maps_dir=args.data_maps)
    label = "ImageNet" if dataset.name == "imagenet" else dataset.name
    print(f"preprocess: using the {label} dataset ({dataset.image_dir})", flush=True)
    try:
        summary = preprocess(
            dataset,
            args.preprocessed_data_dir,
            val=not args.cal_only,
            cal=not args.val_only,
            workers=args.workers,
            force=args.force,
            progress=not args.no_progress,
        )
    except PreprocessError as e:
        print(e.summary.describe(), flush=True)
        raise
    print(summary.describe())
    return 0
