"""Bad input refused with one clear line before any work: the unit-level half of the fault catalogue's rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyncbench.data.preprocess import load_image
from asyncbench.errors import ConfigError
from asyncbench.loadgen.plan import check_max_batch


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
