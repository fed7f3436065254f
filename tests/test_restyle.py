"""Restyle: HED edges as controlnet_aux makes them, a ControlNet that is wired in (and only where asked), no leaks."""

from __future__ import annotations

import functools
import inspect
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from controlnet_aux import HEDdetector
from diffusers import ControlNetModel
from PIL import Image, ImageDraw

from studio import edges
from studio.engine.checks import RequestError
from studio.engine.contract import Result, Studio
from studio.engine.restyle import RestyleRequest, detect_edges, restyle, zero_residuals
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext, read_parameters
from studio.registry import HED_ANNOTATOR_FILE
from studio.tensors import unique_param_bytes
from studio.ui.tab import ModeCalls, Tab, inputs_for
from tests.conftest import final, pixels

PROMPT = "fashion illustration of a long coat, watercolour"
FAST = {"num_inference_steps": 2, "scheduler": "Euler", "seed": 7}


def silhouette(size: tuple[int, int] = (64, 64), mode: str = "RGB") -> Image.Image:
    """A dress-like shape on light paper: a bodice, a flared skirt and a belt line."""
    width, height = size
    image = Image.new("RGB", size, (236, 230, 220))
    draw = ImageDraw.Draw(image)
    draw.rectangle((width * 0.38, height * 0.1, width * 0.62, height * 0.4), fill=(120, 30, 40))
    draw.polygon(
        [
            (width * 0.38, height * 0.4),
            (width * 0.62, height * 0.4),
            (width * 0.85, height * 0.92),
            (width * 0.15, height * 0.92),
        ],
        fill=(150, 40, 60),
    )
    draw.line((width * 0.38, height * 0.42, width * 0.62, height * 0.42), fill=(20, 20, 20), width=2)
    return image.convert(mode)


@pytest.fixture(scope="module")
def reference_hed(tiny_dir: Path) -> HEDdetector:
    return HEDdetector.from_pretrained(str(tiny_dir / "annotator"), filename=HED_ANNOTATOR_FILE)


def generate(studio: Studio, image: object = None, **overrides: object) -> Result:
    fields = {"image": silhouette() if image is None else image, "prompt": PROMPT, **FAST, **overrides}
    return restyle(studio, RestyleRequest(**fields))  # type: ignore[arg-type]


# ---- edge maps --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "resolution"), [((64, 64), 64), ((128, 128), 128), ((128, 64), 64)])
@pytest.mark.parametrize("preprocessor", ["hed", "hed_safe"])
def test_edge_map_equals_controlnet_aux_hed(
    studio: Studio, reference_hed: HEDdetector, size: tuple[int, int], resolution: int, preprocessor: str
) -> None:
    image = silhouette(size)
    ours = detect_edges(studio, image, preprocessor, resolution, width=size[0], height=size[1])
    theirs = reference_hed(
        image,
        detect_resolution=resolution,
        image_resolution=resolution,
        safe=preprocessor == "hed_safe",
        output_type="pil",
    )
    assert ours.size == theirs.size == size
    assert np.array_equal(pixels(ours), pixels(theirs))


def test_safe_edges_are_the_quantised_plain_edges(studio: Studio) -> None:
    """controlnet_aux's "safe" HED quantises edge strength (safe_step): fewer levels, not the plain map."""
    plain = pixels(detect_edges(studio, silhouette(), "hed", 64))
    safe = pixels(detect_edges(studio, silhouette(), "hed_safe", 64))
    assert not np.array_equal(plain, safe)
    assert len(np.unique(safe)) < len(np.unique(plain))


def test_pixel_perfect_resolution_is_the_output_short_side(studio: Studio, reference_hed: HEDdetector) -> None:
    image = silhouette((128, 64))
    ours = detect_edges(studio, image, "hed", None, width=128, height=64)
    theirs = reference_hed(image, detect_resolution=64, image_resolution=64, output_type="pil")
    assert np.array_equal(pixels(ours), pixels(theirs))


def test_own_sketch_is_used_as_drawn_or_inverted(studio: Studio) -> None:
    sketch = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(sketch).line((8, 8, 56, 56), fill=0, width=3)
    as_drawn = pixels(detect_edges(studio, sketch, "none"))
    inverted = pixels(detect_edges(studio, sketch, "none", invert=True))
    assert np.array_equal(as_drawn, 255 - inverted)
    assert inverted[32, 32].tolist() == [255] * 3 and inverted[5, 58].tolist() == [0] * 3


def test_transparent_sketch_background_means_no_line(studio: Studio) -> None:
    dark_lines = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(dark_lines).ellipse((12, 12, 52, 52), outline=(10, 10, 10, 255), width=3)
    light_lines = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(light_lines).ellipse((12, 12, 52, 52), outline=(255, 255, 255, 255), width=3)
    for edge in (detect_edges(studio, dark_lines, "none", invert=True), detect_edges(studio, light_lines, "none")):
        array = pixels(edge)
        assert array[32, 32].tolist() == [0] * 3 and array[2, 2].tolist() == [0] * 3  # transparent: no line
        assert array[32, 13].min() > 200  # on the drawn ring: a line


