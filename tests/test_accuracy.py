"""The accuracy checker: MLCommons' scoring rules, its output line, and one-line errors."""

from __future__ import annotations

import argparse
import array
import json
from pathlib import Path

import mlperf_loadgen as lg
import numpy as np
import pytest

from asyncbench.errors import UserError
from asyncbench.loadgen.accuracy import AccuracyResult, add_arguments, compute_accuracy, load_accuracy_log, run


def _hex(value: float, dtype: str = "int32") -> str:
    return np.array([value], dtype).tobytes().hex().upper()  # LoadGen writes upper-case hex


def _record(seq: int, idx: int, value: float, dtype: str = "int32") -> dict:
    return {"seq_id": seq, "qsl_idx": idx, "data": _hex(value, dtype)}


def _write(path: Path, payload: object) -> Path:
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture
def val_map(tmp_path: Path) -> Path:
    # Index 3 is an unlabelled photo.
    return _write(tmp_path / "val_map.txt", "a.jpg 10\nb.jpg 20\nc.jpg 30\nd.jpg -1\ne.jpg 999\n")


def test_counts_first_occurrence_only() -> None:
    records = [_record(0, 0, 10), _record(1, 1, 21), _record(2, 0, 99), _record(3, 1, 20)]
    result = compute_accuracy(records, [10, 20])
    # MLCommons scores the first response for an index and skips the later ones.
    assert result == AccuracyResult(good=1, total=2, unlabelled=0, duplicates=2)
    assert result.line() == "accuracy=50.000%, good=1, total=2"


def test_unlabelled_samples_are_excluded_from_total() -> None:
    records = [_record(0, 0, 10), _record(1, 1, 5), _record(2, 2, 7), _record(3, 1, 5)]
    result = compute_accuracy(records, [10, -1, 30])
    assert result == AccuracyResult(good=1, total=2, unlabelled=1, duplicates=1)
    assert result.line() == "accuracy=50.000%, good=1, total=2"


def test_line_has_three_decimals() -> None:
    assert AccuracyResult(good=2, total=3, unlabelled=0, duplicates=0).line() == "accuracy=66.667%, good=2, total=3"
    assert AccuracyResult(good=3, total=3, unlabelled=0, duplicates=0).line() == "accuracy=100.000%, good=3, total=3"


def test_no_labelled_samples_says_so() -> None:
    result = compute_accuracy([_record(0, 0, 4)], [-1])
    assert result.accuracy is None
    assert result.line() == "accuracy=n/a (no labelled samples), good=0, total=0"


def test_float32_element_zero_is_truncated_like_the_reference() -> None:
    data = np.array([20.9, 3.0], np.float32).tobytes().hex()
    result = compute_accuracy([{"seq_id": 0, "qsl_idx": 1, "data": data}], [0, 20], dtype="float32")
    assert (result.good, result.total) == (1, 1)


def test_int64_responses() -> None:
    result = compute_accuracy([_record(0, 0, 999, "int64")], [999], dtype="int64")
    assert (result.good, result.total) == (1, 1)


def test_only_element_zero_counts() -> None:
    data = np.array([7, 10], np.int32).tobytes().hex()
    assert compute_accuracy([{"seq_id": 0, "qsl_idx": 0, "data": data}], [10]).good == 0


def test_run_prints_line_and_unlabelled_note(tmp_path: Path, val_map: Path, capsys: pytest.CaptureFixture) -> None:
    log = _write(
        tmp_path / "mlperf_log_accuracy.json",
        [_record(0, 0, 10), _record(1, 3, 1), _record(2, 4, 999), _record(3, 2, 31), _record(4, 0, 10)],
    )
    assert run(_args("--mlperf-accuracy-file", str(log), "--val-map", str(val_map))) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "accuracy=66.667%, good=2, total=3"
    assert lines[1].startswith("skipped 1 unlabelled samples")
    assert len(lines) == 2


def test_run_prints_one_line_without_unlabelled(tmp_path: Path, val_map: Path, capsys: pytest.CaptureFixture) -> None:
    log = _write(tmp_path / "acc.json", [_record(0, 1, 20)])
    assert run(_args("--mlperf-accuracy-file", str(log), "--val-map", str(val_map))) == 0
    assert capsys.readouterr().out == "accuracy=100.000%, good=1, total=1\n"


def test_dtype_option(tmp_path: Path, val_map: Path, capsys: pytest.CaptureFixture) -> None:
    log = _write(tmp_path / "acc.json", [_record(0, 0, 10.0, "float32")])
    assert run(_args("--mlperf-accuracy-file", str(log), "--val-map", str(val_map), "--dtype", "float32")) == 0
    assert capsys.readouterr().out.startswith("accuracy=100.000%")
    assert _args("--mlperf-accuracy-file", "x", "--val-map", "y").dtype == "int32"
    with pytest.raises(SystemExit):
        _args("--mlperf-accuracy-file", "x", "--val-map", "y", "--dtype", "uint8")


