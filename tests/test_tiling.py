"""Repeat geometry and the scoped wrapping of convolutions (no generation: tiny modules and arrays only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL
from diffusers.models.downsampling import Downsample2D
from PIL import Image

from studio import patterns, tiling

REPEATS = tiling.REPEATS


def conv_state(module: torch.nn.Module) -> list[tuple[object, ...]]:
    """What `wrapped` may touch, per conv and per Downsample2D, including instance-level forwards."""
    state: list[tuple[object, ...]] = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            state.append((sub.padding_mode, sub.padding, sub.__dict__.get("forward"), sorted(sub.__dict__)))
        if isinstance(sub, Downsample2D):
            state.append(("down", sub.padding))
    return state


@pytest.fixture(scope="module")
def vae(tiny_dir: Path) -> AutoencoderKL:
    return AutoencoderKL.from_pretrained(tiny_dir / "base", subfolder="vae")


# ---- geometry -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeat", REPEATS)
def test_wrap_pad_reads_the_neighbours_the_repeat_lays_out(repeat: str) -> None:
    """What a conv sees beyond the tile's edge is the neighbouring tile of the print (zeros on an unwrapped axis)."""
    tile = np.random.default_rng(0).normal(size=(8, 6)).astype(np.float32)
    left, right, top, bottom = 2, 1, 1, 2
    padded = tiling.wrap_pad(torch.from_numpy(tile)[None, None], (left, right, top, bottom), repeat)[0, 0].numpy()
    wrap_x, wrap_y = tiling.wraps(repeat)
    around = np.pad(patterns.surroundings(tile, repeat), ((0 if wrap_y else 8,) * 2, (0 if wrap_x else 6,) * 2))
    np.testing.assert_array_equal(padded, around[8 - top : 16 + bottom, 6 - left : 12 + right])
    assert np.array_equal(around[8:16, 6:12], tile)


@pytest.mark.parametrize("repeat", REPEATS)
def test_translate_moves_the_whole_print(repeat: str) -> None:
    """`translate` cuts the tile out of the print moved by (dy, dx), for shifts up to and beyond a whole tile."""
    tile = np.arange(8 * 6).reshape(8, 6)
    wrap_x, wrap_y = tiling.wraps(repeat)
    ahead = patterns.plane(tile, repeat, rows=3 if wrap_y else 1, cols=3 if wrap_x else 1)
    for dy, dx in [(3, 0), (0, 2), (5, 4), (8, 6), (11, 7), (16, 12)]:
        dy, dx = (dy if wrap_y else 0), (dx if wrap_x else 0)
        moved = patterns.translate(tile, -dy, -dx, repeat)  # up/left: the print ahead slides into view
        np.testing.assert_array_equal(moved, ahead[dy : dy + 8, dx : dx + 6])
        np.testing.assert_array_equal(patterns.translate(moved, dy, dx, repeat), tile)


def test_odd_feature_maps_cannot_be_dropped_by_half() -> None:
    with pytest.raises(ValueError, match="even"):
        tiling.wrap_pad(torch.zeros(1, 1, 5, 4), (1, 1, 1, 1), "half_drop")
    with pytest.raises(ValueError, match="Unknown repeat"):
        tiling.wrap_pad(torch.zeros(1, 1, 4, 4), (1, 1, 1, 1), "diagonal")


def test_full_wrap_equals_torch_circular_padding() -> None:
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
    circular = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1, padding_mode="circular")
    circular.load_state_dict(conv.state_dict())
    x = torch.randn(1, 3, 16, 12)
    with tiling.wrapped([conv], "full"):
        wrapped_out = conv(x)
    torch.testing.assert_close(wrapped_out, circular(x), rtol=0, atol=1e-6)


# ---- scoping ------------------------------------------------------------------------------------------------------
def test_every_conv_is_restored_exactly_after_an_exception_inside(vae: AutoencoderKL) -> None:
    vae.enable_tiling()
    before = conv_state(vae)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        plain = vae.encode(x).latent_dist.mean
        with pytest.raises(RuntimeError, match="boom"), tiling.wrapped([vae, None, vae], "brick"):
            assert not vae.use_tiling  # VAE tiling would decode with zero borders: off while wrapped
            assert vae.encoder.down_blocks[0].downsamplers[0].padding != 0  # its own zero pad is skipped
            vae.encode(x)
            raise RuntimeError("boom")
        again = vae.encode(x).latent_dist.mean
    assert vae.use_tiling
    vae.disable_tiling()
    assert conv_state(vae) == before
    torch.testing.assert_close(again, plain, rtol=0, atol=0)


