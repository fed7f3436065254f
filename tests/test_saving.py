"""The PNG compress level is a setting (`STUDIO_PNG_LEVEL`): it reaches every PNG a mode writes and never the pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from studio.cache import ModelCache
from studio.engine.contract import Studio
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.outputs import Outputs
from studio.settings import DEFAULT_PNG_LEVEL, Settings, SettingsError
from tests.conftest import make_settings


def idat_level(path: Path) -> int:
    """The zlib level a PNG's image data was compressed at, from the FLEVEL bits zlib writes in its header."""
    data = path.read_bytes()
    start = data.index(b"IDAT") + 4
    return data[start + 1] >> 6  # 0: level 0-1, 1: 2-5, 2: 6 (default), 3: 7-9


def studio_at(tiny_dir: Path, outputs: Path, level: int) -> Studio:
    settings = make_settings(tiny_dir, outputs, png_level=level)
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def test_the_png_level_comes_from_the_environment_and_is_checked():
    assert Settings.from_env({}).png_level == DEFAULT_PNG_LEVEL
    assert Settings.from_env({"STUDIO_PNG_LEVEL": "1"}).png_level == 1
    with pytest.raises(SettingsError, match="STUDIO_PNG_LEVEL"):
        Settings.from_env({"STUDIO_PNG_LEVEL": "10"})


def test_each_level_writes_its_own_compression_and_the_same_pixels(tiny_dir, tmp_path):
    req = Txt2ImgRequest("photo of a linen shirt dress", num_inference_steps=2, seed=3)
    written = {level: txt2img(studio_at(tiny_dir, tmp_path / str(level), level), req).paths[0] for level in (1, 9)}
    assert idat_level(written[1]) == 0 and idat_level(written[9]) == 3
    first, second = (np.asarray(Image.open(path)) for path in written.values())
    assert np.array_equal(first, second)


def test_results_are_fsynced_and_only_a_scratch_folder_skips_it(tmp_path: Path, monkeypatch) -> None:
    """The served outputs folder fsyncs every file before it appears; a Ray replica's scratch folder (read back at
    once, the front writing the durable copy) does not, and its files are still whole and in place."""
    import os

    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    image = Image.new("RGB", (16, 16), (1, 2, 3))
    served = Outputs(tmp_path / "served").save(image, "a coat", "txt2img")
    assert len(synced) == 1
    scratch = Outputs(tmp_path / "scratch", durable=False).save(image, "a coat", "txt2img")
    assert len(synced) == 1 and scratch.read_bytes() == served.read_bytes()
