"""Inpaint: only the brushed region changes, the rest is the input byte for byte, and the model sees what it should.

Checked for both checkpoint kinds: the shared base (4-channel UNet, latent blending) and a dedicated 9-channel
inpainting UNet (the tiny twin at tiny_dir/"inpaint", chosen through settings).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline
from PIL import Image

from studio import masks
from studio.cache import ModelCache
from studio.engine.checks import RequestError
from studio.engine.contract import Studio
from studio.engine.inpaint import InpaintRequest, inpaint, load_inputs, pipeline
from studio.images import load_image
from studio.metadata import parse_infotext, read_parameters
from studio.outputs import Outputs
from studio.schedulers import get_sampler
from studio.tensors import unique_param_bytes
from tests.conftest import make_settings, pixels

PROMPT = "photo of a red silk sleeve"
FAST = {"prompt": PROMPT, "num_inference_steps": 2, "strength": 0.9, "seed": 7, "scheduler": "DDIM"}


@pytest.fixture(scope="module")
def inpaint_studio(tiny_dir, tmp_path_factory) -> Studio:
    settings = make_settings(
        tiny_dir, tmp_path_factory.mktemp("inpaint-outputs"), inpaint_model=str(tiny_dir / "inpaint")
    )
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


@pytest.fixture(params=["base", "inpaint-unet"])
def any_studio(request, studio, inpaint_studio) -> Studio:
    return studio if request.param == "base" else inpaint_studio


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A smooth random photo (blocks scaled up), so resizing and VAE round trips behave like on real pictures."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(1, size[1] // 8), max(1, size[0] // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize(size, Image.Resampling.BICUBIC)


def box_mask(size: tuple[int, int], box: masks.Box) -> Image.Image:
    mask = Image.new("L", size, 0)
    mask.paste(255, box)
    return mask


def assert_kept_outside_and_changed_inside(
    result: Image.Image, original: Image.Image, mask: Image.Image, blur: int
) -> None:
    assert result.size == original.size
    alpha = np.asarray(masks.feather(mask, blur))
    outside, inside = alpha == 0, np.asarray(mask) == 255
    assert outside.mean() > 0.4  # the kept region is a real part of the picture, not a sliver
    got, want = pixels(result), pixels(original)
    assert np.array_equal(got[outside], want[outside])
    assert np.abs(got[inside] - want[inside]).mean() > 2


@contextlib.contextmanager
def unet_sizes(unet: torch.nn.Module) -> Iterator[list[tuple[int, int]]]:
    """Record the pixel size (latent size x 8) of every UNet call, through a removable forward pre-hook."""
    seen: list[tuple[int, int]] = []

    def hook(module: Any, args: tuple[Any, ...]) -> None:
        seen.append((args[0].shape[-1] * 8, args[0].shape[-2] * 8))

    handle = unet.register_forward_pre_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


@pytest.mark.parametrize("inpaint_area", ["whole", "only_masked"])
@pytest.mark.parametrize("masked_content", ["original", "fill", "latent_noise"])
def test_pixels_outside_mask_and_feather_band_are_kept_and_inside_change(any_studio, masked_content, inpaint_area):
    image, mask = photo((96, 64)), box_mask((96, 64), (40, 20, 64, 44))
    req = InpaintRequest(
        image=image,
        mask_image=mask,
        mask_blur=3,
        masked_content=masked_content,
        inpaint_area=inpaint_area,
        padding=6,
        **FAST,
    )
    result = inpaint(any_studio, req)
    assert_kept_outside_and_changed_inside(Image.open(result.paths[0]), image, mask, blur=3)


def test_only_masked_processes_the_region_at_native_size_and_returns_full_size(studio):
    image, mask = photo((200, 120), 1), box_mask((200, 120), (130, 40, 154, 56))
    native = studio.cache.native_size()
    req = InpaintRequest(image=image, mask_image=mask, mask_blur=2, padding=4, inpaint_area="only_masked", **FAST)
    with unet_sizes(pipeline(studio, "DDIM").unet) as seen:
        result = inpaint(studio, req)
    width, height = seen[0]
    assert set(seen) == {(width, height)}
    assert abs(width * height / native**2 - 1) < 0.25  # about the model's native area ...
    box = masks.crop_box(masks.feather(mask, 2), 4)
    assert abs(width / height - (box[2] - box[0]) / (box[3] - box[1])) < 0.25  # ... with the region's aspect
    assert Image.open(result.paths[0]).size == image.size
    with unet_sizes(pipeline(studio, "DDIM").unet) as whole:
        inpaint(studio, InpaintRequest(image=image, mask_image=mask, mask_blur=2, **FAST))
    assert set(whole) == {image.size}


@pytest.mark.parametrize("scheduler", ["DDIM", "DPM++ 2M Karras"])
def test_blur_0_whole_picture_equals_plain_inpaint_pipeline_then_paste_back(studio, tiny_dir, scheduler):
    image, mask = photo((64, 64), 2), box_mask((64, 64), (16, 24, 48, 56))
    req = InpaintRequest(
        image=image,
        mask_image=mask,
        prompt=PROMPT,
        negative_prompt="blurry",
        strength=0.8,
        num_inference_steps=4,
        guidance_scale=6.0,
        scheduler=scheduler,
        seed=321,
        mask_blur=0,
    )
    ours = Image.open(inpaint(studio, req).paths[0])
    plain = StableDiffusionInpaintPipeline.from_pretrained(tiny_dir / "base", safety_checker=None)
    plain.set_progress_bar_config(disable=True)
    plain.scheduler = get_sampler(scheduler).build(plain.scheduler.config)
    expected = plain(
        PROMPT,
        negative_prompt="blurry",
        image=image,
        mask_image=mask,
        strength=0.8,
        num_inference_steps=4,
        guidance_scale=6.0,
        generator=torch.Generator("cpu").manual_seed(321),
    ).images[0]
    assert np.array_equal(pixels(ours), pixels(Image.composite(expected, image, mask)))


def test_all_white_mask_works_like_img2img_over_the_whole_image(studio, tiny_dir):
    image, white = photo((64, 64), 3), Image.new("L", (64, 64), 255)
    req = InpaintRequest(
        image=image,
        mask_image=white,
        prompt=PROMPT,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=7.0,
        scheduler="DDIM",
        seed=11,
        mask_blur=4,
    )
    ours = Image.open(inpaint(studio, req).paths[0])
    img2img = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_dir / "base", safety_checker=None)
    img2img.set_progress_bar_config(disable=True)
    img2img.scheduler = get_sampler("DDIM").build(img2img.scheduler.config)
    expected = img2img(
        PROMPT,
        image=image,
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=7.0,
        generator=torch.Generator("cpu").manual_seed(11),
    ).images[0]
    # Same latents, same steps; the two pipelines differ only in float rounding (~5e-6 of the range), which can
    # flip a pixel that sits exactly on a rounding boundary by one level.
    diff = np.abs(pixels(ours) - pixels(expected))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_all_white_mask_repaints_everywhere_with_the_inpainting_checkpoint(inpaint_studio):
    image = photo((64, 64), 3)
    result = inpaint(inpaint_studio, InpaintRequest(image=image, mask_image=Image.new("L", (64, 64), 255), **FAST))
    changed = np.any(pixels(result.paths[0]) != pixels(image), axis=-1)
    assert changed.mean() > 0.9


def test_editor_value_without_strokes_asks_to_draw_a_mask_first(studio):
    image = photo((64, 64))
    for layers in ([], [Image.new("RGBA", (64, 64), (0, 0, 0, 0))]):
        value = {"background": image, "layers": layers, "composite": image}
        with pytest.raises(RequestError, match="Draw a mask first"):
            inpaint(studio, InpaintRequest(image=value, **FAST))


def test_editor_brush_layers_are_the_mask_whatever_their_colour(studio):
    image = photo((64, 48))
    red, black = Image.new("RGBA", (64, 48), (0, 0, 0, 0)), Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    red.paste((230, 20, 20, 255), (4, 4, 20, 20))
    black.paste((0, 0, 0, 255), (30, 10, 50, 30))
    _, mask = load_inputs(InpaintRequest(image={"background": image, "layers": [red, black]}), studio.limits)
    expected = masks.combine([box_mask((64, 48), (4, 4, 20, 20)), box_mask((64, 48), (30, 10, 50, 30))])
    assert np.array_equal(np.asarray(mask), np.asarray(expected))


def test_uploaded_mask_wins_over_editor_layers_and_invert_flips_it(studio):
    image = photo((64, 48))
    layer = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    layer.paste((255, 255, 255, 255), (0, 0, 8, 8))
    upload = box_mask((64, 48), (10, 10, 30, 30))
    req = InpaintRequest(image={"background": image, "layers": [layer]}, mask_image=upload, invert_mask=True)
    _, mask = load_inputs(req, studio.limits)
    assert np.array_equal(np.asarray(mask), 255 - np.asarray(upload))


def test_mask_of_another_size_is_resized_nearest_and_used(studio):
    image = photo((96, 64), 4)
    small = box_mask((24, 16), (12, 4, 18, 10))  # a quarter-size mask
    result = inpaint(studio, InpaintRequest(image=image, mask_image=small, mask_blur=2, **FAST))
    assert_kept_outside_and_changed_inside(
        Image.open(result.paths[0]), image, small.resize((96, 64), Image.Resampling.NEAREST), blur=2
    )


def _exif_rotated(upright: Image.Image) -> Image.Image:
    """The upright picture stored rotated, with EXIF orientation 6 saying how to turn it back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    upright.transpose(Image.Transpose.ROTATE_90).save(buffer, format="PNG", exif=exif.tobytes())
    return Image.open(io.BytesIO(buffer.getvalue()))


