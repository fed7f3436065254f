"""Upscaling (issue 18) on the tiny twins, CPU, offline: the tiny ESRGAN is loaded by spandrel like a real file.

Seamless is shown as equivariance: moving the tile by k px (by the repeat's own geometry) and upscaling equals
upscaling and moving by scale x k px; the same upscale without the wrapped neighbourhood fails it. The tiny
ESRGAN reaches at most 19 input px (17 convs at input size, 4 more at 2x and 4x), so with 24 px of context
tiled == whole and the equivariance hold to float precision.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio import patterns, upscale
from studio.engine import upscale as engine
from studio.engine.contract import Cancelled, Job, Studio
from studio.engine.textile import TextileRequest, print_size, textile
from studio.hashing import file_sha256
from studio.metadata import format_infotext, parse_infotext, pnginfo, read_parameters
from studio.modes import BUILTIN
from studio.restore import Restorer
from studio.tiny_upscaler import FILE_NAME, state_dict
from tests.conftest import free_port, make_settings

CONTEXT = 24  # input px: more than the tiny ESRGAN's reach (19 px)
TILE = 16  # small model tiles, so every test crosses tile boundaries
SHIFTS = {"full": (5, 7), "half_drop": (6, 9), "brick": (9, 6), "x": (0, 7), "y": (5, 0)}
PROMPT = "florals, roses and leaves"


def smooth(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A picture with structure at several scales, float in [0, 1]."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 4, width // 4, 3), dtype=np.uint8))
    fine = rng.normal(0, 12, (height, width, 3))
    return np.clip(np.asarray(coarse.resize((width, height), Image.Resampling.BICUBIC)) + fine, 0, 255) / 255.0


@pytest.fixture(scope="module")
def upscaler(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> upscale.Upscaler:
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("outputs"), upscalers_dir=tiny_dir / "upscaler")
    return upscale.open_upscaler(app.create_studio(settings).cache, settings.upscalers_dir, "")


@pytest.fixture(scope="module")
def up_studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    return app.create_studio(
        make_settings(tiny_dir, tmp_path_factory.mktemp("outputs"), upscalers_dir=tiny_dir / "upscaler")
    )


# ---- the tiny twin --------------------------------------------------------------------------------------------------
def test_the_tiny_twin_is_an_esrgan_file_that_spandrel_reads_like_the_real_one(upscaler: upscale.Upscaler) -> None:
    keys = set(state_dict())
    assert {"conv_first.weight", "body.0.rdb1.conv1.weight", "body.0.rdb3.conv5.weight", "conv_body.weight",
            "conv_up1.weight", "conv_up2.weight", "conv_hr.weight", "conv_last.weight"} <= keys  # fmt: skip
    assert upscaler.model.architecture.id == "ESRGAN" and upscaler.scale == 4 and upscaler.name == FILE_NAME
    out = upscale.model_pass(upscaler, smooth(32, 32).astype(np.float32), None, TILE, CONTEXT)
    assert out.shape == (128, 128, 3)
    # not saturated: spandrel clamps to [0, 1], and a clamped output would make every property hold trivially
    assert out.std() > 0.05 and ((out <= 0) | (out >= 1)).mean() < 0.05


# ---- seamless stays seamless ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("repeat", list(SHIFTS))
def test_upscaling_commutes_with_the_repeats_moves(upscaler: upscale.Upscaler, repeat: str) -> None:
    dy, dx = SHIFTS[repeat]
    tile = smooth(32, 32).astype(np.float32)
    big = upscale.model_pass(upscaler, tile, repeat, TILE, CONTEXT)
    big_of_moved = upscale.model_pass(upscaler, patterns.translate(tile, dy, dx, repeat), repeat, TILE, CONTEXT)
    assert np.abs(big_of_moved - patterns.translate(big, 4 * dy, 4 * dx, repeat)).max() < 1e-4
    if repeat in ("half_drop", "brick"):  # the offset is exact at the new size: a plain roll is something else
        assert np.abs(big_of_moved - np.roll(big, (4 * dy, 4 * dx), axis=(0, 1))).max() > 0.05


def test_without_the_wrapped_neighbourhood_the_upscaled_tile_has_a_seam(upscaler: upscale.Upscaler) -> None:
    tile = smooth(32, 32).astype(np.float32)
    big = upscale.model_pass(upscaler, tile, None, TILE, CONTEXT)
    big_of_moved = upscale.model_pass(upscaler, np.roll(tile, (5, 7), axis=(0, 1)), None, TILE, CONTEXT)
    assert np.abs(big_of_moved - np.roll(big, (20, 28), axis=(0, 1))).max() > 0.05


# ---- tiles: equal to the whole, memory bounded ----------------------------------------------------------------------
def test_tiled_equals_whole_when_the_overlap_covers_the_models_reach(upscaler: upscale.Upscaler) -> None:
    image = torch.from_numpy(smooth(48, 40).astype(np.float32)).permute(2, 0, 1)[None]
    whole = upscaler.model(image)
    tiled = upscale.run_tiled(upscaler.model, image, 4, tile=TILE, overlap=CONTEXT)
    assert (tiled - whole).abs().max() < 1e-4
    no_context = upscale.run_tiled(upscaler.model, image, 4, tile=TILE, overlap=0)
    assert (no_context - whole).abs().max() > 0.01  # the control: tiles without context show their edges


def test_the_model_never_sees_more_than_one_tile_with_its_context_whatever_the_size(
    upscaler: upscale.Upscaler,
) -> None:
    """Peak memory of a conv net grows with its input; the largest input handed to the model (the tile plus its
    context) is the same for a 48, 96 and 192 px image, while the image's area grows 16x."""
    largest = []
    for side in (48, 96, 192):
        seen: list[int] = []

        def model(part: torch.Tensor, seen: list[int] = seen) -> torch.Tensor:
            seen.append(part.numel())
            return upscaler.model(part)

        image = torch.from_numpy(smooth(side, side).astype(np.float32)).permute(2, 0, 1)[None]
        upscale.run_tiled(model, image, 4, tile=16, overlap=8)
        largest.append(max(seen))
    assert largest == [3 * (16 + 2 * 8) ** 2] * 3


