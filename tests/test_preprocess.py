"""MobileNet preprocessing: pixel values, layouts, idempotency, bad images and the seed CLI."""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyncbench.data import preprocess as pp
from asyncbench.data.dataset import CAL_LAYOUT, VAL_LAYOUT, Dataset
from asyncbench.data.manifest import MANIFEST
from asyncbench.errors import ConfigError, UserError
from asyncbench.paths import DATA_MAPS, REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "preprocess_data.py"


def _noise(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    """A random image: any resize or crop mistake changes its pixels."""
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4}[mode]
    return Image.fromarray(rng.integers(0, 256, (height, width, channels), dtype=np.uint8), mode)


def _reference(image: Image.Image) -> np.ndarray:
    """Independent reference: exact-fraction target size, numpy-slice crop, int32 arithmetic."""
    rgb = image.convert("RGB")
    w, h = rgb.size
    scale = Fraction(256, min(w, h))
    new_w, new_h = round(w * scale), round(h * scale)
    arr = np.asarray(rgb.resize((new_w, new_h), Image.BILINEAR)).astype(np.int32)
    y0, x0 = (new_h - 224) // 2, (new_w - 224) // 2
    return arr[y0:y0 + 224, x0:x0 + 224, :] - 128


def _dataset(tmp_path: Path, images: dict[str, Image.Image | bytes | None], val: list[str], cal: list[str],
             name: str = "imagenet") -> Dataset:
    """A dataset in tmp_path: None means the image is listed but absent, bytes are written verbatim."""
    image_dir = tmp_path / "data" / name
    image_dir.mkdir(parents=True)
    for file_name, content in images.items():
        if isinstance(content, bytes):
            (image_dir / file_name).write_bytes(content)
        elif content is not None:
            content.save(image_dir / file_name, format="PNG" if file_name.endswith(".png") else "JPEG")
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "val_map.txt").write_text("".join(f"{n}\t{i % 1000}\n" for i, n in enumerate(val)))
    (maps / "cal_map.txt").write_text("".join(f"{n}\t-1\n" for n in cal))
    return Dataset(name, image_dir, maps / "val_map.txt", maps / "cal_map.txt")


def _outputs(dataset: Dataset, out: Path, layout: str) -> dict[str, Path]:
    folder = dataset.preprocessed_dir(out, layout)
    return {p.name[: -len(".npy")]: p for p in folder.glob("*.npy")}


def _args(**overrides: object) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    pp.add_arguments(parser)
    args = parser.parse_args(["--no-progress"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


# --- pixels ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(300, 500), (640, 480), (224, 300), (512, 513), (1000, 230)])
def test_load_image_matches_independent_reference(tmp_path: Path, size: tuple[int, int]) -> None:
    image = _noise(*size, seed=size[0])
    path = tmp_path / "x.png"
    image.save(path)
    got = pp.load_image(path)
    assert got.shape == (224, 224, 3) and got.dtype == np.int8
    np.testing.assert_array_equal(got.astype(np.int32), _reference(image))


def test_short_side_256_is_a_plain_centre_crop(tmp_path: Path) -> None:
    """At 256x256 no resampling happens, so the output is the source's central 224 square minus 128."""
    image = _noise(256, 256, seed=7)
    image.save(tmp_path / "x.png")
    src = np.asarray(image).astype(np.int32)
    np.testing.assert_array_equal(pp.load_image(tmp_path / "x.png").astype(np.int32), src[16:240, 16:240] - 128)


def test_values_span_full_int8_range(tmp_path: Path) -> None:
    for value, expected in [(0, -128), (128, 0), (255, 127)]:
        Image.new("RGB", (333, 257), (value, value, value)).save(tmp_path / "c.png")
        assert np.all(pp.load_image(tmp_path / "c.png") == expected)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("L", (300, 400), 200), (72, 72, 72)),
        (Image.new("RGBA", (400, 300), (10, 20, 30, 0)), (-118, -108, -98)),
        (Image.new("LA", (300, 300), (50, 255)), (-78, -78, -78)),
    ],
    ids=["grayscale", "rgba", "gray-alpha"],
)
def test_other_modes_become_rgb(tmp_path: Path, image: Image.Image, expected: tuple[int, int, int]) -> None:
    image.save(tmp_path / "x.png")
    got = pp.load_image(tmp_path / "x.png")
    assert got.shape == (224, 224, 3)
    assert np.all(got == np.array(expected, dtype=np.int8))


def test_palette_image_becomes_rgb(tmp_path: Path) -> None:
    image = Image.new("P", (320, 240), 1)
    image.putpalette([0, 0, 0, 255, 0, 64] + [0] * 762)
    image.save(tmp_path / "p.png")
    assert np.all(pp.load_image(tmp_path / "p.png") == np.array([127, -128, -64], dtype=np.int8))


