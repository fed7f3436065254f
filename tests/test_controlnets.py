"""More ControlNets, several units: line art, canny and open pose beside HED, up to three units per Restyle request,
each annotator exactly as controlnet_aux computes it, every unit in the PNG and back, and nothing duplicated."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from controlnet_aux import CannyDetector, LineartDetector, OpenposeDetector
from diffusers import ControlNetModel
from PIL import Image, ImageDraw

from studio import control_units, registry, tiny_control
from studio.engine.checks import RequestError
from studio.engine.contract import Result, Studio
from studio.engine.restyle import RestyleRequest, detect_edges, restyle
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext, read_parameters
from studio.modes import BUILTIN
from studio.restore import Restorer
from studio.tensors import unique_param_bytes
from tests.conftest import pixels
from tests.test_restyle import silhouette

PROMPT = "fashion illustration of a wrap dress, gouache"
FAST = {"num_inference_steps": 2, "scheduler": "Euler", "seed": 7}


def figure(size: tuple[int, int] = (64, 64)) -> Image.Image:
    """A standing figure: a head, a torso and legs on light paper (something for the pose and line detectors)."""
    width, height = size
    image = Image.new("RGB", size, (230, 222, 210))
    draw = ImageDraw.Draw(image)
    draw.ellipse((width * 0.4, height * 0.05, width * 0.6, height * 0.25), fill=(200, 150, 120))
    draw.rectangle((width * 0.35, height * 0.25, width * 0.65, height * 0.6), fill=(40, 40, 120))
    draw.line((width * 0.42, height * 0.6, width * 0.38, height * 0.95), fill=(30, 30, 30), width=3)
    draw.line((width * 0.58, height * 0.6, width * 0.62, height * 0.95), fill=(30, 30, 30), width=3)
    return image


def generate(studio: Studio, **overrides: Any) -> Result:
    fields = {"image": silhouette(), "prompt": PROMPT, **FAST, **overrides}
    return restyle(studio, RestyleRequest(**fields))


def reference_map(tiny_dir: Path, preprocessor: str, image: Image.Image, resolution: int) -> Image.Image:
    """The map controlnet_aux itself makes from the same (tiny) weights, loaded through its own calls."""
    folder = str(tiny_dir / "annotator")
    common = {"detect_resolution": resolution, "image_resolution": resolution, "output_type": "pil"}
    if preprocessor in ("lineart", "lineart_coarse"):
        detector = LineartDetector.from_pretrained(folder)
        return detector(image, coarse=preprocessor == "lineart_coarse", **common)
    if preprocessor == "canny":
        return CannyDetector()(image, low_threshold=100, high_threshold=200, **common)
    detector = OpenposeDetector.from_pretrained(folder)
    return detector(image, include_body=True, include_hand=False, include_face=False, **common)


# ---- annotators ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preprocessor", ["lineart", "lineart_coarse", "canny", "openpose"])
def test_each_annotator_map_equals_controlnet_aux(studio: Studio, tiny_dir: Path, preprocessor: str) -> None:
    """Pixel perfect (no resolution given) traces at the output's short side, 64 for a 128x64 output (open pose
    at 64x64: it always looks at 184 px high, so a wide picture costs twice as much)."""
    size = (64, 64) if preprocessor == "openpose" else (128, 64)
    image = figure(size)
    ours = detect_edges(studio, image, preprocessor, None, width=size[0], height=size[1])
    theirs = reference_map(tiny_dir, preprocessor, image, 64)
    assert ours.size == theirs.size == size
    assert np.array_equal(pixels(ours), pixels(theirs))
    assert pixels(ours).max() > 0  # the map shows something: the test can tell a wrong one


def test_canny_thresholds_reach_the_detector(studio: Studio) -> None:
    image = figure()
    ImageDraw.Draw(image).rectangle((4, 40, 20, 60), fill=(222, 214, 202))  # a faint patch on the paper
    faint = pixels(detect_edges(studio, image, "canny", 64, low_threshold=5, high_threshold=20))
    strict = pixels(detect_edges(studio, image, "canny", 64))
    assert (faint > 0).sum() > (strict > 0).sum()


def test_open_pose_files_are_small_and_load_as_full_networks(tiny_dir: Path) -> None:
    folder = tiny_dir / "annotator"
    files = [folder / name for name in registry.ANNOTATOR_FILES["annotator_openpose"]]
    assert sum(path.stat().st_size for path in files) < 40 * 2**20  # ~130 M parameters in full would be 520 MB
    detector = OpenposeDetector.from_pretrained(str(folder))
    weights = detector.body_estimation.model.state_dict()
    assert all(tensor.is_contiguous() for tensor in weights.values())
    assert sum(tensor.numel() for tensor in weights.values()) > 50_000_000
    state = tiny_control.compact_state({"w": torch.zeros(256, 128, 3, 3)}, torch.Generator().manual_seed(0))
    assert state["w"].std() > 0 and len(torch.unique(state["w"][:, 0, 0, 0])) == 256  # no two rows the same


# ---- each ControlNet: off is txt2img, on is wired -----------------------------------------------------------------
@pytest.mark.parametrize("model", control_units.MODELS)
def test_each_controlnet_at_weight_zero_equals_txt2img_and_changes_it_above(studio: Studio, model: str) -> None:
    """On a ready-made map (the annotators are tested above), so only the ControlNet differs."""
    plain = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, width=64, height=64, **FAST))
    off = generate(studio, image=figure(), preprocessor="none", model=model, controlnet_conditioning_scale=0.0)
    on = generate(studio, image=figure(), preprocessor="none", model=model)
    assert np.array_equal(pixels(off.paths[0]), pixels(plain.paths[0]))
    assert not np.array_equal(pixels(on.paths[0]), pixels(plain.paths[0]))


def test_each_kind_drives_its_own_controlnet(studio: Studio) -> None:
    """The same ready-made map gives a different image through each ControlNet: the model choice is wired."""
    outputs = [
        pixels(generate(studio, image=figure(), preprocessor="none", model=model).paths[0])
        for model in control_units.MODELS
    ]
    assert all(not np.array_equal(a, b) for i, a in enumerate(outputs) for b in outputs[i + 1 :])


# ---- several units --------------------------------------------------------------------------------------------
def test_unit_order_does_not_change_the_image(studio: Studio) -> None:
    """Two units summed in either order give the same pixels (the output size follows unit 1's picture, so both
    pictures have one size); the PNG records the units in the order given."""
    hed = {"preprocessor": "hed", "controlnet_conditioning_scale": 0.8, "control_guidance_end": 0.5}
    canny = {"preprocessor": "canny", "controlnet_conditioning_scale": 0.6}
    first = generate(studio, image=silhouette(), **hed, controlnet_units=[canny], control_image=[figure()])
    second = generate(studio, image=figure(), **canny, controlnet_units=[hed], control_image=[silhouette()])
    assert np.array_equal(pixels(first.paths[0]), pixels(second.paths[0]))
    assert first.params["ControlNet 0"].startswith("Module: softedge_hed")
    assert second.params["ControlNet 0"].startswith("Module: canny")
    alone = generate(studio, image=silhouette(), **hed)
    assert not np.array_equal(pixels(first.paths[0]), pixels(alone.paths[0]))  # the second unit is wired


def test_a_unit_at_weight_zero_or_outside_its_window_is_the_same_as_leaving_it_out(studio: Studio) -> None:
    alone = pixels(generate(studio, preprocessor="hed").paths[0])
    for unit in ({"preprocessor": "canny", "controlnet_conditioning_scale": 0}, {"preprocessor": "lineart",
                 "control_guidance_start": 0.5, "control_guidance_end": 0.5 + 1e-6}):  # fmt: skip
        both = generate(studio, preprocessor="hed", controlnet_units=[unit], control_image=[figure()])
        assert np.array_equal(pixels(both.paths[0]), alone), unit


def test_three_units_are_recorded_and_restored(studio: Studio) -> None:
    units = [
        {"preprocessor": "canny", "controlnet_conditioning_scale": 0.5, "low_threshold": 50, "high_threshold": 150},
        {"preprocessor": "none", "model": "openpose", "control_guidance_start": 0.2, "preprocessor_resolution": 128},
    ]
    result = generate(studio, preprocessor="lineart_coarse", controlnet_units=units, control_image=[figure(), figure()])
    params = parse_infotext(read_parameters(Image.open(result.paths[0])) or "").params
    assert [key for key in params if key.startswith("ControlNet")] == ["ControlNet 0", "ControlNet 1", "ControlNet 2"]
    canny = parse_infotext(params["ControlNet 1"]).params
    assert canny["Module"] == "canny" and canny["Model"] == "controlnet_canny" and canny["Threshold A"] == "50"
    assert parse_infotext(params["ControlNet 2"]).params["Model"] == "controlnet_openpose"
    restored = Restorer(BUILTIN).from_text(read_parameters(Image.open(result.paths[0])) or "")
    assert restored.mode == "restyle" and restored.ignored == [], restored.note
    assert restored.values["preprocessor"] == "lineart_coarse"
    expected = [{**units[0], "controlnet_conditioning_scale": 0.5}, {**units[1]}]
    expected[1].pop("preprocessor_resolution")  # a ready-made map is not traced: no resolution is recorded
    assert restored.values["controlnet_units"] == expected


def test_an_a1111_png_with_two_controlnet_units_restores_both() -> None:
    text = (
        "a coat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
        'ControlNet 0: "Module: openpose, Model: control_v11p_sd15_openpose [cab727d4], Weight: 0.9, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 0.5, Threshold B: 0.5, Guidance Start: 0.0, "
        'Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced", '
        'ControlNet 1: "Module: lineart_realistic, Model: control_v11p_sd15_lineart [43d4be0d], Weight: 0.6, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Guidance Start: 0.1, Guidance End: 0.9, "
        'Pixel Perfect: True, Control Mode: ControlNet is more important"'
    )
    restored = Restorer(BUILTIN).from_text(text)
    assert restored.mode == "restyle"
    assert restored.values["preprocessor"] == "openpose" and restored.values["controlnet_conditioning_scale"] == 0.9
    assert restored.values["controlnet_units"] == [
        {
            "preprocessor": "lineart",
            "controlnet_conditioning_scale": 0.6,
            "control_guidance_start": 0.1,
            "control_guidance_end": 0.9,
        }  # fmt: skip
    ]


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"preprocessor": "canny", "model": "openpose"}, "not 'openpose'"),
        ({"model": "depth"}, "Unknown ControlNet model"),
        ({"controlnet_units": [{"preprocessor": "canny"}]}, "one picture per"),
        ({"controlnet_units": [{"preprocessor": "canny"}] * 3, "control_image": [None] * 3}, "At most 3"),
        ({"controlnet_units": [{"preprocessor": "canny", "weight": 1}], "control_image": [None]}, "unknown key"),
        ({"controlnet_units": [{"preprocessor": "pose"}], "control_image": [None]}, "Control unit 2: Unknown"),
        (
            {"controlnet_units": [{"controlnet_conditioning_scale": 5}], "control_image": [None]},
            "Control unit 2: controlnet_conditioning_scale must be between",
        ),
        ({"controlnet_units": "canny"}, "list of units"),
        ({"low_threshold": 220, "preprocessor": "canny"}, "low threshold"),
    ],
)
def test_bad_units_say_what_to_do(studio: Studio, overrides: dict[str, Any], words: str) -> None:
    with pytest.raises(RequestError, match=words):
        generate(studio, **overrides)


# ---- the shared cache -----------------------------------------------------------------------------------------
def test_resident_bytes_grow_by_exactly_the_added_units(fresh_studio: Studio, tiny_dir: Path) -> None:
    generate(fresh_studio, preprocessor="hed", num_inference_steps=1)
    before = fresh_studio.cache.resident_bytes()
    units = [{"preprocessor": "lineart"}, {"preprocessor": "canny"}]
    generate(fresh_studio, preprocessor="hed", controlnet_units=units, control_image=[figure(), figure()],
             num_inference_steps=1)  # fmt: skip
    after = fresh_studio.cache.resident_bytes()
    generate(fresh_studio, preprocessor="lineart_coarse", controlnet_units=units[::-1],
             control_image=[figure(), figure()], num_inference_steps=1)  # fmt: skip
    assert fresh_studio.cache.resident_bytes() == after  # the same units again load nothing
    added = [
        ControlNetModel.from_pretrained(tiny_dir / "controlnet_lineart"),
        ControlNetModel.from_pretrained(tiny_dir / "controlnet_canny"),
        LineartDetector.from_pretrained(str(tiny_dir / "annotator")),
    ]
    assert after - before == sum(unique_param_bytes(part) for part in added)
    base = fresh_studio.cache.base()
    nets = [fresh_studio.cache.slot(slot) for slot in ("controlnet", "controlnet_lineart", "controlnet_canny")]
    assert unique_param_bytes(base, *nets) == unique_param_bytes(base) + sum(unique_param_bytes(n) for n in nets)


# ---- repeat mode ------------------------------------------------------------------------------------------------
def test_repeat_mode_wraps_every_unit(studio: Studio) -> None:
    """Rolling the noise and both units' maps rolls the result only if every unit's ControlNet wraps too."""
    sketch = np.asarray(detect_edges(studio, silhouette((128, 64)), "hed", width=128, height=64))
    outline = np.asarray(detect_edges(studio, figure((128, 64)), "canny", width=128, height=64))
    noise = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(5))
    shift = 8  # latent pixels; 64 px in the image

    def run(k: int) -> np.ndarray:
        req = RestyleRequest(
            image=Image.fromarray(np.roll(sketch, 8 * k, axis=1)),
            prompt=PROMPT,
            preprocessor="none",
            controlnet_units=[{"preprocessor": "none", "model": "canny"}],
            control_image=[Image.fromarray(np.roll(outline, 8 * k, axis=1))],
            repeat="full",
            width=128,
            height=64,
            **{**FAST, "scheduler": "DDIM"},
        )
        return pixels(restyle(studio, req, latents=torch.roll(noise, k, dims=-1)).paths[0])

    assert np.abs(np.roll(run(0), 8 * shift, axis=1) - run(shift)).max() <= 1


def test_request_is_a_plain_record(studio: Studio) -> None:
    req = RestyleRequest(image=None, prompt="p", controlnet_units=[{"preprocessor": "canny"}], control_image=["x"])
    assert dataclasses.replace(req) == req and req.model == "auto"


# ---- the real door --------------------------------------------------------------------------------------------
def test_app_serves_two_units_as_named_parameters(running_app: tuple[str, Studio], tmp_path: Path) -> None:
    """Through gradio_client: unit 1 in Restyle's own fields, unit 2 in `controlnet_units` with its picture in
    `control_image`; the served image equals the engine's, and the preview traces every preprocessor."""
    from gradio_client import Client, handle_file

    url, studio = running_app
    sketch, pose = tmp_path / "sketch.png", tmp_path / "pose.png"
    silhouette().save(sketch)
    figure().save(pose)
    client = Client(url, verbose=False)
    unit = {"preprocessor": "canny", "controlnet_conditioning_scale": 0.6, "control_guidance_end": 0.5}
    gallery, seed, infotext = client.predict(
        image=handle_file(str(sketch)),
        preprocessor="lineart",
        prompt=PROMPT,
        num_inference_steps=2,
        scheduler="Euler",
        seed=7,
        controlnet_units=[unit],
        control_image=[handle_file(str(pose))],
        api_name="/restyle",
    )
    params = parse_infotext(infotext).params
    assert seed == 7 and params["ControlNet 0"].startswith("Module: lineart_realistic")
    assert params["ControlNet 1"].startswith("Module: canny, Model: controlnet_canny, Weight: 0.6")
    engine = generate(studio, image=silhouette(), preprocessor="lineart", controlnet_units=[unit],
                      control_image=[figure()])  # fmt: skip
    assert np.array_equal(pixels(gallery[0]["image"]), pixels(engine.paths[0]))
    with pytest.raises(Exception, match="one picture per"):  # a unit without its picture: words, not a crash
        client.predict(image=handle_file(str(sketch)), prompt=PROMPT, controlnet_units=[unit], api_name="/restyle")
    edge, note = client.predict(handle_file(str(pose)), "lineart_coarse", False, True, 512, 0, 0, "off",
                                api_name="/restyle_edges")  # fmt: skip
    assert np.array_equal(pixels(edge), pixels(detect_edges(studio, figure(), "lineart_coarse")))
    assert "coarse line art at 64 px (pixel perfect)" in note


def test_more_control_widgets_and_the_units_list_round_trip() -> None:
    """The tab's widgets write `controlnet_units` (keeping keys they do not show); a restored list sets them back."""
    from studio.ui.restyle_tab import units_from_widgets, widgets_from_units

    restored = [{"preprocessor": "none", "model": "openpose", "invert": True, "controlnet_conditioning_scale": 0.4}]
    values = widgets_from_units(restored)
    assert values == ["none", 0.4, 0.0, 1.0, "off", 1.0, 0.0, 1.0]
    values[1], values[4] = 0.9, "canny"  # the designer: unit 2 stronger, unit 3 on
    assert units_from_widgets(restored, *values) == [
        {"preprocessor": "none", "model": "openpose", "invert": True, "controlnet_conditioning_scale": 0.9,
         "control_guidance_start": 0.0, "control_guidance_end": 1.0},
        {"preprocessor": "canny", "controlnet_conditioning_scale": 1.0, "control_guidance_start": 0.0,
         "control_guidance_end": 1.0},
    ]  # fmt: skip
    assert units_from_widgets(restored, "off", 1, 0, 1, "off", 1, 0, 1) == []