def test_the_vae_encoder_asymmetric_pad_wraps_too(vae: AutoencoderKL) -> None:
    """Rolling the image by 64 px rolls the encoded latents by 8 only if the (0, 1, 0, 1) pad wraps as well."""
    x = torch.randn(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), tiling.wrapped([vae], "full"):
        a = vae.encode(x).latent_dist.mean
        b = vae.encode(torch.roll(x, (64, 64), dims=(2, 3))).latent_dist.mean
    torch.testing.assert_close(torch.roll(a, (8, 8), dims=(2, 3)), b, rtol=0, atol=1e-5)


def test_wrapping_composes_with_an_instance_forward_and_does_not_nest() -> None:
    conv = torch.nn.Conv2d(1, 1, 3, padding=1)
    calls: list[tuple[int, ...]] = []
    hooked = conv.forward

    def instance_forward(x: torch.Tensor) -> torch.Tensor:  # e.g. an offloading hook set on the instance
        calls.append(tuple(x.shape))
        return hooked(x)

    conv.forward = instance_forward
    with tiling.wrapped([conv], "x"):
        conv(torch.zeros(1, 1, 4, 4))
        with pytest.raises(RuntimeError, match="do not nest"), tiling.wrapped([conv], "full"):
            pass
        assert conv.padding == (0, 0)  # the outer wrap is still in place
    assert calls == [(1, 1, 6, 6)] and conv.forward is instance_forward and conv.padding == (1, 1)


# ---- pictures -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeat", REPEATS)
def test_resized_tile_equals_the_middle_of_the_resized_print(repeat: str) -> None:
    """Resampling reads across the edges into the neighbours, so a resized tile still repeats seamlessly."""
    tile = Image.fromarray(np.random.default_rng(2).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    wrap_x, wrap_y = tiling.wraps(repeat)
    rows, cols = (5 if wrap_y else 1), (5 if wrap_x else 1)
    big = Image.fromarray(patterns.plane(np.asarray(tile), repeat, rows, cols)).resize(
        (cols * 72, rows * 48), Image.Resampling.LANCZOS
    )
    left, top = 2 * 72 * wrap_x, 2 * 48 * wrap_y
    expected = np.asarray(big.crop((left, top, left + 72, top + 48))).astype(int)
    got = np.asarray(patterns.resize_tile(tile, (72, 48), repeat)).astype(int)
    inner = (slice(None) if wrap_y else slice(4, -4), slice(None) if wrap_x else slice(4, -4))
    assert np.abs(got - expected)[inner].max() <= 1


def test_seam_metric_tells_a_seamless_tile_from_a_cut_one() -> None:
    """A half-drop tile drawn from a function with the half-drop lattice has no seam; a gradient has one."""
    y, x = np.mgrid[0:64, 0:48]
    wave = 127 + 100 * np.sin(2 * np.pi * (y / 64 + x / (2 * 48)))  # periodic under (0, H) and (W, H/2)
    seamless = np.repeat(wave[..., None], 3, axis=2)
    smooth = patterns.seam_steps(seamless, "half_drop")
    cut = patterns.seam_steps(np.repeat((x * 5.0)[..., None], 3, axis=2), "full", axes="x")
    assert smooth.seam <= 1.5 * smooth.interior
    assert cut.seam > 10 * cut.interior


def test_preview_lays_out_three_by_three_or_a_strip() -> None:
    tile = Image.new("RGB", (48, 32))
    assert patterns.preview(tile, "half_drop").size == (144, 96)
    assert patterns.preview(tile, "x").size == (144, 32)
    assert patterns.preview(tile, "y").size == (48, 96)


@pytest.mark.parametrize("colors", [2, 5, 12])
def test_colourway_has_exactly_n_colours(colors: int) -> None:
    tile = Image.fromarray(np.random.default_rng(colors).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    way = patterns.colourway(tile, colors)
    used = {tuple(c) for c in np.asarray(way.image).reshape(-1, 3)}
    assert len(way.palette) == len(set(way.palette)) == len(used) == colors
    assert used == set(way.palette) and len(way.hex) == colors


def test_print_pixels_follow_the_unit_and_dpi() -> None:
    assert patterns.print_pixels(patterns.CM_PER_INCH, "cm", 300) == 300
    assert patterns.print_pixels(2, "in", 150) == 300
    assert patterns.physical_length(300, "in", 150) == 2
