"""Bad input refused with one clear line before any work: the unit-level half of the fault catalogue's rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyncbench.cli import build_parser, main
from asyncbench.config import LoadGenConfig, RunConfig, Scenario
from asyncbench.data.dataset import VAL_LAYOUT, Dataset, read_map
from asyncbench.data.manifest import read_manifest
from asyncbench.data.preprocess import load_image, preprocess
from asyncbench.data.qsl import SampleArena
from asyncbench.errors import ConfigError, UserError
from asyncbench.harness.plan import check_max_batch, plan_run
from asyncbench.model.calibrate import CalibrationCache


def test_a_batch_cap_above_the_samples_or_memory_is_refused() -> None:
    check_max_batch(None, 104, None)
    check_max_batch(104, 104, 10**9)
    with pytest.raises(ConfigError, match="100000 is more than the 104 samples LoadGen loads"):
        check_max_batch(100_000, 104, None)
    with pytest.raises(ConfigError, match="more than half the .* GB of memory available"):
        check_max_batch(1024, 50_000, 10**8)  # 1024 x 200 kB x 4 buffers > 50 MB


def test_a_16_bit_png_is_scaled_not_clipped_to_white(tmp_path: Path) -> None:
    gray16 = np.linspace(0, 65535, 260 * 300).reshape(300, 260).astype(np.uint16)
    Image.fromarray(gray16).save(tmp_path / "deep.png")
    Image.fromarray(np.round(gray16 / 257).astype(np.uint8)).save(tmp_path / "plain.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    deep, plain = load_image(tmp_path / "deep.png"), load_image(tmp_path / "plain.png")
    assert np.array_equal(deep, plain) and int(deep.max()) - int(deep.min()) > 100  # not all white
    Image.fromarray(np.ones((300, 260), np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ValueError, match="floating-point pixels"):
        load_image(tmp_path / "float.tiff")


def test_random_bytes_as_the_calibration_cache_are_one_line(tmp_path: Path) -> None:
    cache = tmp_path / "calibration.cache"
    cache.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(UserError, match="is not a calibration cache this tool wrote; delete it and run"):
        CalibrationCache.load(cache)


def test_map_names_in_subfolders_work_and_escaping_ones_are_refused(tmp_path: Path) -> None:
    images = tmp_path / "data" / "imagenet"
    (images / "n01").mkdir(parents=True)
    Image.fromarray(np.full((240, 240, 3), 7, np.uint8)).save(images / "n01" / "a.png")
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / "val.txt").write_text("n01/a.png 1\n")
    dataset = Dataset("imagenet", images, maps / "val.txt", maps / "val.txt")
    preprocess(dataset, tmp_path / "out", cal=False, workers=1, progress=False)
    folder = dataset.preprocessed_dir(tmp_path / "out", VAL_LAYOUT)
    assert "n01/a.png.npy" in read_manifest(folder)
    arena = SampleArena(folder, ["n01/a.png"])
    arena.load([0])
    (folder / "n01" / "a.png.npy").write_bytes((folder / "n01" / "a.png.npy").read_bytes()[:-1] + b"\x01")
    with pytest.raises(UserError, match="does not match the checksum"):  # the subfolder's checksum is checked
        arena.load([0])
    for name in ("/etc/passwd", "../x.png", "n01/../../x.png"):
        (maps / "bad.txt").write_text(f"{name} 1\n")
        with pytest.raises(UserError, match=r"bad.txt:1: image .* must be a path inside the image folder"):
            read_map(maps / "bad.txt")


def test_a_map_with_a_byte_order_mark_or_bad_bytes_reads_or_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfa.png 1\nb.png 2\n")
    assert [e.name for e in read_map(tmp_path / "bom.txt")] == ["a.png", "b.png"]
    (tmp_path / "latin1.txt").write_bytes(b"caf\xe9.png 1\n")
    with pytest.raises(UserError, match="latin1.txt is not UTF-8 text"):
        read_map(tmp_path / "latin1.txt")


@pytest.mark.parametrize("option", ["--timeline", "--json"])
def test_an_unwritable_output_file_is_refused_before_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             option: str) -> None:
    (tmp_path / "file").write_text("x")
    for target, needle in ((tmp_path / "file" / "out.json", "is not an existing folder"),
                           (Path("/proc/out.json"), "cannot be written")):
        code = main(["run", "--engine", "null", option, str(target), "--build-dir", str(tmp_path / "build")])
        err = capsys.readouterr()
        assert code == 1 and err.err.startswith(f"error: {option} {target}") and needle in err.err, err
        assert "Traceback" not in err.err and not (tmp_path / "build").exists()  # nothing was prepared


def _result(folder: Path, record: object) -> None:
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps(record))


def test_report_skips_a_bad_result_and_refuses_an_unwritable_csv(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _result(tmp_path / "runs" / "good", {
        "latency_ns": {"p50": 1e6, "p90": 2e6, "p99": 3e6},
        "config": {"scenario": "Server", "loadgen": {"test_mode": "PerformanceOnly"}},
        "batching": {"max_batch_size": 8, "max_queue_delay_us": 100}, "engine": {"name": "null"},
        "result": {"validity": "VALID"}, "metric": {"name": "qps", "value": 10.0},
        "loadgen_effective": {"target_qps": 10.0}, "accuracy": None})
    _result(tmp_path / "runs" / "bad", {"not": "a record"})
    assert main(["report", str(tmp_path / "runs"), "--csv", str(tmp_path / "t.csv")]) == 0
    out = capsys.readouterr()
    assert out.err.startswith("warning: skipped ") and "bad" in out.err and out.out.count("\n") == 2
    assert (tmp_path / "t.csv").read_text().startswith("run,scenario")
    assert main(["report", str(tmp_path / "runs"), "--csv", "/proc/t.csv"]) == 1
    out = capsys.readouterr()
    assert out.err.startswith("error: --csv /proc/t.csv cannot be written") and "Traceback" not in out.err


def test_null_spec_with_another_engine_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["run", "--engine", "onnxruntime", "--null", "fixed_us=5", "--build-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: --null fixed_us=5 models the null engine, but --engine is onnxruntime: add --engine null, "
                   "or drop --null\n")


def test_the_source_that_makes_loadgen_generate_too_many_queries_is_named(tmp_path: Path) -> None:
    conf = tmp_path / "user.conf"
    conf.write_text("mobilenet.Server.min_query_count = 100000000000\n")
    cfg = RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=100.0, user_conf=conf))
    with pytest.raises(ConfigError, match=r"^min_query_count from user.conf would make LoadGen generate 1e\+11 "
                                          r"queries .*: lower min_query_count$"):
        plan_run(cfg, 104, None, {}, available=10**10)
    with pytest.raises(ConfigError, match=r"^target QPS from command line would make"):
        plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=1e12)), 104, None, {}, available=10**10)


def test_a_short_min_duration_that_the_query_count_overrides_is_said() -> None:
    plan = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=100.0, min_duration_s=1.0)), 104, None, {})
    assert ("this run will take about 10 s, not the 1 s minimum duration: 1024 queries (min_query_count) at "
            "100 QPS set its length") in plan.notes, plan.notes
    plan = plan_run(RunConfig(Scenario.SERVER, LoadGenConfig(target_qps=10_000.0, min_duration_s=1.0)), 104, None, {})
    assert not any("set its length" in note for note in plan.notes)


def test_tune_help_lists_only_the_options_tune_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--help"])
    shown = capsys.readouterr().out
    assert "--trial-duration" in shown and "--max-batch-size" in shown and "--null" in shown
    for ignored in ("--json", "--timeline", "--nvtx", "--config", "--min-duration", "--trace", "--submission-length",
                    "--audit-config", "--test-mode", "--log-dir", "--target-qps"):
        assert ignored not in shown, ignored
    assert main(["tune", "--scenario", "Server", "--json", "x.json"]) == 2
    assert "unrecognized arguments: --json x.json" in capsys.readouterr().err
    assert main(["tune", "--scenario", "Server", "--target-qps", "5"]) == 2
    assert "give --start-qps for its first trial" in capsys.readouterr().err
