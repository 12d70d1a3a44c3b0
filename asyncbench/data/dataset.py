"""Which images a run uses: the real ImageNet set when present, else the embedded photos.

A dataset is a folder of images plus two maps (``name label`` per line, label -1 for an
unlabelled photo). Preprocessed samples land under
``<preprocessed>/<dataset>/MobileNet/{int8_nhwc4,fp32_nchw}/<image name>.npy``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from asyncbench.errors import UserError
from asyncbench.paths import DATA_MAPS, BuildPaths

UNLABELLED = -1
VAL_LAYOUT = "int8_nhwc4"
CAL_LAYOUT = "fp32_nchw"


@dataclass(frozen=True)
class MapEntry:
    """One line of a data map."""

    name: str
    label: int


@dataclass(frozen=True)
class Dataset:
    """An image folder with its validation and calibration maps."""

    name: str
    image_dir: Path
    val_map: Path
    cal_map: Path

    def preprocessed_dir(self, preprocessed_root: Path, layout: str) -> Path:
        """Folder of the per-image .npy files for one layout."""
        return preprocessed_root / self.name / "MobileNet" / layout


def read_map(path: Path) -> list[MapEntry]:
    """Parse a data map; a malformed line is a UserError naming file and line."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark would become part of the first name
    except FileNotFoundError:
        raise UserError(f"data map {path} does not exist: restore it or pass the right path") from None
    except OSError as e:
        raise UserError(f"cannot read data map {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"data map {path} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    entries: list[MapEntry] = []
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise UserError(f"{path}:{lineno}: expected '<image name> <label>', got {line.strip()!r}")
        name, label_text = parts
        if PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts or "\\" in name:
            raise UserError(f"{path}:{lineno}: image {name!r} must be a path inside the image folder "
                            f"(no leading /, no '..', '/' between folders)")
        try:
            label = int(label_text)
        except ValueError:
            raise UserError(f"{path}:{lineno}: label {label_text!r} is not an integer class id") from None
        if label != UNLABELLED and not 0 <= label < 1000:
            raise UserError(f"{path}:{lineno}: label {label} is outside the ImageNet classes 0..999 "
                            f"(or -1 for unlabelled)")
        if name in seen:
            raise UserError(f"{path}:{lineno}: image {name!r} is listed twice")
        seen.add(name)
        entries.append(MapEntry(name, label))
    if not entries:
        raise UserError(f"data map {path} lists no images")
    return entries


def resolve_dataset(paths: BuildPaths, data_dir: Path | None = None, maps_dir: Path = DATA_MAPS) -> Dataset:
    """The real ImageNet set if ``<data>/imagenet`` exists, else the embedded photos."""
    data = data_dir if data_dir is not None else paths.data
    name = "imagenet" if (data / "imagenet").is_dir() else "embedded"
    return Dataset(name, data / name, maps_dir / name / "val_map.txt", maps_dir / name / "cal_map.txt")


def require_preprocessed(folder: Path, names: list[str], flag: str, preprocessed: Path = Path("build/preprocessed_data")
                         ) -> None:
    """A one-line UserError naming the first missing sample and the preprocess command that makes it."""
    missing = [n for n in names if not (folder / f"{n}.npy").is_file()]
    if missing:
        first = folder / f"{missing[0]}.npy"
        raise UserError(f"{len(missing)} of {len(names)} samples are not preprocessed (first: {first}): "
                        f"run `python3 scripts/preprocess_data.py -d build/data -o {preprocessed} -b mobilenet {flag}`")
