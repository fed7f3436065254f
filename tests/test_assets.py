"""Example assets: regenerated pixel for pixel, the right kind of picture each, the mask on the garment's sleeve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from studio import assets
from studio.images import load_image, load_mask


def rgb(name: str) -> np.ndarray:
    return np.asarray(Image.open(assets.path(name)).convert("RGB")).astype(np.int16)


def test_regenerating_gives_the_committed_files_pixel_for_pixel(tmp_path: Path) -> None:
    """Pixels, not bytes: PNG compression may differ between Pillow/zlib builds; the pictures may not."""
    written = assets.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(assets.FILES.values())
    for path in written:
        committed = assets.FOLDER / path.name
        with Image.open(path) as fresh, Image.open(committed) as kept:
            assert fresh.mode == kept.mode and fresh.size == kept.size
            assert np.array_equal(np.asarray(fresh), np.asarray(kept)), f"{committed} is stale: python -m studio.assets"


def test_every_asset_is_a_512_px_square_that_the_studios_loaders_accept() -> None:
    for name in assets.FILES:
        with Image.open(assets.path(name)) as image:
            assert image.size == (512, 512) and image.format == "PNG"
        assert load_image(assets.path(name), 512 * 512).size == (512, 512)


def test_the_mask_is_binary_and_lies_on_the_garments_left_sleeve() -> None:
    mask = np.asarray(load_mask(assets.path("mask"), (512, 512), 512 * 512))
    assert set(np.unique(mask)) == {0, 255}
    flatlay = rgb("flatlay")
    chroma = flatlay.max(axis=2) - flatlay.min(axis=2)
    garment = chroma >= 60  # the teal cloth; the neutral ground and its shadow have almost no chroma
    painted = mask == 255
    assert painted.sum() > 0.01 * mask.size
    assert garment[painted].all()
    ys, xs = np.nonzero(painted)
    garment_ys, garment_xs = np.nonzero(garment)
    assert xs.mean() < garment_xs.min() + 0.25 * (garment_xs.max() - garment_xs.min())  # the left sleeve
    assert ys.mean() < garment_ys.mean()  # in the upper part of the shirt


def test_the_flatlay_is_a_garment_on_a_neutral_ground() -> None:
    flatlay = rgb("flatlay")
    chroma = flatlay.max(axis=2) - flatlay.min(axis=2)
    border = np.concatenate([chroma[:8].ravel(), chroma[-8:].ravel(), chroma[:, :8].ravel(), chroma[:, -8:].ravel()])
    assert border.max() < 20
    assert 0.2 < (chroma >= 60).mean() < 0.6


def test_the_sketch_is_dark_lines_on_white_paper() -> None:
    grey = np.asarray(Image.open(assets.path("sketch")).convert("L"))
    assert (grey == 255).mean() > 0.85
    assert 0.005 < (grey < 96).mean() < 0.1


def test_the_swatch_is_a_textured_fabric_filling_the_frame() -> None:
    swatch = rgb("swatch")
    for block in (swatch[:64, :64], swatch[-64:, -64:], swatch[200:264, 300:364]):
        assert block.std() > 30  # woven texture everywhere, no plain background
