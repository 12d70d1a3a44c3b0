"""The seed harness's three workflows, driven through the real command line."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import run_cli, tiny_sym_no_bn

from asyncbench.model.calibrate import CalibrationCache
from asyncbench.paths import BuildPaths

PHOTOS = {"ILSVRC2012_val_00000001.JPEG": ("skimage_chelsea.png", 281),
          "ILSVRC2012_val_00000002.JPEG": ("skimage_coffee.png", 967),
          "ILSVRC2012_val_00000003.JPEG": ("skimage_rocket.jpg", 657),
          "ILSVRC2012_val_00000004.JPEG": ("skimage_motorcycle_left.png", 665)}


def _imagenet(paths: BuildPaths, maps: Path, cal: list[str]) -> None:
    """A small 'real ImageNet' layout: images under <build>/data/imagenet and edited maps."""
    images = paths.data / "imagenet"
    images.mkdir(parents=True)
    for name, (src, _) in PHOTOS.items():
        shutil.copy(paths.embedded_images / src, images / name)
    (maps / "imagenet").mkdir(parents=True)
    (maps / "imagenet" / "val_map.txt").write_text("".join(f"{n}\t{lab}\n" for n, (_, lab) in PHOTOS.items()))
    (maps / "imagenet" / "cal_map.txt").write_text("".join(f"{n}\t{PHOTOS[n][1]}\n" for n in cal))


def _preprocess(paths: BuildPaths, maps: Path, only: str) -> None:
    done = run_cli("scripts/preprocess_data.py", "-d", str(paths.data), "-o", str(paths.preprocessed),
                   "-b", "mobilenet", only, "--data_maps", str(maps), "--no-progress")
    assert done.returncode == 0, done.stderr


def test_new_weights_flow(tmp_build: BuildPaths) -> None:
    """Drop NVIDIA-contract weights in, calibrate, run; running before calibrating is refused."""
    root = str(tmp_build.root)
    first = run_cli("calibrate", "--build-dir", root)
    assert first.returncode == 0, first.stderr
    tiny_sym_no_bn(tmp_build.sym_no_bn_model)
    stale = run_cli("evaluate", "--build-dir", root)
    assert stale.returncode == 1
    assert stale.stderr.count("\n") == 1 and "another model" in stale.stderr and "Traceback" not in stale.stderr
    calibrated = run_cli("calibrate", "--build-dir", root)
    assert calibrated.returncode == 0, calibrated.stderr
    assert CalibrationCache.load(tmp_build.calibration_cache).profile == "mobilenet_sym_no_bn"
    ran = run_cli("evaluate", "--build-dir", root)
    assert ran.returncode == 0, ran.stderr
    assert "int8: accuracy=" in ran.stdout and "fp32: accuracy=" in ran.stdout


def test_new_validation_set_flow(tmp_build: BuildPaths, calibrated: BuildPaths, tmp_path: Path) -> None:
    """Images under build/data/imagenet, an edited val_map, preprocess --val_only, run."""
    shutil.copy(calibrated.calibration_cache, tmp_build.calibration_cache)
    maps = tmp_path / "maps"
    _imagenet(tmp_build, maps, cal=list(PHOTOS)[:2])
    _preprocess(tmp_build, maps, "--val_only")
    args = ("evaluate", "--build-dir", str(tmp_build.root), "--data-maps", str(maps))
    ran = run_cli(*args)
    assert ran.returncode == 0, ran.stderr
    assert "dataset imagenet" in ran.stdout
    assert "int8: accuracy=100.000%, good=4, total=4" in ran.stdout
    assert "fp32: accuracy=100.000%, good=4, total=4" in ran.stdout
    val = maps / "imagenet" / "val_map.txt"
    val.write_text(val.read_text().replace("\t967", "\t968"))  # a relabelled image now counts as wrong
    again = run_cli(*args)
    assert "int8: accuracy=75.000%, good=3, total=4" in again.stdout


def test_new_calibration_set_flow(tmp_build: BuildPaths, tmp_path: Path) -> None:
    """Edit cal_map, preprocess --cal_only, calibrate: the cache reflects the new set."""
    maps = tmp_path / "maps"
    _imagenet(tmp_build, maps, cal=list(PHOTOS)[:3])
    _preprocess(tmp_build, maps, "--cal_only")
    done = run_cli("calibrate", "--build-dir", str(tmp_build.root), "--data-maps", str(maps), "--method", "minmax")
    assert done.returncode == 0, done.stderr
    cache = CalibrationCache.load(tmp_build.calibration_cache)
    assert (cache.samples, cache.method) == (3, "minmax")
    assert tmp_build.int8_model.is_file()


def test_run_without_preprocessed_calibration_data_names_the_fix(tmp_build: BuildPaths, tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    _imagenet(tmp_build, maps, cal=list(PHOTOS)[:1])
    (tmp_build.data / "imagenet" / "ILSVRC2012_val_00000001.JPEG").unlink()
    done = run_cli("calibrate", "--build-dir", str(tmp_build.root), "--data-maps", str(maps))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "ILSVRC2012_val_00000001.JPEG" in done.stderr
