"""Mask helpers: feathering is bounded, crops are padded boxes, paste-back keeps alpha-0 pixels byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio import masks
from studio.images import load_alpha


def box_mask(size: tuple[int, int], box: masks.Box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_feather_with_blur_0_is_the_mask_itself():
    mask = box_mask((64, 48), (10, 10, 30, 20))
    assert np.array_equal(np.asarray(masks.feather(mask, 0)), np.asarray(mask))


@pytest.mark.parametrize("blur", [1, 4, 8])
def test_feather_band_is_soft_near_the_edge_and_exactly_zero_far_from_it(blur):
    mask = box_mask((192, 192), (64, 64, 128, 128))
    alpha = np.asarray(masks.feather(mask, blur)).astype(int)
    assert alpha[96, 96] == 255  # deep inside stays fully repainted
    assert 0 < alpha[96, 64] < 255 and 0 < alpha[96, 63] < 255  # the band straddles the edge
    far = 4 * blur + 2
    outside = np.ones_like(alpha, dtype=bool)
    outside[64 - far : 128 + far, 64 - far : 128 + far] = False
    assert alpha[outside].max() == 0


def test_invert_and_combine_are_complement_and_union():
    a, b = box_mask((32, 32), (0, 0, 10, 10)), box_mask((32, 32), (5, 5, 20, 20))
    union = np.asarray(masks.combine([a, b]))
    assert np.array_equal(union, np.maximum(np.asarray(a), np.asarray(b)))
    assert np.array_equal(np.asarray(masks.invert(a)), 255 - np.asarray(a))


def test_crop_box_is_the_bounding_box_grown_by_padding_and_clamped():
    mask = box_mask((100, 80), (10, 30, 40, 50))
    assert masks.crop_box(mask, 5) == (5, 25, 45, 55)
    assert masks.crop_box(mask, 50) == (0, 0, 90, 80)
    with pytest.raises(ValueError):
        masks.crop_box(Image.new("L", (10, 10)), 4)


@pytest.mark.parametrize("box_size", [(20, 20), (30, 90), (200, 50), (7, 13), (1000, 700)])
@pytest.mark.parametrize("native", [512, 768])
def test_processing_size_keeps_aspect_at_about_native_area_in_multiples_of_8(box_size, native):
    """Real native sizes, where no side reaches the 64 floor or the max_side ceiling: every case checks aspect and
    area (rounding each side to a multiple of 8 moves it by 4 px at most, under 2% of any side here)."""
    width, height = masks.processing_size(*box_size, native=native, max_side=4096)
    assert width % 8 == 0 and height % 8 == 0
    assert min(width, height) >= 256 and max(width, height) < 4096  # not clamped: the checks below apply as such
    assert abs(width * height / native**2 - 1) < 0.04, (width, height)
    assert abs((width / height) / (box_size[0] / box_size[1]) - 1) < 0.04, (width, height)


@pytest.mark.parametrize(
    ("box_size", "native", "max_side", "expected"),
    [
        ((20, 20), 64, 4096, (64, 64)),  # exactly the native square
        ((30, 90), 64, 4096, (64, 112)),  # the short side (~40) is raised to the floor; the long side is not rescaled
        ((200, 50), 64, 4096, (128, 64)),
        ((7, 13), 64, 4096, (64, 88)),
        ((1000, 10), 512, 1024, (1024, 64)),  # a sliver: the long side at the ceiling, the short one at the floor
        ((30, 90), 512, 512, (296, 512)),  # only the long side capped
    ],
)
def test_processing_size_clamps_each_side_to_64_and_max_side(box_size, native, max_side, expected):
    assert masks.processing_size(*box_size, native=native, max_side=max_side) == expected


def test_paste_back_keeps_alpha_0_pixels_and_takes_alpha_255_pixels():
    original, generated = noise_image((64, 48), 1), noise_image((64, 48), 2)
    alpha = masks.feather(box_mask((64, 48), (20, 10, 40, 30)), 3)
    result = np.asarray(masks.paste_back(original, generated, alpha))
    a = np.asarray(alpha)
    assert np.array_equal(result[a == 0], np.asarray(original)[a == 0])
    assert np.array_equal(result[a == 255], np.asarray(generated)[a == 255])
    band = (a > 0) & (a < 255)
    assert band.any()


def test_paste_back_scales_a_generated_crop_into_its_box_only():
    original = noise_image((96, 64), 3)
    generated = Image.new("RGB", (64, 64), (250, 10, 10))  # processed at another size than the box
    box = (20, 8, 52, 40)
    alpha = box_mask((96, 64), box)
    result = masks.paste_back(original, generated, alpha, box)
    assert result.size == original.size
    inside = np.asarray(result)[box[1] : box[3], box[0] : box[2]]
    assert np.abs(inside.astype(int) - (250, 10, 10)).max() <= 1
    a = np.asarray(alpha)
    assert np.array_equal(np.asarray(result)[a == 0], np.asarray(original)[a == 0])


def test_fill_paints_the_mask_with_surrounding_colours_and_keeps_the_rest():
    image = Image.new("RGB", (64, 32), (200, 30, 30))
    image.paste((30, 30, 200), (32, 0, 64, 32))  # red left half, blue right half
    image.paste((0, 255, 0), (24, 8, 40, 24))  # the green object to paint out
    mask = box_mask((64, 32), (24, 8, 40, 24))
    filled = np.asarray(masks.fill(image, mask)).astype(int)
    keep = np.asarray(mask) == 0
    assert np.array_equal(filled[keep], np.asarray(image).astype(int)[keep])
    assert filled[8:24, 24:40, 1].max() < 128  # no green survives inside
    assert filled[16, 25, 0] > filled[16, 25, 2] and filled[16, 38, 2] > filled[16, 38, 0]  # red left, blue right


def test_editor_value_is_recognised_and_falls_back_to_the_composite():
    photo = noise_image((16, 16))
    value = masks.editor_value({"background": None, "layers": [photo, None], "composite": photo})
    assert value is not None and value.background is photo and value.layers == [photo]
    assert masks.editor_value(photo) is None
    assert masks.editor_value({"path": "x.png"}) is None


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (220, 20, 60), (40, 90, 200)])
def test_layer_alpha_is_the_mask_whatever_the_brush_colour(colour):
    layer = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    layer.paste((*colour, 255), (5, 5, 20, 15))
    mask = load_alpha(layer, (40, 30), max_pixels=10_000)
    assert np.array_equal(np.asarray(mask), np.asarray(box_mask((40, 30), (5, 5, 20, 15))))
