"""One place per mode: every table that lists modes is computed from the mode records, a mode declared in a test
alone is served everywhere, and every form reaches its request by field name through Gradio's own door."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from studio.engine.checks import MAX_SEED, check_range
from studio.engine.contract import Job, Result, Studio
from studio.engine.saving import save_image
from studio.fields import integer, one, text
from studio.metadata import parse_infotext
from studio.modes import BUILTIN, Mode, by_name, gpu_endpoints, public_endpoints
from studio.presets import field_table, load_presets
from studio.restore import Restorer
from studio.settings import Limits
from studio.ui.running import gallery_outputs, run_events
from studio.ui.shell import TabHandle
from studio.ui.tab import ModeCalls, Tab, inputs_for, parameter_names
from studio.ui.widgets import UIContext, form_request, results_block
from tests.conftest import REPO, free_port, make_settings


# ---- a sixth mode, declared here and nowhere else ----------------------------------------------------------------
@dataclass(frozen=True)
class ToyRequest:
    prompt: str
    image: Any = None  # a picture to tint (or None)
    seed: int = -1
    shade: int = 128  # the red channel of the result


def toy(studio: Studio, req: ToyRequest, job: Job | None = None) -> Result:
    check_toy(req, studio.limits)
    seed = 7 if req.seed == -1 else req.seed
    picture = Image.new("RGB", (16, 16), (req.shade, 30, 60))
    params = {"Seed": seed, "Shade": req.shade, "Mode": "toy"}
    saved = save_image(studio, picture, {"prompt": req.prompt, "negative_prompt": ""}, params, "toy", job)
    return Result(images=[saved], seed=seed, params=params)


def check_toy(req: ToyRequest, limits: Limits) -> None:
    check_range("shade", req.shade, 0, 255)


def toy_tab(ctx: UIContext, calls: ModeCalls) -> Tab:
    prompt = gr.Textbox(label="Prompt")
    image = gr.Image(label="Picture", type="filepath")
    with gr.Row():
        seed = gr.Number(-1, precision=0, label="Seed")
        shade = gr.Slider(0, 255, value=128, step=1, label="Shade")
    run = gr.Button("Tint", variant="primary")
    gallery, seed_used, infotext = results_block()
    fields = {"prompt": prompt, "image": image, "seed": seed, "shade": shade}

    def tint(
        prompt: str,
        image: str | None,
        seed: float,
        shade: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(ToyRequest, locals())
        yield from gallery_outputs(run_events(ctx.board, request, progress, lambda job: calls.run(req, job)))

    run.click(tint, inputs=inputs_for(tint, fields), outputs=[gallery, seed_used, infotext], api_name=calls.name)
    return Tab(tint, fields, gallery, prompt=prompt, input_image=image)


TOY = Mode(
    name="toy",
    label="Toy",
    request=ToyRequest,
    run=toy,
    check=check_toy,
    tab=toy_tab,
    fields=lambda limits: {"prompt": text(100), "seed": integer(-1, MAX_SEED), "shade": integer(0, 255)},
    readers={"Shade": one("shade", int)},
)
WITH_TOY = (*BUILTIN, TOY)


@pytest.fixture(scope="module")
def toy_studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[gr.Blocks, Client]]:
    presets = tmp_path_factory.mktemp("presets")
    for path in (REPO / "presets").glob("*.json"):
        shutil.copy(path, presets)
    toy_preset = {"name": "Deep red", "mode": "toy", "values": {"shade": 200, "prompt": "a red swatch"}}
    (presets / "toy-deep-red.json").write_text(json.dumps(toy_preset))
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("toy-outputs"), port=free_port())
    demo = app.build_demo(app.create_studio(settings), modes=WITH_TOY, presets_dir=presets)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield demo, Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
    finally:
        demo.close()


def _tab_ids(demo: gr.Blocks) -> list[str]:
    return [block.id for block in demo.blocks.values() if isinstance(block, gr.Tab) and isinstance(block.id, str)]


def _public(demo: gr.Blocks) -> set[str]:
    return {dep.api_name for dep in demo.fns.values() if dep.api_name and dep.api_visibility == "public"}


def test_a_mode_declared_in_a_test_is_a_tab_an_endpoint_and_a_send_to_target(toy_studio) -> None:
    demo, client = toy_studio
    assert "toy" in _tab_ids(demo) and "toy" in _public(demo)
    gallery, seed, infotext = client.predict(prompt="a swatch", image=None, seed=3, shade=90, api_name="/toy")
    assert seed == 3 and parse_infotext(infotext).params["Shade"] == "90"
    with Image.open(gallery[0]["image"]) as image:
        assert image.getpixel((0, 0))[0] == 90
    send_buttons = [b.value for b in demo.blocks.values() if isinstance(b, gr.Button) and b.value == "Send to Toy"]
    assert len(send_buttons) == len(BUILTIN) + 2  # under every other tab's results, the session's results, PNG Info


def test_png_restore_reaches_a_mode_declared_in_a_test(toy_studio) -> None:
    _, client = toy_studio
    gallery, _, _ = client.predict(prompt="a swatch", image=None, seed=4, shade=33, api_name="/toy")
    mode, values, note = client.predict(png=handle_file(gallery[0]["image"]), api_name="/restore")
    assert mode == "toy" and values == {"prompt": "a swatch", "negative_prompt": "", "seed": 4, "shade": 33}
    assert "Toy" in note


def test_presets_reach_a_mode_declared_in_a_test(toy_studio) -> None:
    demo, _ = toy_studio
    apply = next(
        dep.fn
        for dep in demo.fns.values()
        if dep.inputs and isinstance(dep.inputs[0], gr.Dropdown) and "Deep red" in str(dep.inputs[0].choices)
    )
    filled = {getattr(component, "label", None): value for component, value in apply("Deep red").items()}
    assert filled["Shade"] == 200 and filled["Prompt"] == "a red swatch"


# ---- every derived table agrees with the records -------------------------------------------------------------------
def test_every_registered_mode_appears_in_every_derived_table(tiny_dir: Path, tmp_path: Path) -> None:
    names = [mode.name for mode in BUILTIN]
    assert list(by_name(BUILTIN)) == names
    demo = app.build_demo(app.create_studio(make_settings(tiny_dir, tmp_path)))
    assert _tab_ids(demo) == [*names, "png-info"]  # the app's tabs, then the shell's PNG Info
    assert _public(demo) == public_endpoints(BUILTIN)  # the API
    assert set(load_presets(REPO / "presets", Limits(), BUILTIN)) == set(names)  # presets
    assert set(field_table(BUILTIN, Limits())) == {*names, "any"}
    restorer = Restorer(BUILTIN)  # PNG restore: every mode's own infotext comes back to it
    assert [restorer.detect_mode({"Mode": name}) for name in names] == names
    takes_image = {mode.label for mode in BUILTIN if mode.name not in ("txt2img", "train_style")}  # no one image
    buttons = {b.value for b in demo.blocks.values() if isinstance(b, gr.Button) and str(b.value).startswith("Send")}
    assert buttons == {f"Send to {label}" for label in takes_image}  # Send to
    for mode in BUILTIN:  # every key a preset or a PNG may set is a field of the mode's request
        request_fields = {f.name for f in dataclasses.fields(mode.request)}
        assert set(mode.fields(Limits())) <= request_fields, mode.name
    assert all(mode.example is None or (REPO / "assets").is_dir() for mode in BUILTIN)


def test_every_gpu_endpoint_is_a_mode_or_one_of_its_declared_gpu_calls() -> None:
    assert gpu_endpoints(BUILTIN) == {"txt2img", "draft", "render_draft", "refine", "textile", "inpaint", "restyle",
                                      "restyle_edges", "upscale"}  # fmt: skip


def test_the_readme_lists_every_endpoint() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`/([a-z_0-9]+)`", readme))
    assert public_endpoints(BUILTIN) <= listed, public_endpoints(BUILTIN) - listed


# ---- inputs wired by name: each field's own value reaches the request, through gradio_client -------------------
FORM = {  # one distinctive value per field, each within its widget's bounds
    "prompt": "p-prompt",
    "negative_prompt": "p-negative",
    "num_inference_steps": 7,
    "guidance_scale": 3.5,
    "scheduler": "Euler a",
    "seed": 12345,
    "batch_size": 2,
    "batch_count": 3,
    "width": 128,
    "height": 192,
    "strength": 0.42,
    "loops": 3,
    "strength_schedule": "linear",
    "final_strength": 0.33,
    "seed_policy": "random",
    "color_correction": False,
    "repeat": "brick",
    "dpi": 150,
    "physical_width": 12.5,
    "physical_height": 0,
    "unit": "in",
    "colors": 4,
    "mask_blur": 9,
    "invert_mask": True,
    "masked_content": "fill",
    "inpaint_area": "only_masked",
    "padding": 40,
    "preprocessor": "hed_safe",
    "pixel_perfect": False,
    "preprocessor_resolution": 320,
    "controlnet_conditioning_scale": 0.65,
    "control_guidance_start": 0.1,
    "control_guidance_end": 0.9,
    "guess_mode": True,
    "model": "lineart",
    "low_threshold": 40,
    "high_threshold": 90,
    "controlnet_units": [{"preprocessor": "canny", "controlnet_conditioning_scale": 0.5}],
    "invert": False,
    "palettes": ["AW26 Forest Dusk", "SS26 Citrus Grove"],
    "custom_palettes": "p-custom: #112233 #445566",
    "mappings": "p-mapping: #000000>#ffffff",
    "mood_image": None,
    "mood_colors": 5,
    "keep_order": True,
    "merge": True,
    "include_original": False,
    "upscaler": "p-upscaler.pth",
    "scale": 2.5,
    "detail_strength": 0.35,
    "tile_size": 128,
    "tile_overlap": 24,
    "name": "p-name",
    "trigger": "p-trigger",
    "kind": "person",
    "captions": "p-captions",
    "num_train_steps": 321,
    "learning_rate": 0.0002,
    "rank": 12,
    "resolution": 384,
    "prior_preservation": False,
    "train_text_encoder": True,
    "sample_every": 50,
    "checkpoint_every": 75,
    "overwrite": True,
    "ip_adapter_scale": "0.7, 0.3",
    "ip_adapter_model": "ip-adapter-plus_sd15",
}
EXPECTED = {**FORM, "preprocessor_resolution": 320, "final_strength": 0.33, "palettes": tuple(FORM["palettes"]),
            "ip_adapter_scale": (0.7, 0.3)}  # fmt: skip


@pytest.fixture(scope="module")
def recording(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, list[Any], Path]]:
    seen: list[Any] = []

    def record(studio: Studio, req: Any, job: Job | None = None) -> Result:
        seen.append(req)
        return Result(images=[], seed=0, params={})

    modes = [dataclasses.replace(mode, run=record, runner=None) for mode in BUILTIN]
    folder = tmp_path_factory.mktemp("recording")
    Image.new("RGB", (64, 64), (120, 80, 40)).save(folder / "photo.png")
    Image.new("L", (64, 64), 255).save(folder / "mask.png")
    settings = make_settings(tiny_dir, folder / "outputs", port=free_port())
    demo = app.build_demo(app.create_studio(settings), modes=modes)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False), seen, folder
    finally:
        demo.close()


@pytest.mark.parametrize("mode", [mode.name for mode in BUILTIN])
def test_each_form_field_reaches_its_own_request_field_through_the_api(recording, mode: str) -> None:
    client, seen, folder = recording
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"][f"/{mode}"]
    params = [p["parameter_name"] for p in info["parameters"]]
    request_fields = {f.name for f in dataclasses.fields(by_name(BUILTIN)[mode].request)}
    photo, mask = handle_file(str(folder / "photo.png")), handle_file(str(folder / "mask.png"))
    files = {"image": photo, "mask_image": mask, "ip_adapter_image": [photo, mask], "control_image": [photo]}
    ui_only = {"editor": None, "continue_from": None, "tree": None, "pixel_perfect": False, "images": None}
    sent = {name: files.get(name, ui_only.get(name, FORM.get(name))) for name in params}
    assert all(name in FORM or name in files or name in ui_only for name in params), params
    seen.clear()
    client.predict(**sent, api_name=f"/{mode}")
    [req] = seen
    for name in params:
        if name in FORM and name in request_fields:
            assert getattr(req, name) == EXPECTED[name], name
    if "ip_adapter_image" in params:  # both pictures, as the uploaded files
        assert len(req.ip_adapter_image) == 2 and all(Path(p).is_file() for p in req.ip_adapter_image)
    assert set(params) - set(ui_only) <= request_fields, set(params) - request_fields


def test_a_handlers_inputs_follow_its_parameter_names() -> None:
    def handler(b: int, a: int, request: gr.Request) -> None: ...

    with gr.Blocks():
        a, b = gr.Number(label="a"), gr.Number(label="b")
        assert inputs_for(handler, {"a": a, "b": b}) == [b, a]
        with pytest.raises(KeyError, match="takes c"):
            inputs_for(lambda c: None, {"a": a})
    assert parameter_names(handler) == ["b", "a"]


# Each form field's visible label says which request field it is: swapping two components in a tab's `fields`
# (which the API, positional by handler parameter, cannot see) shows here.
LABEL_WORDS = {
    "prompt": ("prompt",), "negative_prompt": ("negative prompt",), "num_inference_steps": ("steps",),
    "guidance_scale": ("cfg",), "scheduler": ("sampler",), "seed": ("seed",), "width": ("width",),
    "height": ("height",), "batch_size": ("batch size", "tiles per run"), "batch_count": ("batch count",),
    "image": ("image", "photo", "swatch"), "editor": ("brush",), "mask_image": ("mask",),
    "strength": ("denoising strength",), "loops": ("loops",), "strength_schedule": ("strength schedule",),
    "final_strength": ("final strength",), "seed_policy": ("seed per loop",), "color_correction": ("colour",),
    "repeat": ("repeat",), "physical_width": ("tile width",), "physical_height": ("tile height",),
    "unit": ("unit",), "dpi": ("dpi",), "colors": ("colours",), "invert_mask": ("invert mask",),
    "mask_blur": ("mask blur",), "masked_content": ("masked content",), "inpaint_area": ("inpaint area",),
    "padding": ("padding",), "preprocessor": ("preprocessor",), "invert": ("invert",),
    "pixel_perfect": ("pixel perfect",), "preprocessor_resolution": ("preprocessor resolution",),
    "controlnet_conditioning_scale": ("control weight",), "guess_mode": ("guess mode",),
    "control_guidance_start": ("guidance start",), "control_guidance_end": ("guidance end",),
    "palettes": ("palettes",), "custom_palettes": ("your palettes",), "mappings": ("picked colourways",),
    "mood_image": ("mood photo",), "mood_colors": ("mood photo colours",), "keep_order": ("light/dark",),
    "merge": ("merge",), "include_original": ("original",), "upscaler": ("upscaler",), "scale": ("upscale by",),
    "detail_strength": ("detail strength",), "tile_size": ("tile size",), "tile_overlap": ("tile overlap",),
    "images": ("training images",), "name": ("style name",), "trigger": ("trigger word",), "kind": ("kind",),
    "captions": ("captions",), "num_train_steps": ("training steps",), "learning_rate": ("learning rate",),
    "rank": ("rank",), "resolution": ("resolution",), "prior_preservation": ("prior preservation",),
    "train_text_encoder": ("text encoder",), "sample_every": ("sample every",),
    "checkpoint_every": ("checkpoint every",), "overwrite": ("replace",), "model": ("controlnet",),
    "low_threshold": ("low threshold",), "high_threshold": ("high threshold",),
    "controlnet_units": ("controlnet_units",), "control_image": ("pictures for units",),
    "ip_adapter_image": ("image prompt",), "ip_adapter_scale": ("weight per picture",),
    "ip_adapter_model": ("image prompt model",),
}  # fmt: skip


def test_each_form_component_is_labelled_as_its_field(tiny_dir: Path, tmp_path: Path) -> None:
    ctx = UIContext(native_size=64, limits=Limits(), count_tokens=lambda text: "")
    for mode in BUILTIN:
        with gr.Blocks():
            tab = mode.tab(ctx, ModeCalls(mode.name, lambda req, job: None, {k: print for k in mode.actions}))
        for name, component in tab.fields.items():
            if isinstance(component, gr.State):
                continue  # per-session state (Refine's tree), not a form field
            label = str(component.label).lower()
            assert any(word in label for word in LABEL_WORDS[name]), (mode.name, name, component.label)
            if name == "prompt":
                assert "negative" not in label
            if name in ("width", "physical_width"):
                assert "height" not in label


def test_tab_handles_name_their_fields_like_the_api(tiny_dir: Path, tmp_path: Path) -> None:
    studio = app.create_studio(make_settings(tiny_dir, tmp_path))
    ctx = UIContext(native_size=64, limits=studio.limits, count_tokens=lambda text: "")
    for mode in BUILTIN:
        with gr.Blocks():
            tab = mode.tab(ctx, ModeCalls(mode.name, lambda req, job: None, {k: print for k in mode.actions}))
        handle = TabHandle(mode.name, mode.label, tab)
        assert handle.fields is tab.fields and tab.inputs == [tab.fields[n] for n in parameter_names(tab.handler)]


def test_every_image_slot_hands_the_engine_the_uploaded_bytes_unconverted(recording) -> None:
    """Gradio converts nothing on the way (no RGB clipping of 16-bit, no dropped alpha, no re-encoding): the engine
    gets the very file, and studio.images normalises it like every other mode's."""
    import numpy as np

    client, seen, folder = recording
    deep = folder / "deep.png"  # 16-bit grey with a gradient: Gradio's image_mode="RGB" clipped it to white
    Image.fromarray((np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
    sent = handle_file(str(deep))
    calls = {
        "/refine": ({"image": sent}, ["image"]),
        "/textile": ({"image": sent}, ["image"]),
        "/inpaint": ({"editor": None, "image": sent, "mask_image": sent}, ["image", "mask_image"]),
        "/restyle": ({"image": sent}, ["image"]),
    }
    for endpoint, (files, fields) in calls.items():
        seen.clear()
        client.predict(prompt="p", **files, api_name=endpoint)
        [req] = seen
        for name in fields:
            assert Path(getattr(req, name)).read_bytes() == deep.read_bytes(), (endpoint, name)