def test_layouts(tmp_path: Path) -> None:
    _noise(300, 500).save(tmp_path / "x.png")
    x = pp.load_image(tmp_path / "x.png")
    nhwc4 = pp.to_nhwc4(x)
    assert nhwc4.shape == (224, 224, 4) and nhwc4.dtype == np.int8 and nhwc4.nbytes == 200_704
    assert not nhwc4[:, :, 3].any()
    np.testing.assert_array_equal(nhwc4[:, :, :3], x)
    nchw = pp.to_fp32_nchw(x)
    assert nchw.shape == (3, 224, 224) and nchw.dtype == np.float32 and nchw.flags.c_contiguous
    for c in range(3):
        np.testing.assert_array_equal(nchw[c], x[:, :, c].astype(np.float32))


# --- preprocess() ---------------------------------------------------------------------------------------------------


def test_preprocess_writes_both_layouts(tmp_path: Path) -> None:
    images = {"a.JPEG": _noise(300, 500, 1), "b.png": _noise(640, 480, 2), "c.png": _noise(256, 300, 3)}
    ds = _dataset(tmp_path, images, val=["a.JPEG", "b.png", "c.png"], cal=["c.png", "a.JPEG"])
    out = tmp_path / "out"
    summary = pp.preprocess(ds, out, workers=2, progress=False)
    assert (summary.written, summary.up_to_date, summary.failed) == (3, 0, 0)
    assert summary.output_dirs == (ds.preprocessed_dir(out, VAL_LAYOUT), ds.preprocessed_dir(out, CAL_LAYOUT))
    assert "3 written" in summary.describe() and "\n" not in summary.describe()

    val, cal = _outputs(ds, out, VAL_LAYOUT), _outputs(ds, out, CAL_LAYOUT)
    assert sorted(val) == ["a.JPEG", "b.png", "c.png"] and sorted(cal) == ["a.JPEG", "c.png"]
    for name, path in val.items():
        stored = np.load(path)
        assert stored.dtype == np.int8 and stored.shape == (224, 224, 4) and stored.nbytes == 200_704
        assert not stored[:, :, 3].any()
        np.testing.assert_array_equal(stored[:, :, :3], pp.load_image(ds.image_dir / name))
    for name, path in cal.items():
        stored = np.load(path)
        assert stored.dtype == np.float32 and stored.shape == (3, 224, 224)
        np.testing.assert_array_equal(stored, np.load(val[name])[:, :, :3].transpose(2, 0, 1).astype(np.float32))
    assert not list(out.rglob("*.tmp"))


def test_single_worker_matches_pool(tmp_path: Path) -> None:
    images = {f"{i}.png": _noise(300 + 20 * i, 260, i) for i in range(5)}
    ds = _dataset(tmp_path, images, val=list(images), cal=[])
    pp.preprocess(ds, tmp_path / "one", cal=False, workers=1, progress=False)
    pp.preprocess(ds, tmp_path / "two", cal=False, workers=2, progress=False)
    for name in images:
        a = (ds.preprocessed_dir(tmp_path / "one", VAL_LAYOUT) / f"{name}.npy").read_bytes()
        b = (ds.preprocessed_dir(tmp_path / "two", VAL_LAYOUT) / f"{name}.npy").read_bytes()
        assert a == b


def test_idempotent_and_force(tmp_path: Path) -> None:
    images = {"a.png": _noise(300, 260, 1), "b.png": _noise(280, 300, 2)}
    ds = _dataset(tmp_path, images, val=["a.png", "b.png"], cal=["b.png"])
    out = tmp_path / "out"
    assert pp.preprocess(ds, out, workers=2, progress=False).written == 2
    files = list(out.rglob("*.npy"))
    before = {p: p.stat().st_mtime_ns for p in files}

    again = pp.preprocess(ds, out, workers=2, progress=False)
    assert (again.written, again.up_to_date) == (0, 2)
    assert {p: p.stat().st_mtime_ns for p in files} == before

    newer = max(before.values()) + 10**9
    os.utime(ds.image_dir / "a.png", ns=(newer, newer))
    touched = pp.preprocess(ds, out, workers=1, progress=False)
    assert (touched.written, touched.up_to_date) == (1, 1)

    forced = pp.preprocess(ds, out, workers=2, force=True, progress=False)
    assert (forced.written, forced.up_to_date) == (2, 0)