def _as_16bit(image: Image.Image) -> Image.Image:
    return Image.fromarray((np.asarray(image.convert("L")).astype(np.uint16) * 257), mode="I;16")


@pytest.mark.parametrize(
    "convert",
    [
        lambda im: im.convert("RGBA"),
        lambda im: im.convert("P", palette=Image.Palette.ADAPTIVE),
        _as_16bit,
        lambda im: im.convert("CMYK"),
        _exif_rotated,
    ],
    ids=["rgba", "palette", "16bit", "cmyk", "exif-rotated"],
)
def test_non_rgb_and_exif_rotated_inputs_are_normalised_so_mask_and_image_align(studio, convert):
    upright = photo((64, 96), 5)  # portrait, so a rotation left in place would not fit the mask
    value = convert(upright)
    mask = box_mask((64, 96), (8, 50, 40, 80))
    normalised = load_image(value, studio.limits.max_pixels)
    assert normalised.size == upright.size
    result = inpaint(studio, InpaintRequest(image=value, mask_image=mask, mask_blur=2, **FAST))
    assert_kept_outside_and_changed_inside(Image.open(result.paths[0]), normalised, mask, blur=2)


def test_metadata_records_mask_blur_masked_content_area_padding_and_strength(studio):
    image, mask = photo((96, 64)), box_mask((96, 64), (40, 20, 64, 44))
    req = InpaintRequest(
        image=image, mask_image=mask, mask_blur=5, masked_content="fill", inpaint_area="only_masked", padding=12, **FAST
    )
    result = inpaint(studio, req)
    params = parse_infotext(read_parameters(Image.open(result.paths[0])) or "").params
    assert params["Mask blur"] == "5" and params["Masked content"] == "fill"
    assert params["Inpaint area"] == "Only masked" and params["Masked area padding"] == "12"
    assert params["Denoising strength"] == "0.9" and params["Seed"] == "7" and params["Size"] == "96x64"


