"""Textile on the tiny checkpoint: seamless repeats proven by shift equivariance, scoping, print export, the tab.

Shifts are 8 latent pixels: one cell of the tiny UNet's 3 downsamplings, 64 px in the image. The outputs are 8-bit
PNGs, so "equal within float tolerance" means at most 1 level apart (a value 1e-6 from a rounding edge may flip).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from PIL import Image

from studio import patterns, tiling
from studio.engine.checks import RequestError
from studio.engine.contract import Result, Studio
from studio.engine.restyle import RestyleRequest, restyle
from studio.engine.textile import TextileRequest, textile, tile_size
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext, read_parameters
from studio.ui.tab import ModeCalls
from tests.conftest import final, pixels

PROMPT = "a seamless floral chintz print, roses and leaves"
FAST = {"num_inference_steps": 1, "guidance_scale": 1.0, "scheduler": "DPM++ 2M", "seed": 7}
SHIFT = 8  # latent pixels
SQUARE = (128, 128)
WITH_CFG = {"guidance_scale": 7.0}
WRAPPED = tiling.wrapped

Run = Callable[..., np.ndarray]


def noise(size: tuple[int, int]) -> torch.Tensor:
    return torch.randn((1, 4, size[1] // 8, size[0] // 8), generator=torch.Generator().manual_seed(3))


def moved(array: np.ndarray | torch.Tensor, dy: int, dx: int, repeat: str) -> np.ndarray:
    """The print moved by (dy, dx): latents (N, C, H, W) or an image (H, W, C), by the repeat's geometry."""
    if isinstance(array, torch.Tensor):
        return patterns.translate(array.numpy(), dy, dx, repeat, axes=(2, 3))
    return patterns.translate(array, dy, dx, repeat)


