"""PNG restore: A1111 and Atelier PNGs fill the right tab with the request values they were made with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from PIL import Image

from studio.engine import inpaint, refine, restyle, textile
from studio.engine.contract import Studio
from studio.engine.saving import base_params
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import format_infotext, pnginfo
from studio.modes import BUILTIN
from studio.presets import field_table
from studio.restore import Restored, RestoreError, Restorer
from studio.settings import Limits

A1111 = (
    "photo of a woman in a red silk slip dress, studio light\n"
    "Negative prompt: blurry, watermark\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 123, Size: 512x768, "
    "Model hash: 3fb7c5ab4c, Model: dreamlike-photoreal-2.0"
)
MODE_FIELDS = field_table(BUILTIN, Limits())


def restore_from_text(text: str, limits: Limits | None = None) -> Restored:
    return Restorer(BUILTIN, limits).from_text(text)


def restore_from_png(source: object, limits: Limits | None = None) -> Restored:
    return Restorer(BUILTIN, limits).from_png(source)  # type: ignore[arg-type]


NOT_RECORDED = {"batch_size", "batch_count"}  # how many images were made is not a property of one image
# an image prompt is recorded only with pictures (its restore: tests/test_image_prompt.py)
NOT_RECORDED |= {"ip_adapter_scale", "ip_adapter_model"}


def png(tmp_path: Path, infotext: str | None, name: str = "in.png") -> Path:
    path = tmp_path / name
    Image.new("RGB", (16, 16), (200, 180, 160)).save(path, pnginfo=pnginfo(infotext) if infotext else None)
    return path


def assert_restores(req: object, infotext: str, mode: str, absent: set[str] = frozenset()) -> None:
    """Restoring gives back every recorded field of the request, and nothing it did not record."""
    restored = restore_from_text(infotext)
    assert restored.mode == mode and restored.ignored == [], restored.note
    recorded = set(MODE_FIELDS[mode]) - NOT_RECORDED - absent
    assert set(restored.values) == recorded
    assert dataclasses.replace(req, **restored.values) == req  # type: ignore[type-var]


def test_the_field_notes_a1111_example_restores_into_txt2img(tmp_path: Path) -> None:
    restored = restore_from_png(png(tmp_path, A1111))
    assert restored.mode == "txt2img"
    assert restored.values == {
        "prompt": "photo of a woman in a red silk slip dress, studio light",
        "negative_prompt": "blurry, watermark",
        "num_inference_steps": 30,
        "scheduler": "DPM++ 2M Karras",
        "guidance_scale": 7.0,
        "seed": 123,
        "width": 512,
        "height": 768,
    }
    assert restored.model == "dreamlike-photoreal-2.0" and restored.ignored == []


def test_an_a1111_img2img_png_restores_into_refine_as_one_loop(tmp_path: Path) -> None:
    restored = restore_from_png(png(tmp_path, A1111 + ", Denoising strength: 0.75"))
    assert restored.mode == "refine"
    assert restored.values["strength"] == 0.75 and restored.values["seed"] == 123
    assert restored.values["scheduler"] == "DPM++ 2M Karras" and restored.values["guidance_scale"] == 7.0
    assert restored.values["loops"] == 1 and restored.values["strength_schedule"] == "constant"
    assert restored.ignored == ["Size"] and "Size (not a setting of the Refine tab)" in restored.note
    refine.check_refine(refine.RefineRequest(image=None, **restored.values), Limits())


@pytest.mark.parametrize(
    ("extra", "mode"),
    [
        (", Denoising strength: 0.4, Mask blur: 4", "inpaint"),
        (', ControlNet 0: "Module: softedge_hed, Model: control_v11p_sd15_softedge, Weight: 0.8"', "restyle"),
        (", Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent", "txt2img"),
    ],
)
def test_a1111_pngs_go_to_the_tab_that_can_redo_them(extra: str, mode: str) -> None:
    assert restore_from_text(A1111 + extra).mode == mode


def test_unknown_keys_are_ignored_and_reported() -> None:
    restored = restore_from_text(A1111 + ', Version: v1.10.1, Lora hashes: "film: 0123abcd", Clip skip: 2')
    assert restored.values == restore_from_text(A1111).values
    assert restored.ignored == ["Version", "Lora hashes", "Clip skip"]
    assert all(key in restored.note for key in restored.ignored)


def test_values_the_studio_would_refuse_are_left_out_and_said_why() -> None:
    text = A1111.replace("Steps: 30", "Steps: 500").replace("DPM++ 2M", "DPM++ SDE").replace("Seed: 123", "Seed: x")
    restored = restore_from_text(text)
    assert not {"num_inference_steps", "scheduler", "seed"} & set(restored.values)
    assert restored.ignored == ["Steps", "Sampler", "Seed"]
    assert "between 1 and 150" in restored.note and "DPM++ SDE" in restored.note
    assert "num_inference_steps" in restore_from_text(text.replace("500", "40"), Limits(max_steps=50)).values
    assert "Steps" in restore_from_text(text.replace("500", "60"), Limits(max_steps=50)).ignored


@pytest.mark.parametrize(
    "prompt",
    [
        "vestido de seda, 絹のドレス, платье из шёлка, فستان حريري 👗",
        'a trench coat, belted: "double-breasted", knee length',
    ],
)
def test_an_atelier_txt2img_png_restores_its_exact_request(studio: Studio, prompt: str) -> None:
    req = Txt2ImgRequest(
        prompt=prompt,
        negative_prompt="blurry, text",
        num_inference_steps=2,
        guidance_scale=5.5,
        width=64,
        height=72,
        scheduler="Euler a",
        seed=4242,
    )
    path = txt2img(studio, req).paths[0]
    restored = restore_from_png(path)
    assert restored.mode == "txt2img" and restored.ignored == []
    assert Txt2ImgRequest(**restored.values) == req
    assert restore_from_png(Image.open(path)).values == restored.values  # a PIL image (gr.Image type="pil") too


def test_an_atelier_refine_png_restores_the_loop_that_made_it(studio: Studio) -> None:
    source = Image.new("RGB", (64, 64), (90, 120, 160))
    req = refine.RefineRequest(
        image=source,
        prompt="a denim jacket",
        negative_prompt="text",
        strength=0.6,
        num_inference_steps=4,
        guidance_scale=6.0,
        scheduler="DDIM",
        seed=77,
        loops=2,
        seed_policy="increment",
        color_correction=True,
    )
    second = refine.refine(studio, req).images[-1]
    restored = restore_from_png(second.path)
    assert restored.mode == "refine" and restored.ignored == []
    assert "Loop 2/2" in restored.note
    again = dataclasses.replace(req, image=Image.open(second.parent), **restored.values)
    assert again.loops == 1 and again.seed == second.seed and again.strength == second.strength
    assert refine.refine(studio, again).images[0].image.tobytes() == second.image.tobytes()


def test_an_atelier_inpaint_png_restores_its_request(studio: Studio) -> None:
    req = inpaint.InpaintRequest(
        image=None,
        prompt="a lace collar",
        negative_prompt="text",
        strength=0.55,
        num_inference_steps=12,
        guidance_scale=8.0,
        scheduler="UniPC",
        seed=5,
        mask_blur=9,
        invert_mask=True,
        masked_content="latent_noise",
        inpaint_area="only_masked",
        padding=48,
    )
    text = format_infotext(req.prompt, req.negative_prompt, inpaint.inpaint_params(studio, req, 5, (64, 64)))
    assert_restores(req, text, "inpaint")


def test_an_atelier_restyle_png_restores_its_request(studio: Studio) -> None:
    req = restyle.RestyleRequest(
        image=None,
        prompt="a linen dress",
        preprocessor="none",
        invert=True,
        controlnet_conditioning_scale=0.7,
        control_guidance_start=0.1,
        control_guidance_end=0.8,
        guess_mode=True,
        width=64,
        height=128,
        num_inference_steps=9,
        guidance_scale=4.5,
        scheduler="Euler",
        seed=9,
        repeat="brick",
    )
    params = {
        **base_params(studio, req, 9, 64, 128, "restyle"),
        **restyle.controlnet_params(studio, req, restyle.request_units(req, False), [64]),
    }
    thresholds = {"low_threshold", "high_threshold"}  # written for canny units only
    assert_restores(req, format_infotext(req.prompt, "", params), "restyle", absent=thresholds)
    fixed = dataclasses.replace(req, preprocessor="hed", invert=False, preprocessor_resolution=256, repeat=None)
    params = {
        **base_params(studio, fixed, 9, 64, 128, "restyle"),
        **restyle.controlnet_params(studio, fixed, restyle.request_units(fixed, False), [256]),
    }
    assert_restores(fixed, format_infotext(fixed.prompt, "", params), "restyle", absent={"repeat", *thresholds})


@pytest.mark.parametrize(("physical", "unit"), [((0.0, 0.0), "cm"), ((30.0, 0.0), "cm"), ((4.0, 8.0), "in")])
def test_an_atelier_textile_png_restores_the_same_print(
    studio: Studio, physical: tuple[float, float], unit: str
) -> None:
    req = textile.TextileRequest(
        prompt="a paisley",
        negative_prompt="seam",
        repeat="half_drop",
        width=64,
        height=128,
        num_inference_steps=7,
        guidance_scale=6.5,
        scheduler="DDIM",
        seed=3,
        image="swatch.png",
        strength=0.45,
        dpi=150,
        physical_width=physical[0],
        physical_height=physical[1],
        unit=unit,
    )
    out_size = textile.print_size(req, 64, 128)
    text = format_infotext(req.prompt, req.negative_prompt, textile.tile_params(studio, req, 3, (64, 128), out_size))
    restored = restore_from_text(text)
    assert restored.mode == "textile" and restored.ignored == []
    again = dataclasses.replace(req, **restored.values)
    assert textile.print_size(again, 64, 128) == out_size
    physical_fields = {"physical_width": req.physical_width, "physical_height": req.physical_height}
    assert dataclasses.replace(again, **physical_fields) == req
    assert set(restored.values) == set(MODE_FIELDS["textile"]) - NOT_RECORDED - {"colors"}


def test_a_png_without_metadata_says_so(tmp_path: Path) -> None:
    with pytest.raises(RestoreError, match="no generation settings"):
        restore_from_png(png(tmp_path, None))
    jpeg = tmp_path / "photo.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    with pytest.raises(RestoreError, match="JPEG file carries no generation settings"):
        restore_from_png(jpeg)


def test_a_file_that_is_not_an_image_is_refused_in_words(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(RestoreError, match="not an image"):
        restore_from_png(path)


def test_a_refine_source_copy_is_not_restored_as_settings(tmp_path: Path) -> None:
    text = format_infotext("", "", {"Size": "64x64", "Mode": "refine-source", "Loop": 0})
    with pytest.raises(RestoreError, match="Refine source"):
        restore_from_png(png(tmp_path, text))