def test_inpainting_checkpoint_has_its_own_unet_and_shares_vae_and_text_encoder(inpaint_studio):
    cache = inpaint_studio.cache
    pipe, base = pipeline(inpaint_studio, "DDIM"), cache.base()
    assert pipe.unet.config.in_channels == 9 and pipe.unet is not base.unet
    assert pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
    assert cache.resident_bytes() == unique_param_bytes(base) + unique_param_bytes(pipe.unet)
    assert {row.kind for row in cache.resident()} == {"base", "inpaint_unet"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"masked_content": "blur"}, "masked content"),
        ({"inpaint_area": "sleeve"}, "inpaint area"),
        ({"strength": 0.0}, "strength"),
        ({"strength": 0.1, "num_inference_steps": 5}, "nothing to denoise"),
        ({"mask_image": Image.new("L", (64, 64), 0)}, "mask is empty"),
        ({"mask_image": None}, "No mask given"),
    ],
)
def test_bad_requests_are_refused_in_words(studio, change, message):
    fields = {"image": photo((64, 64)), "mask_image": box_mask((64, 64), (8, 8, 24, 24)), **FAST, **change}
    with pytest.raises(RequestError, match=message):
        inpaint(studio, InpaintRequest(**fields))


# ---- the served endpoint ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(running_app):
    from gradio_client import Client

    url, _ = running_app
    return Client(url, verbose=False)