def swatch(size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(11).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def run(studio: Studio) -> Run:
    """A textile tile from the fixed starting noise moved by (dy, dx) latent px (runs are shared between tests)."""
    memo: dict[tuple[object, ...], np.ndarray] = {}

    def generate(
        repeat: str,
        dy: int = 0,
        dx: int = 0,
        size: tuple[int, int] = SQUARE,
        with_swatch: bool = False,
        **extra: object,
    ) -> np.ndarray:
        key = (repeat, dy, dx, size, with_swatch, tuple(sorted(extra.items())), tiling.wrapped is WRAPPED)
        if key not in memo:
            image = Image.fromarray(moved(swatch(size), 8 * dy, 8 * dx, repeat)) if with_swatch else None
            one_step = {"num_inference_steps": 2, "strength": 0.5} if with_swatch else {}  # 1 step either way
            req = TextileRequest(
                PROMPT, repeat=repeat, width=size[0], height=size[1], image=image, **{**FAST, **one_step, **extra}
            )  # type: ignore[arg-type]
            latents = torch.from_numpy(moved(noise(size), dy, dx, repeat))
            memo[key] = pixels(textile(studio, req, latents=latents).paths[0])
        return memo[key]

    return generate


def equivariance_error(run: Run, repeat: str, dy: int, dx: int, **kwargs: object) -> int:
    """max |G(move(z)) - move(G(z))| in 8-bit levels."""
    return int(np.abs(run(repeat, dy, dx, **kwargs) - moved(run(repeat, **kwargs), 8 * dy, 8 * dx, repeat)).max())


@pytest.fixture
def unwrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same engine with the wrapping taken out: the control that shows the equivariance tests can fail."""
    monkeypatch.setattr(tiling, "wrapped", lambda modules, repeat: contextlib.nullcontext())


# ---- shift equivariance ---------------------------------------------------------------------------------------------
def test_full_drop_txt2img_is_shift_equivariant(run: Run) -> None:
    """Rolling the starting latents by k latent px rolls the tile by 8k px, on both axes, with CFG."""
    assert equivariance_error(run, "full", SHIFT, 0, **WITH_CFG) <= 1
    assert equivariance_error(run, "full", 0, SHIFT, **WITH_CFG) <= 1


def test_without_wrapping_txt2img_is_not_shift_equivariant(run: Run, unwrapped: None) -> None:
    assert equivariance_error(run, "full", 0, SHIFT, **WITH_CFG) > 8


def test_half_drop_is_equivariant_under_half_drop_moves(run: Run) -> None:
    """Identity: G(move_hd(z, dy, dx)) == move_hd(G(z), 8dy, 8dx), where move_hd moves the half-drop print: rows
    wrap plainly, and the columns that wrap in across the side edge come in dropped by half a tile. A plain torus
    roll is not what the half-drop generator commutes with."""
    assert equivariance_error(run, "half_drop", SHIFT, 0) <= 1
    assert equivariance_error(run, "half_drop", 0, SHIFT) <= 1
    plain_roll = np.roll(run("half_drop"), 8 * SHIFT, axis=1)
    assert np.abs(run("half_drop", 0, SHIFT) - plain_roll).max() > 8


def test_brick_is_equivariant_under_brick_moves(run: Run) -> None:
    """Identity: G(move_b(z, dy, dx)) == move_b(G(z), 8dy, 8dx), where move_b moves the brick print: columns
    wrap plainly, and the rows that wrap in over the top/bottom edge come in shifted across by half a tile."""
    assert equivariance_error(run, "brick", SHIFT, 0) <= 1
    assert equivariance_error(run, "brick", 0, SHIFT) <= 1
    plain_roll = np.roll(run("brick"), 8 * SHIFT, axis=0)
    assert np.abs(run("brick", SHIFT, 0) - plain_roll).max() > 8


def test_single_axis_repeats_wrap_only_their_axis(run: Run) -> None:
    """x-only (a border print): rolling on x holds, on y it does not (the y edges keep zero padding); y-only alike."""
    assert equivariance_error(run, "x", 0, SHIFT) <= 1
    assert equivariance_error(run, "x", SHIFT, 0) > 8
    assert equivariance_error(run, "y", SHIFT, 0, size=(64, 128)) <= 1


def test_swatch_img2img_is_shift_equivariant(run: Run) -> None:
    """Rolling the swatch by 8k px and the noise by k latent px rolls the seamless result by 8k px."""
    assert equivariance_error(run, "full", SHIFT, SHIFT, with_swatch=True) <= 1


def test_without_wrapping_swatch_img2img_is_not_shift_equivariant(run: Run, unwrapped: None) -> None:
    assert equivariance_error(run, "full", SHIFT, SHIFT, with_swatch=True) > 8


# ---- seams -----------------------------------------------------------------------------------------------------------
def seam_against_inside(run: Run, repeat: str, axis: str) -> tuple[float, float, float]:
    """(mean |step| across the tile's wrap edge on `axis`, the same step painted inside the image, tile average).

    "Inside": the print moved by half a tile across that edge puts the edge in the middle of the new tile.
    """
    size = (64, 128) if repeat == "y" else SQUARE
    extra = WITH_CFG if repeat == "full" else {}  # the full-drop runs of the equivariance tests, reused
    steps = patterns.seam_steps(run(repeat, size=size, **extra), repeat, axes=axis)
    shift, middle = ((0, SHIFT), size[0] // 2) if axis == "x" else ((SHIFT, 0), size[1] // 2)
    inside = patterns.line_step(run(repeat, *shift, size=size, **extra), axis, middle)
    return steps.seam, inside, steps.interior


@pytest.mark.parametrize("repeat", tiling.REPEATS)
def test_steps_across_the_wrap_edges_are_no_larger_than_inside(run: Run, repeat: str) -> None:
    """Each wrap edge's mean |step| equals (so is no larger than) the step between the same pixels when the model
    paints them inside the image. Random weights paint noise-like tiles whose 64-px grid lines are rougher than
    their average, so the tile average is reported for context, not compared."""
    wrap_x, wrap_y = tiling.wraps(repeat)
    for axis in [a for a, wrapped in (("x", wrap_x), ("y", wrap_y)) if wrapped]:
        seam, inside, average = seam_against_inside(run, repeat, axis)
        print(f"{repeat:>9} {axis}: seam {seam:.2f}, same pixels inside {inside:.2f}, tile average {average:.2f}")
        assert abs(seam - inside) <= 0.05


def test_without_wrapping_the_seam_is_not_what_the_model_paints_inside(run: Run, unwrapped: None) -> None:
    seam, inside, _ = seam_against_inside(run, "full", "x")
    print(f"unwrapped x: seam {seam:.2f}, same pixels inside {inside:.2f}")
    assert abs(seam - inside) > 0.05


# ---- scoping ---------------------------------------------------------------------------------------------------------
def model_state(*modules: torch.nn.Module) -> list[tuple[object, ...]]:
    return [
        (type(m).__name__, m.padding_mode, m.padding, m.__dict__.get("forward"), sorted(m.__dict__))
        for module in modules
        for m in module.modules()
        if isinstance(m, torch.nn.Conv2d)
    ]


def test_a_run_that_fails_midway_leaves_every_model_as_before(fresh_studio: Studio) -> None:
    plain = Txt2ImgRequest(PROMPT, width=64, height=64, **FAST)
    before = pixels(txt2img(fresh_studio, plain).paths[0])  # tiling never used in this studio yet
    base = fresh_studio.cache.base()
    controlnet = fresh_studio.cache.slot("controlnet")
    saved = model_state(base.unet, base.vae, controlnet)
    calls = []

    def fail_on_second_call(module: torch.nn.Module, args: object, output: object) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("UNet failed mid-run")

    handle = base.unet.register_forward_hook(fail_on_second_call)
    try:
        with pytest.raises(RuntimeError, match="mid-run"):
            textile(
                fresh_studio,
                TextileRequest(PROMPT, repeat="half_drop", width=64, height=128, **{**FAST, "num_inference_steps": 2}),
            )
    finally:
        handle.remove()
    with pytest.raises(RuntimeError, match="inside"), tiling.wrapped([base.unet, base.vae, controlnet], "brick"):
        assert model_state(base.unet, base.vae, controlnet) != saved
        raise RuntimeError("failure inside a restyle in repeat mode")
    assert len(calls) == 2
    assert model_state(base.unet, base.vae, controlnet) == saved
    assert np.array_equal(pixels(txt2img(fresh_studio, plain).paths[0]), before)


# ---- export ----------------------------------------------------------------------------------------------------------
def test_print_export_has_physical_size_times_dpi_and_exactly_n_colours(studio: Studio) -> None:
    req = TextileRequest(
        PROMPT, repeat="full", width=64, height=64, physical_width=3.0, unit="in", dpi=50, colors=5, **FAST
    )
    result = textile(studio, req)
    done = result.exports[0]
    expected = patterns.print_pixels(3.0, "in", 50)  # 3 in x 50 dpi; the height follows the square tile
    with Image.open(done.print_file) as printed:
        assert printed.size == (expected, expected)
        assert round(printed.info["dpi"][0]) == 50
    with Image.open(done.tile.path) as tile:  # the tile file's DPI gives it the same physical size
        assert tile.size == (64, 64) and abs(64 / tile.info["dpi"][0] - 3.0) < 0.1
    with Image.open(done.colourway) as way:
        used = {tuple(c) for c in np.asarray(way.convert("RGB")).reshape(-1, 3)}
        params = parse_infotext(read_parameters(way) or "").params
    assert len(used) == len(done.palette) == 5 and len(set(done.palette)) == 5
    assert {f"#{r:02x}{g:02x}{b:02x}" for r, g, b in used} == set(done.palette)
    assert done.palette_text.read_text().splitlines()[0].startswith(done.palette[0])
    assert (params["Repeat"], params["DPI"], params["Print pixels"]) == ("full", "50", f"{expected}x{expected}")
    assert Image.open(done.preview).size == (3 * 64, 3 * 64)


def test_tile_size_follows_the_repeat_and_bad_requests_say_what_to_do(studio: Studio) -> None:
    base = studio.cache.base()
    downsamplings = len(base.unet.config.block_out_channels) - 1
    step_w, step_h = tiling.granule(downsamplings, base.vae_scale_factor, "half_drop")
    width, height = tile_size(studio, TextileRequest(PROMPT, repeat="half_drop"))
    assert width % step_w == 0 and height % step_h == 0 and height >= studio.cache.native_size()
    bad = [
        ({"repeat": "half_drop", "width": 64, "height": 64}, f"multiple of {step_h}"),
        ({"repeat": "diagonal"}, "repeat"),
        ({"colors": 1}, "at least 2"),
        ({"physical_width": 10.0, "physical_height": 5.0, "width": 64, "height": 64}, "shape"),
        ({"image": swatch((64, 64)), "strength": 0.1, "num_inference_steps": 2}, "raise the steps"),
        ({"unit": "mm"}, "cm"),
        ({"physical_width": 900.0, "dpi": 2400}, "too large"),
    ]
    for fields, words in bad:
        with pytest.raises(RequestError, match=words):
            textile(studio, TextileRequest(PROMPT, **{**FAST, **fields}))  # type: ignore[arg-type]


# ---- restyle in repeat mode (studio/engine/restyle.py wraps UNet, VAE and ControlNet with `tiling.wrapped`) -----
def test_restyle_in_half_drop_repeat_mode_is_shift_equivariant(studio: Studio) -> None:
    """Moving the edge map by 8k px and the noise by k latent px, by the half-drop geometry, moves the result."""
    lines = swatch(SQUARE)[..., 0]
    lines = np.where(lines > 200, 255, 0).astype(np.uint8)

    def restyled(dy: int, dx: int) -> np.ndarray:
        req = RestyleRequest(
            image=Image.fromarray(moved(lines, 8 * dy, 8 * dx, "half_drop")),
            prompt=PROMPT,
            preprocessor="none",
            repeat="half_drop",
            width=SQUARE[0],
            height=SQUARE[1],
            **FAST,
        )
        return pixels(
            restyle(studio, req, latents=torch.from_numpy(moved(noise(SQUARE), dy, dx, "half_drop"))).paths[0]
        )

    error = np.abs(restyled(SHIFT, SHIFT) - moved(restyled(0, 0), 8 * SHIFT, 8 * SHIFT, "half_drop")).max()
    assert error <= 1


# ---- the tab ---------------------------------------------------------------------------------------------------------
def build_tab(seen: list[TextileRequest], studio: Studio) -> dict[str, object]:
    from studio.ui import textile_tab
    from studio.ui.widgets import UIContext

    def fake_generate(req: TextileRequest, job: object) -> Result:
        seen.append(req)
        return textile(studio, req, None)

    ctx = UIContext(native_size=64, limits=studio.limits, count_tokens=lambda text: "")
    with gr.Blocks():
        return textile_tab.create(ctx, ModeCalls("textile", fake_generate))


def test_tab_inputs_match_the_handler_and_the_request(studio: Studio) -> None:
    parts = build_tab([], studio)
    names = [n for n in inspect.signature(parts.handler).parameters if n not in ("request", "progress")]
    assert len(names) == len(parts.inputs)
    assert set(names) <= set(TextileRequest.__dataclass_fields__) | {"preset"}


def test_tab_turns_widget_values_into_a_request_and_shows_the_exports(studio: Studio, tmp_path: Path) -> None:
    seen: list[TextileRequest] = []
    handler = build_tab(seen, studio).handler
    Image.fromarray(swatch((96, 64))).save(tmp_path / "swatch.png")
    values = {
        "preset": "Florals",
        "prompt": PROMPT,
        "negative_prompt": None,
        "repeat": "brick",
        "width": 128.0,
        "height": 64.0,
        "num_inference_steps": 2.0,
        "guidance_scale": 1.0,
        "scheduler": "DPM++ 2M",
        "seed": 5.0,
        "batch_size": 1.0,
        "image": str(tmp_path / "swatch.png"),
        "strength": 0.5,
        "physical_width": 10.0,
        "physical_height": 0.0,
        "unit": "cm",
        "dpi": 72.0,
        "colors": 3.0,
        "upscaler": "Lanczos",
        "detail_strength": 0.0,
        "ip_adapter_image": None,  # the image prompt box, empty
        "ip_adapter_scale": "0.6",
        "ip_adapter_model": "ip-adapter_sd15",
    }
    names = [n for n in inspect.signature(handler).parameters if n not in ("request", "progress")]
    outputs = final(handler(**{n: values[n] for n in names}, request=None, progress=lambda *a, **k: None))
    req = seen[0]
    assert (req.repeat, req.width, req.height, req.seed, req.colors, req.dpi) == ("brick", 128, 64, 5, 3, 72)
    assert req.negative_prompt == "" and req.image is not None
    tiles, preview, palette_image, palette_hex, files, seed_used, infotext = outputs
    assert len(tiles) == 1 and Path(preview).is_file() and Path(palette_image).is_file()
    assert len(palette_hex.split()) == 3 and seed_used == 5 and "Repeat: brick" in infotext
    assert len(files) >= 4 and all(Path(f).is_file() for f in files)
    # downloads are named for what they are: print, tile and repeat preview (issue 15, item 13)
    names = {Path(f).name for f in files}
    assert {"floral-chintz-print-brick-10x5cm-72dpi.png", "floral-chintz-print-brick-tile-seed5.png",
            "floral-chintz-print-brick-repeat-preview-seed5.png"} <= names, names  # fmt: skip