def test_auto_size_keeps_the_input_aspect_at_native_scale() -> None:
    width, height = edges.auto_size((800, 1200), 512)
    assert width % 8 == height % 8 == 0
    assert abs(width / height - 2 / 3) < 0.02
    assert abs(width * height - 512 * 512) / (512 * 512) < 0.03
    assert edges.auto_size((40, 40), 64) == (64, 64)


# ---- the ControlNet's contribution -------------------------------------------------------------------------------
def test_weight_zero_equals_txt2img_pixel_for_pixel(studio: Studio) -> None:
    restyled = generate(studio, controlnet_conditioning_scale=0.0, scheduler="Euler a")
    plain = txt2img(
        studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=2, scheduler="Euler a", seed=7, width=64, height=64)
    )
    assert np.array_equal(pixels(restyled.paths[0]), pixels(plain.paths[0]))


def test_weight_above_zero_changes_the_result(studio: Studio) -> None:
    off = generate(studio, controlnet_conditioning_scale=0.0)
    on = generate(studio, controlnet_conditioning_scale=1.0)
    assert np.abs(pixels(off.paths[0]) - pixels(on.paths[0])).max() > 0


@pytest.mark.parametrize(
    ("start", "end", "weight"), [(0.0, 1.0, 1.0), (0.25, 0.75, 1.0), (0.5, 1.0, 0.8), (0.0, 0.3, 1.0), (0.0, 1.0, 0.0)]
)
def test_controlnet_runs_only_inside_the_guidance_window(
    studio: Studio, start: float, end: float, weight: float
) -> None:
    controlnet, unet = studio.cache.slot("controlnet"), studio.cache.base().unet
    calls = {"controlnet": 0, "unet": 0}
    hooks = [
        controlnet.register_forward_hook(lambda *_: calls.__setitem__("controlnet", calls["controlnet"] + 1)),
        unet.register_forward_hook(lambda *_: calls.__setitem__("unet", calls["unet"] + 1)),
    ]
    try:
        generate(
            studio,
            num_inference_steps=4,
            control_guidance_start=start,
            control_guidance_end=end,
            controlnet_conditioning_scale=weight,
        )
    finally:
        for hook in hooks:
            hook.remove()
    steps = calls["unet"]  # one UNet call per step (the CFG halves run as one batch)
    inside = [i for i in range(steps) if start <= i / steps and (i + 1) / steps <= end]
    assert steps == 4
    assert calls["controlnet"] == (len(inside) if weight else 0)


def test_guess_mode_outside_the_window_pads_with_matching_zeros(studio: Studio) -> None:
    controlnet = studio.cache.slot("controlnet")
    for height, width in ((8, 8), (7, 10)):  # odd latent sizes too (56x80 px)
        sample = torch.randn(2, 4, height, width)
        cond = torch.zeros(2, 3, height * 8, width * 8)
        with torch.no_grad():
            down, mid = controlnet(
                sample, 10, encoder_hidden_states=torch.randn(2, 77, 32), controlnet_cond=cond, return_dict=False
            )
        zeros_down, zeros_mid = zero_residuals(controlnet, sample)
        assert [z.shape for z in zeros_down] == [d.shape for d in down] and zeros_mid.shape == mid.shape
    generate(studio, guess_mode=True, control_guidance_start=0.5)  # the pipeline accepts them


def test_initial_latents_replace_the_seeded_noise(studio: Studio) -> None:
    noise = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(11))
    from_latents = restyle(studio, RestyleRequest(image=silhouette(), prompt=PROMPT, **FAST), latents=noise)
    from_seed = generate(studio, seed=11)
    assert np.array_equal(pixels(from_latents.paths[0]), pixels(from_seed.paths[0]))


# ---- the shared cache -----------------------------------------------------------------------------------------
def test_restyle_leaks_no_state_and_adds_only_its_companions(fresh_studio: Studio, tiny_dir: Path) -> None:
    request = Txt2ImgRequest(prompt=PROMPT, num_inference_steps=2, scheduler="DPM++ 2M Karras", seed=3)
    before = pixels(txt2img(fresh_studio, request).paths[0])
    bytes_before = fresh_studio.cache.resident_bytes()
    generate(fresh_studio, guess_mode=True, control_guidance_end=0.5)
    bytes_after = fresh_studio.cache.resident_bytes()
    generate(fresh_studio, preprocessor="hed_safe")  # a second run loads nothing more
    assert fresh_studio.cache.resident_bytes() == bytes_after
    assert np.array_equal(pixels(txt2img(fresh_studio, request).paths[0]), before)
    controlnet = ControlNetModel.from_pretrained(tiny_dir / "controlnet")
    annotator = HEDdetector.from_pretrained(str(tiny_dir / "annotator"), filename=HED_ANNOTATOR_FILE)
    assert bytes_after - bytes_before == unique_param_bytes(controlnet) + unique_param_bytes(annotator)