def test_cancel_stops_the_model_between_tiles(up_studio: Studio, tmp_path: Path) -> None:
    Image.fromarray((smooth(32, 32) * 255).astype(np.uint8)).save(tmp_path / "tile.png")
    job = Job()
    job.cancel.set()
    with pytest.raises(Cancelled):
        engine.run(up_studio, engine.UpscaleRequest(image=str(tmp_path / "tile.png"), upscaler=""), job)


# ---- the detail pass ------------------------------------------------------------------------------------------------
DETAIL = engine.DetailPass(0.5, PROMPT, "", num_inference_steps=2, guidance_scale=1.0, scheduler="DPM++ 2M", seed=3,
                           tile_size=64, tile_overlap=32)  # fmt: skip
SIDE, STEP = 128, 32  # a 128 px picture in 64 px tiles every 32 px; moves by 32 px = 4 latent px


@pytest.fixture(scope="module")
def detailed(up_studio: Studio) -> dict[tuple[str | None, bool], np.ndarray]:
    picture = (smooth(SIDE, SIDE, seed=5) * 255).astype(np.uint8)
    noise = torch.randn((1, 4, SIDE // 8, SIDE // 8), generator=torch.Generator().manual_seed(9))
    runs = {}
    for repeat in ("full", "half_drop", None):
        geometry = repeat or "full"
        for moved in (False, True):
            image = patterns.translate(picture, STEP, STEP, geometry) if moved else picture
            field = noise
            if moved:
                field = torch.from_numpy(patterns.translate(noise.numpy(), STEP // 8, STEP // 8, geometry, axes=(2, 3)))
            runs[(repeat, moved)] = engine.detail_pass(up_studio, Image.fromarray(image), repeat, DETAIL, noise=field)
    return runs


@pytest.mark.parametrize("repeat", ["full", "half_drop"])
def test_the_detail_pass_keeps_the_repeat_seamless(detailed, repeat: str) -> None:
    """Moving the picture by 32 px and its starting noise by 4 latent px moves the detailed picture by 32 px: the
    tiles lie on the print, so the tile's edge is painted like any other place."""
    expected = patterns.translate(detailed[(repeat, False)], STEP, STEP, repeat)
    assert np.abs(detailed[(repeat, True)] - expected).max() < 1e-4
    assert np.abs(detailed[(repeat, False)] - smooth(SIDE, SIDE, seed=5)).mean() > 0.01  # it did repaint


def test_a_detail_pass_over_the_tile_alone_would_break_the_repeat(detailed) -> None:
    expected = patterns.translate(detailed[(None, False)], STEP, STEP, "full")
    assert np.abs(detailed[(None, True)] - expected).max() > 0.05


def test_the_detail_pass_applies_the_prompts_lora_and_weight_0_is_no_lora(tiny_dir: Path, tmp_path: Path) -> None:
    """The detail pass is a mode's pipeline like any other: a `<lora:...>` tag in its prompt takes effect, per tile
    (the tile takes the GPU lock for itself, so the request's LoRA weights are set again for each)."""
    studio = app.create_studio(make_settings(tiny_dir, tmp_path, lora_dir=tiny_dir / "loras"))
    picture = Image.fromarray((smooth(96, 96, seed=2) * 255).astype(np.uint8))
    noise = torch.randn((1, 4, 12, 12), generator=torch.Generator().manual_seed(4))

    def run(prompt: str) -> np.ndarray:
        detail = dataclasses.replace(DETAIL, prompt=prompt)
        return engine.detail_pass(studio, picture, "full", detail, noise=noise)

    plain = run(PROMPT)
    assert np.array_equal(run(PROMPT + " <lora:house-florals:0>"), plain)
    assert np.abs(run(PROMPT + " <lora:house-florals:1>") - plain).max() > 1e-3


def test_detail_tiles_cover_the_picture_and_blend_with_weights_that_never_vanish() -> None:
    for length, wrap in ((128, True), (100, True), (100, False), (64, False)):
        starts = engine.starts(length, 64, 16, wrap)
        covered = np.zeros(length + 64, bool)
        for start in starts:
            covered[start : start + 64] = True
        assert covered[:length].all() and (wrap or starts[-1] + 64 == length)
    weights = engine.feather(64, 16)
    assert weights.min() > 0 and weights.max() == 1 and np.allclose(weights, weights[::-1])


# ---- print export ---------------------------------------------------------------------------------------------------
def test_a_30cm_tile_at_300_dpi_prints_3543_px_with_the_dpi_stored_under_a_name_that_says_so(up_studio: Studio) -> None:
    """The size check takes the cheap path (Lanczos): on two CPU cores the tiny ESRGAN's last pass to 4,096 px
    alone takes a minute (benchmarks/bench_upscale.py times it); the next test runs the model on a smaller print."""
    req = TextileRequest(PROMPT, width=64, height=64, physical_width=30.0, unit="cm", dpi=300, upscaler="Lanczos",
                         num_inference_steps=1, guidance_scale=1.0, seed=4)  # fmt: skip
    done = textile(up_studio, req).exports[0]
    assert done.print_file.name == "florals-roses-leaves-fulldrop-30x30cm-300dpi.png"
    assert done.tile.path.name == "florals-roses-leaves-fulldrop-tile-seed4.png"
    assert done.preview.name == "florals-roses-leaves-fulldrop-repeat-preview-seed4.png"
    assert up_studio.outputs.owns(done.print_file) and done.print_file.parent.parent.parent == up_studio.outputs.root
    with Image.open(done.print_file) as printed:
        assert printed.size == (3543, 3543) and round(printed.info["dpi"][0]) == 300
        params = parse_infotext(read_parameters(printed) or "").params
    assert params["Postprocess upscaler"] == "Lanczos" and params["Postprocess upscale to"] == "3543x3543"


def test_the_print_export_runs_the_upscaler_and_records_it_for_restore(up_studio: Studio) -> None:
    req = TextileRequest(PROMPT, repeat="half_drop", width=64, height=128, physical_height=2.54, unit="cm", dpi=400,
                         upscaler="", num_inference_steps=1, guidance_scale=1.0, seed=4)  # fmt: skip
    done = textile(up_studio, req).exports[0]
    assert done.print_file.name == "florals-roses-leaves-halfdrop-1p3x2p5cm-400dpi.png"
    with Image.open(done.print_file) as printed:
        assert printed.size == (200, 400) and round(printed.info["dpi"][0]) == 400
        params = parse_infotext(read_parameters(printed) or "").params
        big = np.asarray(printed.convert("RGB"), dtype=np.float64)
    assert params["Postprocess upscaler"] == FILE_NAME and len(params["Upscaler hash"]) == 10
    assert params["Postprocess upscale to"] == "200x400" and params["Export"] == "print"
    # seamless at print size: the steps across the half-drop's edges are like the steps inside
    steps = patterns.seam_steps(big, "half_drop")
    assert steps.seam < 1.5 * steps.interior
    restored = Restorer(BUILTIN).from_text(format_infotext(PROMPT, "", params))
    assert restored.mode == "textile" and restored.values["upscaler"] == FILE_NAME


def test_half_drop_and_brick_prints_get_an_even_side_so_the_offset_stays_exact() -> None:
    for repeat, (width, height) in (("half_drop", (3543, 3544)), ("brick", (3544, 3543)), ("full", (3543, 3543))):
        req = TextileRequest(PROMPT, repeat=repeat, physical_width=30.0, unit="cm", dpi=300)
        assert print_size(req, 256, 256) == (width, height)


def test_download_names_are_slugs_whatever_the_prompt_says() -> None:
    for prompt in ("../../etc/passwd", "Röses & Lëaves / <script>", "", "a" * 500, "花柄 florals"):
        name = patterns.print_name(prompt, "half_drop", (30.0, 29.97), "cm", 300)
        assert set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and len(name) <= 96
        assert name.endswith("-halfdrop-30x30cm-300dpi")
    assert (
        patterns.print_name("Röses & Lëaves", "brick", (10.5, 10.5), "in", 150)
        == "roses-leaves-brick-10p5x10p5in-150dpi"
    )


# ---- through Gradio's door -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path, Path]]:
    folder = tmp_path_factory.mktemp("upscale")
    models = folder / "upscalers"  # empty until a test puts the tiny ESRGAN there
    tile = Image.fromarray((smooth(32, 32, seed=2) * 255).astype(np.uint8))
    tile.save(
        folder / "tile.png",
        pnginfo=pnginfo(format_infotext(PROMPT, "", {"Steps": 1, "Seed": 4, "Repeat": "half_drop"})),
    )
    settings = make_settings(tiny_dir, folder / "outputs", port=free_port(), upscalers_dir=models)
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False), folder, models
    finally:
        demo.close()


def test_without_an_upscaler_file_the_endpoint_says_how_to_get_one_and_lanczos_works(served) -> None:
    client, folder, models = served
    shutil.rmtree(models, ignore_errors=True)
    with pytest.raises(Exception, match=r"No upscaler model file.*RealESRGAN_x4plus\.pth.*BSD-3-Clause.*Lanczos"):
        client.predict(image=handle_file(str(folder / "tile.png")), api_name="/upscale")
    _, files, _, infotext = client.predict(
        image=handle_file(str(folder / "tile.png")), upscaler="Lanczos", scale=2, api_name="/upscale"
    )
    assert Image.open(files[0]).size == (64, 64) and "Postprocess upscaler: Lanczos" in infotext


def test_the_endpoint_returns_a_seamless_png_that_records_how_it_was_made(served, tiny_dir: Path) -> None:
    client, folder, models = served
    models.mkdir(exist_ok=True)
    shutil.copy(tiny_dir / "upscaler" / FILE_NAME, models / FILE_NAME)
    gallery, files, seed, infotext = client.predict(image=handle_file(str(folder / "tile.png")), api_name="/upscale")
    with Image.open(files[0]) as made:
        assert made.format == "PNG" and made.size == (128, 128)
        params = parse_infotext(read_parameters(made) or "").params
        made_pixels = np.asarray(made.convert("RGB"))
    assert params["Postprocess upscaler"] == FILE_NAME and params["Repeat"] == "half_drop"  # read from the tile
    assert params["Postprocess upscale by"] == "4.0" and seed == 4
    assert params["Upscaler hash"] == file_sha256(models / FILE_NAME)[:10]
    # the same pixels as the engine's seamless half-drop upscale of that tile
    tile = np.asarray(Image.open(folder / "tile.png").convert("RGB"), dtype=np.float32) / 255.0
    model = upscale.Upscaler(upscale.load_model(str(models / FILE_NAME), torch.device("cpu"), torch.float32), "", "")
    expected = upscale.model_pass(model, tile, "half_drop")
    assert np.abs(made_pixels.astype(np.float32) / 255.0 - expected).max() <= 1 / 255 + 1e-6
    mode, values, _ = client.predict(png=handle_file(files[0]), api_name="/restore")
    values = json.loads(values) if isinstance(values, str) else values
    assert mode == "upscale" and values["upscaler"] == FILE_NAME and values["repeat"] == "half_drop"
    assert (values["width"], values["height"], values["scale"]) == (128, 128, 4.0)