def _files(tmp_path, **images: Image.Image) -> dict[str, Any]:
    from gradio_client import handle_file

    paths = {}
    for name, image in images.items():
        image.save(tmp_path / f"{name}.png")
        paths[name] = handle_file(str(tmp_path / f"{name}.png"))
    return paths


API = {
    "prompt": PROMPT,
    "negative_prompt": "",
    "invert_mask": False,
    "mask_blur": 3,
    "masked_content": "original",
    "padding": 6,
    "strength": 0.9,
    "num_inference_steps": 2,
    "guidance_scale": 7.0,
    "scheduler": "DDIM",
    "seed": 7,
    "batch_size": 1,
    "batch_count": 1,
    "api_name": "/inpaint",
}


def test_api_inpaints_from_image_and_mask_files_without_the_editor(client, tmp_path):
    image, mask = photo((96, 64), 6), box_mask((96, 64), (40, 20, 64, 44))
    files = _files(tmp_path, image=image, mask_image=mask)
    gallery, seed, infotext = client.predict(
        editor=None, image=files["image"], mask_image=files["mask_image"], inpaint_area="only_masked", **API
    )
    assert seed == 7 and "Inpaint area: Only masked" in infotext
    assert_kept_outside_and_changed_inside(Image.open(gallery[0]["image"]), image, mask, blur=3)


def test_api_editor_value_uses_brush_layer_alpha_and_refuses_an_empty_canvas(client, tmp_path):
    image, mask = photo((96, 64), 7), box_mask((96, 64), (10, 10, 40, 40))
    layer = Image.new("RGBA", (96, 64), (0, 0, 0, 0))
    layer.paste((255, 59, 107, 255), (10, 10, 40, 40))  # the pink brush
    files = _files(tmp_path, background=image, layer=layer)
    editor = {"background": files["background"], "layers": [files["layer"]], "composite": None}
    gallery, _, _ = client.predict(editor=editor, image=None, mask_image=None, inpaint_area="whole", **API)
    assert_kept_outside_and_changed_inside(Image.open(gallery[0]["image"]), image, mask, blur=3)
    empty = {"background": files["background"], "layers": [], "composite": None}
    with pytest.raises(Exception, match="Draw a mask first"):
        client.predict(editor=empty, image=None, mask_image=None, inpaint_area="whole", **API)