# ---- awkward inputs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("image", "preprocessor", "invert"),
    [
        (silhouette(mode="L"), "hed", False),
        (silhouette(mode="RGBA"), "hed", False),
        (silhouette((40, 40)), "hed", False),
        (silhouette((48, 72)), "hed_safe", False),
    ],
    ids=["grayscale", "rgba", "tiny-40x40", "portrait"],
)
def test_awkward_inputs_are_handled(studio: Studio, image: Image.Image, preprocessor: str, invert: bool) -> None:
    result = generate(studio, image, preprocessor=preprocessor, invert=invert, num_inference_steps=1)
    out = Image.open(result.paths[0])
    assert out.size == edges.auto_size(image.size, studio.cache.native_size())
    assert pixels(out).std() > 0


def test_transparent_sketch_restyles(studio: Studio) -> None:
    sketch = Image.new("RGBA", (40, 56), (0, 0, 0, 0))
    ImageDraw.Draw(sketch).polygon([(20, 4), (36, 52), (4, 52)], outline=(0, 0, 0, 255), width=2)
    result = generate(studio, sketch, preprocessor="none", invert=True, num_inference_steps=1)
    assert Image.open(result.paths[0]).size == edges.auto_size((40, 56), studio.cache.native_size())


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"control_guidance_start": 0.6, "control_guidance_end": 0.4}, "before guidance end"),
        ({"preprocessor": "depth"}, "Choose one of"),
        ({"invert": True}, "preprocessor 'none'"),
        ({"image": None}, "upload"),
        ({"controlnet_conditioning_scale": 3.0}, "between"),
        ({"repeat": "diagonal"}, "repeat"),
    ],
)
def test_bad_requests_say_what_to_do(studio: Studio, overrides: dict[str, object], words: str) -> None:
    fields = {"image": silhouette(), "prompt": PROMPT, **FAST, **overrides}
    with pytest.raises(RequestError, match=words):
        restyle(studio, RestyleRequest(**fields))  # type: ignore[arg-type]


# ---- metadata -------------------------------------------------------------------------------------------------
def test_metadata_records_the_controlnet_unit(studio: Studio) -> None:
    result = generate(
        studio,
        preprocessor="hed_safe",
        controlnet_conditioning_scale=0.7,
        control_guidance_start=0.1,
        control_guidance_end=0.9,
    )
    params = parse_infotext(read_parameters(Image.open(result.paths[0])) or "").params
    unit = dict(part.split(": ", 1) for part in params["ControlNet 0"].split(", "))
    assert unit["Module"] == "softedge_hedsafe" and unit["Model"] == "controlnet"
    assert (unit["Weight"], unit["Guidance Start"], unit["Guidance End"]) == ("0.7", "0.1", "0.9")
    assert unit["Processor Res"] == "64" and unit["Pixel Perfect"] == "True" and unit["Guess Mode"] == "False"
    assert params["Mode"] == "restyle" and params["Seed"] == str(result.seed)


# ---- repeat mode ------------------------------------------------------------------------------------------------
def test_repeat_mode_is_shift_equivariant_and_restores_the_models(studio: Studio) -> None:
    """With the UNet, VAE and ControlNet wrapped, rolling the noise and the edge map rolls the result (a seamless
    tile); without the repeat the borders break that."""
    controlnet = studio.cache.slot("controlnet")
    convs = [m for m in controlnet.modules() if isinstance(m, torch.nn.Conv2d)]
    saved = [(c.padding_mode, c.padding, "forward" in c.__dict__) for c in convs]
    sketch = np.asarray(detect_edges(studio, silhouette((128, 64)), "hed", width=128, height=64))
    noise = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(5))
    shift = 8  # latent pixels: a whole cell of the UNet's 3 downsamplings; 64 px in the image

    def error(repeat: str | None) -> int:
        runs = [
            restyle(
                studio,
                RestyleRequest(
                    image=Image.fromarray(np.roll(sketch, 8 * k, axis=1)),
                    prompt=PROMPT,
                    preprocessor="none",
                    repeat=repeat,
                    width=128,
                    height=64,
                    **{**FAST, "scheduler": "DDIM"},
                ),
                latents=torch.roll(noise, k, dims=-1),
            )
            for k in (0, shift)
        ]
        return int(np.abs(np.roll(pixels(runs[0].paths[0]), 8 * shift, axis=1) - pixels(runs[1].paths[0])).max())

    assert error("full") <= 1
    assert error(None) > 8
    assert [(c.padding_mode, c.padding, "forward" in c.__dict__) for c in convs] == saved