def test_missing_and_corrupt_images_are_named_and_others_written(tmp_path: Path) -> None:
    good = {"good1.png": _noise(300, 400, 1), "good2.png": _noise(500, 300, 2)}
    jpeg = io.BytesIO()
    _noise(400, 300, 3).save(jpeg, format="JPEG")
    images = {
        "good1.png": good["good1.png"],
        "missing.JPEG": None,
        "garbage.JPEG": b"this is not an image",
        "truncated.JPEG": jpeg.getvalue()[:2000],
        "good2.png": good["good2.png"],
    }
    order = ["good1.png", "missing.JPEG", "garbage.JPEG", "truncated.JPEG", "good2.png"]
    ds = _dataset(tmp_path, images, val=order, cal=["good2.png"])
    out = tmp_path / "out"
    with pytest.raises(pp.PreprocessError) as info:
        pp.preprocess(ds, out, workers=2, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("preprocess: 3 of 5 images failed (")
    assert f"{ds.image_dir / 'missing.JPEG'}: missing" in message
    assert f"{ds.image_dir / 'garbage.JPEG'}: not a readable image" in message
    assert f"{ds.image_dir / 'truncated.JPEG'}: corrupt image" in message
    assert message.endswith(f"remove them from {ds.val_map}")
    assert isinstance(info.value, UserError)
    summary = info.value.summary
    assert (summary.written, summary.failed) == (2, 3)

    val = _outputs(ds, out, VAL_LAYOUT)
    assert sorted(val) == ["good1.png", "good2.png"]
    for name, image in good.items():
        np.testing.assert_array_equal(np.load(val[name])[:, :, :3].astype(np.int32), _reference(image))
    assert sorted(_outputs(ds, out, CAL_LAYOUT)) == ["good2.png"]


def test_failure_listing_is_capped(tmp_path: Path) -> None:
    names = [f"gone{i}.JPEG" for i in range(6)]
    ds = _dataset(tmp_path, dict.fromkeys(names), val=names, cal=names[:1])
    with pytest.raises(UserError) as info:
        pp.preprocess(ds, tmp_path / "out", workers=1, progress=False)
    message = str(info.value)
    assert "6 of 6 images failed" in message and "; and 3 more)" in message
    assert message.count(": missing") == 3
    assert message.endswith(f"remove them from {ds.cal_map} and {ds.val_map}")


def test_interrupted_write_keeps_previous_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(tmp_path, {"a.png": _noise(300, 300)}, val=["a.png"], cal=[])
    out = tmp_path / "out"
    pp.preprocess(ds, out, cal=False, workers=1, progress=False)
    target = ds.preprocessed_dir(out, VAL_LAYOUT) / "a.png.npy"
    original = target.read_bytes()

    def half_then_interrupt(f: io.BufferedWriter, array: np.ndarray) -> None:
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(pp.np, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        pp.preprocess(ds, out, cal=False, workers=1, force=True, progress=False)
    assert target.read_bytes() == original
    assert [p.name for p in target.parent.iterdir() if p.name != MANIFEST] == ["a.png.npy"]


def test_unwritable_output_is_one_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ds = _dataset(tmp_path, {"a.png": _noise(300, 300)}, val=["a.png"], cal=[])

    def no_space(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pp.os, "replace", no_space)
    with pytest.raises(UserError, match=r"cannot write .*a\.png\.npy: No space left on device"):
        pp.preprocess(ds, tmp_path / "out", cal=False, workers=1, progress=False)
    assert not list((tmp_path / "out").rglob("*.tmp"))


def test_missing_image_folder(tmp_path: Path) -> None:
    embedded = Dataset("embedded", tmp_path / "embedded", DATA_MAPS / "embedded" / "val_map.txt",
                       DATA_MAPS / "embedded" / "cal_map.txt")
    with pytest.raises(UserError, match=r"embedded photos are not extracted yet.*python -m asyncbench prepare"):
        pp.preprocess(embedded, tmp_path / "out", progress=False)
    imagenet = Dataset("imagenet", tmp_path / "imagenet", embedded.val_map, embedded.cal_map)
    with pytest.raises(UserError, match=f"image folder {tmp_path / 'imagenet'} does not exist"):
        pp.preprocess(imagenet, tmp_path / "out", progress=False)


def test_progress_bar_text_and_tty() -> None:
    plain = io.StringIO()
    bar = pp._Progress(50, plain, enabled=True)
    for _ in range(50):
        bar.update()
    bar.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].split()[2] == "50/50" and "img/s" in lines[-1] and "ETA" in lines[-1]

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = pp._Progress(1000, tty, enabled=True)
    for _ in range(1000):
        bar.update()
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\r") and text.endswith("\n")
    assert text.count("\r") <= 3  # redraws are rate-limited, not one per image
    assert text.rstrip("\n").rsplit("\r", 1)[-1].split()[2] == "1000/1000"

    quiet = io.StringIO()
    bar = pp._Progress(5, quiet, enabled=False)
    bar.update()
    bar.close()
    assert quiet.getvalue() == ""


# --- CLI ------------------------------------------------------------------------------------------------------------


def test_run_val_only_and_cal_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    (data / "imagenet").mkdir(parents=True)
    ds = _dataset(tmp_path / "t", {"a.png": _noise(300, 300, 1), "b.png": _noise(260, 400, 2)},
                  val=["a.png"], cal=["b.png"])
    monkeypatch.setattr(pp, "resolve_dataset", lambda paths, data_dir, maps_dir: ds)

    assert pp.run(_args(data_dir=data, preprocessed_data_dir=tmp_path / "v", val_only=True)) == 0
    assert sorted(_outputs(ds, tmp_path / "v", VAL_LAYOUT)) == ["a.png"]
    assert not ds.preprocessed_dir(tmp_path / "v", CAL_LAYOUT).exists()

    assert pp.run(_args(data_dir=data, preprocessed_data_dir=tmp_path / "c", cal_only=True)) == 0
    assert sorted(_outputs(ds, tmp_path / "c", CAL_LAYOUT)) == ["b.png"]
    assert not ds.preprocessed_dir(tmp_path / "c", VAL_LAYOUT).exists()

    stdout = capsys.readouterr().out.splitlines()
    assert stdout[0] == f"preprocess: using the ImageNet dataset ({ds.image_dir})"
    assert stdout[1].startswith("preprocess: imagenet: 1 written, 0 up to date, 0 failed")


def test_val_only_and_cal_only_are_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    pp.add_arguments(parser)
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--val_only", "--cal_only"])
    assert info.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["-j", "0"])
    args = parser.parse_args([])
    assert (args.data_dir, args.preprocessed_data_dir, args.benchmarks) == (
        Path("build/data"), Path("build/preprocessed_data"), "mobilenet")