def test_scores_a_real_loadgen_accuracy_log(tmp_path: Path) -> None:
    """LoadGen's own writer produces what load_accuracy_log and compute_accuracy read."""
    count = 12
    labels = [i * 37 % 1000 for i in range(count)]

    def issue(queries: list) -> None:
        buffers, responses = [], []
        for q in queries:
            predicted = labels[q.index] if q.index % 3 else 0  # every third sample wrong (labels[0] is 0)
            buf = array.array("B", np.array([predicted], np.int32).tobytes())
            buffers.append(buf)
            responses.append(lg.QuerySampleResponse(q.id, buf.buffer_info()[0], len(buf)))
        lg.QuerySamplesComplete(responses)

    sut = lg.ConstructSUT(issue, lambda: None)
    qsl = lg.ConstructQSL(count, count, lambda samples: None, lambda samples: None)
    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Offline
    settings.mode = lg.TestMode.AccuracyOnly
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(tmp_path)
    log_settings.log_output.copy_summary_to_stdout = False
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
    finally:
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    records = load_accuracy_log(tmp_path / "mlperf_log_accuracy.json")
    result = compute_accuracy(records, labels)
    wrong = len([i for i in range(1, count) if i % 3 == 0])  # index 0 answers 0, which is right
    assert result.total == count
    assert result.good == count - wrong


def _user_error(call, *args: object) -> str:
    with pytest.raises(UserError) as info:
        call(*args)
    message = str(info.value)
    assert message and "\n" not in message
    return message


def test_missing_log(tmp_path: Path, val_map: Path) -> None:
    message = _user_error(run, _args("--mlperf-accuracy-file", str(tmp_path / "nope.json"), "--val-map", str(val_map)))
    assert "nope.json does not exist" in message


def test_missing_val_map(tmp_path: Path) -> None:
    log = _write(tmp_path / "acc.json", [_record(0, 0, 1)])
    message = _user_error(run, _args("--mlperf-accuracy-file", str(log), "--val-map", str(tmp_path / "none.txt")))
    assert "none.txt does not exist" in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('[\n{ "seq_id" : 0, "qsl_idx" : 0, "data" : "0A000000" },\n', "is not valid JSON"),
        ("", "is not valid JSON"),
        ('{"qsl_idx": 0, "data": "00"}', "expected a JSON list of LoadGen records, found a JSON dict"),
        ("[]", "holds no responses"),
    ],
)
def test_malformed_log_files(tmp_path: Path, content: str, expected: str) -> None:
    assert expected in _user_error(load_accuracy_log, _write(tmp_path / "acc.json", content))


def test_binary_log_file(tmp_path: Path) -> None:
    path = tmp_path / "acc.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not text" in _user_error(load_accuracy_log, path)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ([1, 2], "is not a LoadGen accuracy record"),
        ({"seq_id": 0, "data": "00000000"}, "is not a LoadGen accuracy record"),
        ({"seq_id": 0, "qsl_idx": "0", "data": "00000000"}, "expected an integer"),
        ({"seq_id": 0, "qsl_idx": True, "data": "00000000"}, "expected an integer"),
        ({"seq_id": 0, "qsl_idx": 5, "data": "00000000"}, "qsl_idx 5 but the val map lists 5 images (0..4)"),
        ({"seq_id": 0, "qsl_idx": -1, "data": "00000000"}, "qsl_idx -1 but the val map lists 5 images"),
        ({"seq_id": 0, "qsl_idx": 0, "data": "zz000000"}, "is not hex"),
        ({"seq_id": 0, "qsl_idx": 0, "data": 10}, "expected a hex string"),
        ({"seq_id": 0, "qsl_idx": 0, "data": ""}, "has empty data"),
        ({"seq_id": 0, "qsl_idx": 0, "data": "0A0000"}, "3 response bytes, not a whole number of int32 values"),
    ],
)
def test_bad_records(record: object, expected: str) -> None:
    message = _user_error(compute_accuracy, [_record(0, 1, 20), record], [10, 20, 30, -1, 999])
    assert expected in message
    assert "record 1" in message


def test_nan_float_response() -> None:
    record = {"seq_id": 0, "qsl_idx": 0, "data": np.array([np.nan], np.float32).tobytes().hex()}
    assert "not a class id" in _user_error(compute_accuracy, [record], [1], "float32")


def test_error_names_the_log_file(tmp_path: Path, val_map: Path) -> None:
    log = _write(tmp_path / "acc.json", [{"seq_id": 0, "qsl_idx": 9, "data": "00000000"}])
    message = _user_error(run, _args("--mlperf-accuracy-file", str(log), "--val-map", str(val_map)))
    assert message.startswith(f"{log}: record 0 has qsl_idx 9")


def test_duplicates_are_not_decoded_like_the_reference() -> None:
    # MLCommons skips a repeated qsl_idx before looking at its data.
    result = compute_accuracy([_record(0, 0, 1), {"seq_id": 1, "qsl_idx": 0, "data": ""}], [1])
    assert result == AccuracyResult(good=1, total=1, unlabelled=0, duplicates=1)