# ---- the tab ----------------------------------------------------------------------------------------------------
def build_tab(studio: Studio, seen: list[RestyleRequest]) -> Tab:
    from studio.ui import restyle_tab
    from studio.ui.widgets import UIContext

    def fake_generate(req: RestyleRequest, job: object) -> Result:
        seen.append(req)
        return Result(images=[], seed=1, params={})

    ctx = UIContext(native_size=64, limits=studio.limits, count_tokens=lambda text: "")
    with gr.Blocks():
        calls = ModeCalls("restyle", fake_generate, {"detect_edges": functools.partial(detect_edges, studio)})
        return restyle_tab.create(ctx, calls)


def test_tab_inputs_match_the_handler_and_the_request(studio: Studio) -> None:
    parts = build_tab(studio, [])
    names = [n for n in inspect.signature(parts.handler).parameters if n not in ("request", "progress")]
    assert len(names) == len(parts.inputs)
    request_fields = set(RestyleRequest.__dataclass_fields__)
    assert set(names) - request_fields == {"pixel_perfect"}  # every other input is named as the request names it
    preview = [n for n in inspect.signature(parts.extras["preview_handler"]).parameters]
    assert len(preview) == len(inputs_for(parts.extras["preview_handler"], parts.fields))


def test_tab_turns_widget_values_into_the_request(studio: Studio) -> None:
    seen: list[RestyleRequest] = []
    handler = build_tab(studio, seen).handler
    common = {
        "image": silhouette(),
        "controlnet_conditioning_scale": 0.5,
        "control_guidance_start": 0.1,
        "control_guidance_end": 0.9,
        "guess_mode": False,
        "prompt": PROMPT,
        "negative_prompt": None,
        "num_inference_steps": 2,
        "guidance_scale": 7,
        "scheduler": "Euler",
        "seed": 3,
        "batch_size": 1,
        "batch_count": 1,
        "model": "auto",
        "low_threshold": 100,
        "high_threshold": 200,
        "controlnet_units": None,
        "control_image": None,
        "request": None,
        "progress": lambda *a, **k: None,
    }
    final(
        handler(
            preprocessor="hed",
            invert=True,
            pixel_perfect=True,
            preprocessor_resolution=512,
            width=0,
            height=0,
            repeat="off",
            **common,
        )
    )
    final(
        handler(
            preprocessor="none",
            invert=True,
            pixel_perfect=False,
            preprocessor_resolution=128,
            width=96,
            height=64,
            repeat="half_drop",
            **common,
        )
    )
    auto, manual = seen
    assert (auto.invert, auto.preprocessor_resolution, auto.width, auto.height, auto.repeat) == (
        False,
        None,
        None,
        None,
        None,
    )
    assert (manual.invert, manual.preprocessor_resolution, manual.width, manual.height, manual.repeat) == (
        True,
        128,
        96,
        64,
        "half_drop",
    )


def test_preview_shows_the_edge_map_restyle_will_use(studio: Studio) -> None:
    preview = build_tab(studio, []).extras["preview_handler"]
    edge, note = preview(silhouette((48, 72)), "hed", False, True, 512, 0, 0, "off")
    size = edges.auto_size((48, 72), studio.cache.native_size())
    assert edge.size == size and f"{size[0]}x{size[1]}" in note and "pixel perfect" in note
    assert np.array_equal(pixels(edge), pixels(detect_edges(studio, silhouette((48, 72)), "hed")))


def test_app_serves_restyle_and_its_edge_preview(running_app: tuple[str, Studio], tmp_path: Path) -> None:
    from gradio_client import Client, handle_file

    url, studio = running_app
    sketch = tmp_path / "sketch.png"
    silhouette((64, 96), "RGBA").save(sketch)
    client = Client(url, verbose=False)
    edge, note = client.predict(
        handle_file(str(sketch)), "hed", False, True, 512, 0, 0, "off", api_name="/restyle_edges"
    )
    size = edges.auto_size((64, 96), studio.cache.native_size())
    assert Image.open(edge).size == size and f"{size[0]}x{size[1]}" in note
    gallery, seed, infotext = client.predict(
        handle_file(str(sketch)),
        "hed_safe",
        False,
        True,
        512,
        1.0,
        0.0,
        1.0,
        False,
        PROMPT,
        "",
        1,
        7.0,
        "Euler",
        5,
        1,
        1,
        0,
        0,
        "off",
        api_name="/restyle",
    )
    assert seed == 5 and len(gallery) == 1 and "ControlNet 0" in infotext
    assert Image.open(gallery[0]["image"]).size == size