@pytest.mark.parametrize("value", ["resnet", "mobilenet,ssd-small", ""])
def test_bad_benchmark_is_usage_error(value: str) -> None:
    with pytest.raises(ConfigError, match="supported benchmark is mobilenet"):
        pp.run(_args(benchmarks=value))


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, check=False)


def test_script_embedded_end_to_end(tmp_path: Path) -> None:
    """The seed command line on a stand-in embedded folder (tiny images under the real map's names)."""
    embedded = tmp_path / "data" / "embedded"
    embedded.mkdir(parents=True)
    names = [line.split()[0] for line in (DATA_MAPS / "embedded" / "val_map.txt").read_text().splitlines()]
    for i, name in enumerate(names):
        Image.new("RGB", (40 + i % 7, 30), (i, 2 * i % 256, 100)).save(embedded / name, format="PNG")
    out = tmp_path / "out"
    result = _script("-d", str(tmp_path / "data"), "-o", str(out), "-b", "mobilenet", "--val_only", "-j", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("preprocess: using the embedded dataset")
    assert lines[-1].startswith(f"preprocess: embedded: {len(names)} written")
    val_dir = out / "embedded" / "MobileNet" / VAL_LAYOUT
    assert len(list(val_dir.glob("*.npy"))) == len(names)
    assert np.all(np.load(val_dir / f"{names[5]}.npy")[0, 0] == np.array([5 - 128, 10 - 128, -28, 0], np.int8))
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["-b", "resnet"], 2, "supported benchmark is mobilenet"),
        (["--no-progress"], 1, "python -m asyncbench prepare"),
    ],
    ids=["bad-benchmark", "no-photos"],
)
def test_script_errors_are_one_line(tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    result = _script("-d", str(tmp_path / "nothing"), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_script_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("preprocess_data_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "run", interrupted)
    assert script.main(["--no-progress"]) == 130
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: interrupted")


def test_script_sigterm_keeps_the_finished_samples_in_the_manifest(tmp_path: Path) -> None:
    """SIGTERM (as `timeout` sends it) mid-run: every sample written so far is recorded, so a rerun keeps it."""
    import signal
    import time

    from asyncbench.data.manifest import read_manifest

    embedded = tmp_path / "data" / "embedded"
    embedded.mkdir(parents=True)
    buffer = io.BytesIO()
    Image.effect_noise((1400, 1400), 60).convert("RGB").save(buffer, format="PNG")
    names = [line.split()[0] for line in (DATA_MAPS / "embedded" / "val_map.txt").read_text().splitlines()]
    for name in names:
        (embedded / name).write_bytes(buffer.getvalue())
    out = tmp_path / "out"
    val_dir = out / "embedded" / "MobileNet" / VAL_LAYOUT
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "-d", str(tmp_path / "data"), "-o", str(out), "-b",
                             "mobilenet", "--val_only", "-j", "2", "--no-progress"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while len(list(val_dir.glob("*.npy"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    written = {p.name.removesuffix(".npy") for p in val_dir.glob("*.npy")}
    if proc.returncode == 0:
        pytest.skip("preprocessing finished before the signal arrived")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert written and set(read_manifest(val_dir)) >= {f"{n}.npy" for n in written}
