"""Refine: loops are plain diffusers img2img, chained, scheduled, colour-held, branchable and replayable."""

from __future__ import annotations

import inspect
import shutil
import zipfile
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from studio.color import mean_delta_e, palette_delta_e
from studio.engine.checks import RequestError
from studio.engine.contract import Cancelled, Job
from studio.engine.refine import RefineRequest, load_source, refine
from studio.history import History
from studio.metadata import parse_infotext, pnginfo, read_parameters
from studio.modes import BUILTIN
from studio.restore import Restorer
from studio.schedulers import get_sampler
from studio.ui import refine_tab
from studio.ui.tab import ModeCalls
from studio.ui.widgets import UIContext
from tests.conftest import free_port, is_skip, pixels

PROMPT = "photo of a linen shirt dress, natural light"


def colourful(size: int = 64) -> Image.Image:
    """A fixed image with strong hues everywhere: red-green-blue gradients."""
    y, x = np.mgrid[0:size, 0:size] * (255 / (size - 1))
    return Image.fromarray(np.stack([x, y, 255 - (x + y) / 2], -1).round().astype(np.uint8))


def params_of(path: Path) -> dict[str, str]:
    with Image.open(path) as image:
        return parse_infotext(read_parameters(image)).params


def run(studio, **fields) -> list:
    """Loops without classifier-free guidance unless asked (half the UNet work; the properties do not need it)."""
    defaults = {"image": colourful(), "prompt": PROMPT, "guidance_scale": 1.0}
    return refine(studio, RefineRequest(**{**defaults, **fields})).images


# ---- one loop is plain diffusers -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plain_components(tiny_dir):
    plain = StableDiffusionImg2ImgPipeline.from_pretrained(tiny_dir / "base", safety_checker=None)
    return plain.components


@pytest.mark.parametrize(("scheduler", "strength"), [("DPM++ 2M Karras", 0.75), ("Euler a", 0.5)])
def test_one_loop_equals_plain_img2img_pixel_for_pixel(studio, plain_components, scheduler, strength):
    [item] = run(studio, strength=strength, num_inference_steps=4, guidance_scale=7.5, scheduler=scheduler, seed=1234)
    config = plain_components["scheduler"].config  # the checkpoint's own (PNDM) config, as the studio uses
    # Constructed like `from_pretrained(..., scheduler=...)` would: the pipeline's __init__ sees the scheduler.
    plain = StableDiffusionImg2ImgPipeline(**{**plain_components, "scheduler": get_sampler(scheduler).build(config)})
    plain.set_progress_bar_config(disable=True)
    expected = plain(
        PROMPT,
        image=colourful(),
        strength=strength,
        num_inference_steps=4,
        guidance_scale=7.5,
        negative_prompt=RefineRequest(image=None).negative_prompt,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert np.array_equal(pixels(item.path), pixels(expected))
    assert np.array_equal(pixels(item.parent), pixels(colourful()))  # the source copy in outputs is lossless


@pytest.mark.parametrize(("steps", "strength"), [(4, 0.5), (5, 0.3), (2, 1.0)])
def test_strength_s_with_n_steps_runs_int_n_times_s_denoising_steps(studio, steps, strength):
    reports: list[tuple[int, int]] = []
    items = refine(
        studio,
        RefineRequest(image=colourful(), prompt=PROMPT, strength=strength, num_inference_steps=steps, seed=3),
        Job(on_step=lambda step, total: reports.append((step, total))),
    ).images
    expected = int(steps * strength)
    assert [step for step, _ in reports] == list(range(1, expected + 1))
    assert {total for _, total in reports} == {expected}
    assert params_of(items[0].path)["Denoising strength"] == str(strength)


# ---- loops --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["fixed", "increment", "random"])
def test_n_loops_make_n_chained_nodes_with_schedule_strengths_and_policy_seeds(studio, policy):
    items = run(
        studio,
        loops=3,
        strength=0.9,
        strength_schedule="linear",
        final_strength=0.5,
        seed_policy=policy,
        num_inference_steps=2,
        seed=1000,
    )
    assert [i.loop for i in items] == [1, 2, 3]
    assert [i.parent for i in items[1:]] == [i.path for i in items[:-1]]
    recorded = [params_of(i.path) for i in items]
    assert [float(p["Denoising strength"]) for p in recorded] == [0.9, 0.7, 0.5]
    seeds = [int(p["Seed"]) for p in recorded]
    assert seeds == [i.seed for i in items] and seeds[0] == 1000
    if policy == "fixed":
        assert seeds == [1000, 1000, 1000]
    elif policy == "increment":
        assert seeds == [1000, 1001, 1002]
    assert [p["Parent"] for p in recorded] == [i.parent.name for i in items]
    assert [p["Loop"] for p in recorded] == ["1/3", "2/3", "3/3"] and recorded[0]["Seed policy"] == policy

    history = History(studio.outputs.root)
    ids = [history.add(i.path, i.parent, loop=i.loop, seed=i.seed, strength=i.strength) for i in items]
    assert len(history.nodes) == 4  # the source, then one node per loop
    assert history.lineage(ids[-1]) == [1, *ids] and all(history.nodes[i].children == [i + 1] for i in (1, *ids[:-1]))


def test_colour_correction_reduces_drift_over_8_loops(studio):
    source = colourful()
    drift = {}
    for corrected in (False, True):
        final = run(studio, loops=8, strength=0.5, num_inference_steps=2, seed=21, color_correction=corrected)[-1]
        image = Image.open(final.path)
        drift[corrected] = (palette_delta_e(image, source), mean_delta_e(image, source))
    print(
        f"\nΔE2000 of the mean colour after 8 loops: {drift[False][0]:.2f} without correction, "
        f"{drift[True][0]:.2f} with; pixelwise mean ΔE2000: {drift[False][1]:.2f} vs {drift[True][1]:.2f}"
    )
    assert drift[True][0] < drift[False][0]


# ---- branching and replay -----------------------------------------------------------------------------------------
def test_branching_from_a_middle_node_grows_a_sibling_subtree_and_the_zip_holds_exactly_the_branch(studio, tmp_path):
    history = History(studio.outputs.root)
    trunk = run(studio, loops=3, strength=0.5, num_inference_steps=2, seed=5, color_correction=True)
    middle = trunk[1].path
    twig = run(studio, image=middle, loops=1, strength=0.5, num_inference_steps=2, seed=6)
    for item in trunk + twig:
        history.add(item.path, item.parent, loop=item.loop, seed=item.seed, strength=item.strength)
    assert twig[0].parent == middle  # an outputs file is its own source: no copy, no new root
    assert history.node(3).children == [4, 5] and len(history.nodes) == 5
    with zipfile.ZipFile(history.export_branch(5, tmp_path / "branch.zip")) as archive:
        pngs = sorted(n for n in archive.namelist() if n.endswith(".png"))
        assert pngs == sorted(f"{i:03d}-{history.path(i).name}" for i in (1, 2, 3, 5))
        assert all(read_parameters(Image.open(archive.open(n))) for n in pngs[1:])


def test_rerunning_a_node_with_its_recorded_recipe_and_parent_reproduces_it_exactly(studio):
    trunk = run(
        studio,
        loops=3,
        strength=0.6,
        num_inference_steps=3,
        seed_policy="random",
        color_correction=True,
        scheduler="Euler a",
    )
    node = trunk[2]
    recipe = Restorer(BUILTIN, studio.limits).from_png(node.path).values  # what "Restore recipe" puts in the form
    assert recipe["seed"] == node.seed and recipe["strength"] == 0.6 and recipe["color_correction"] is True
    [again] = refine(studio, RefineRequest(image=node.parent, **recipe)).images
    assert np.array_equal(pixels(again.path), pixels(node.path))
    assert again.parent == node.parent


def test_an_a1111_or_atelier_png_restores_its_parameters(studio, tmp_path):
    a1111 = (
        "tweed jacket, photo\nNegative prompt: blurry, lowres\nSteps: 30, Sampler: DPM++ 2M, Schedule type: "
        "Karras, CFG scale: 7, Seed: 123, Size: 512x768, Model hash: abc, Denoising strength: 0.35"
    )
    Image.new("RGB", (64, 64)).save(tmp_path / "a1111.png", pnginfo=pnginfo(a1111))
    restored = dict(
        zip(
            refine_tab.RESTORED,
            refine_tab.restore_fields(tmp_path / "a1111.png", Restorer(BUILTIN, studio.limits).from_png),
            strict=True,
        )
    )
    assert restored == {
        "prompt": "tweed jacket, photo",
        "negative_prompt": "blurry, lowres",
        "num_inference_steps": 30,
        "scheduler": "DPM++ 2M Karras",
        "guidance_scale": 7.0,
        "seed": 123,
        "strength": 0.35,
        "loops": 1,
        "strength_schedule": "constant",
        "color_correction": gr.skip(),
        "seed_policy": gr.skip(),
    }  # unstated: the form keeps its own
    [item] = run(studio, strength=0.5, num_inference_steps=2, seed=77, seed_policy="increment")
    restored = dict(
        zip(
            refine_tab.RESTORED,
            refine_tab.restore_fields(item.path, Restorer(BUILTIN, studio.limits).from_png),
            strict=True,
        )
    )
    assert (restored["prompt"], restored["seed"], restored["strength"], restored["seed_policy"]) == (
        PROMPT,
        77,
        0.5,
        "increment",
    )
    photo = tmp_path / "photo.png"
    colourful().save(photo)
    assert set(map(str, refine_tab.restore_fields(photo, Restorer(BUILTIN, studio.limits).from_png, quiet=True))) == {
        str(gr.skip())
    }


# ---- bad inputs ---------------------------------------------------------------------------------------------------
def test_bad_inputs_are_converted_or_refused_in_words(studio, tmp_path):
    with pytest.raises(RequestError, match="No input image"):
        load_source(studio, None)
    rgba = np.zeros((64, 80, 4), np.uint8)
    rgba[..., 0], rgba[:, :40, 3] = 255, 255  # left half opaque red, right half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    image = load_source(studio, tmp_path / "rgba.png").image
    assert image.mode == "RGB" and image.getpixel((10, 10)) == (255, 0, 0) and image.getpixel((70, 10)) == (255,) * 3
    Image.fromarray(np.full((64, 64), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert load_source(studio, tmp_path / "deep.png").image.getpixel((0, 0)) == (255, 255, 255)
    rotated = Image.fromarray(np.zeros((64, 128, 3), np.uint8))  # stored 128 wide, shown 64 wide
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to view"
    rotated.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_source(studio, tmp_path / "rotated.jpg").image.size == (64, 128)
    big = load_source(studio, Image.new("RGB", (1500, 1000))).image  # above the studio's 1 MP limit
    assert big.width * big.height <= studio.limits.max_pixels and big.width % 8 == big.height % 8 == 0
    Image.new("1", (7100, 7000)).save(tmp_path / "huge.png")
    with pytest.raises(RequestError, match="limit is"):
        load_source(studio, tmp_path / "huge.png")


# ---- the tab ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tab(studio):
    ctx = UIContext(
        native_size=64, limits=studio.limits, count_tokens=lambda text: "", outputs_root=studio.outputs.root
    )
    with gr.Blocks() as demo:
        parts = refine_tab.create(ctx, ModeCalls("refine", lambda req, job: refine(studio, req, job)))
    return demo, parts


def test_handler_parameters_match_the_tab_inputs(tab):
    _, parts = tab
    names = [p for p in inspect.signature(parts.handler).parameters if p not in ("request", "progress")]
    assert len(names) == len(parts.inputs)
    assert names[:8] == [
        "image",
        "prompt",
        "negative_prompt",
        "strength",
        "num_inference_steps",
        "guidance_scale",
        "scheduler",
        "seed",
    ]


def saved_png(studio, shade: int) -> Path:
    return studio.outputs.save(Image.new("RGB", (64, 64), (shade, 40, 90)), f"look\nSeed: {shade}", "refine")


def test_bad_input_in_the_tab_is_an_error_in_words_and_the_history_is_unchanged(studio, tab, tmp_path):
    _, parts = tab
    history = History(studio.outputs.root)
    history.add(saved_png(studio, 1), saved_png(studio, 2), loop=1, seed=1, strength=0.5)
    tree = history.to_dict()
    before = History.from_dict(tree, studio.outputs.root).to_dict()
    Image.new("1", (7100, 7000)).save(tmp_path / "huge.png")
    for image in (None, str(tmp_path / "huge.png")):
        outputs = parts.handler(
            image, PROMPT, "", 0.75, 2, 7.5, "Euler", 1, 1, 2, "constant", 0.5, "fixed", True, None, tree, None
        )
        with pytest.raises(gr.Error) as error:
            next(outputs)
        assert "input image" in str(error.value.message).lower()
        assert tree == before


def test_continuing_from_a_node_grows_under_that_node(studio, tmp_path):
    history = History(studio.outputs.root)
    path = saved_png(studio, 3)
    node = history.add(path)
    cached_copy = tmp_path / "image.png"  # what Gradio hands back after showing the node in the input
    shutil.copyfile(path, cached_copy)
    assert refine_tab.source_value(str(cached_copy), node, history) == path
    assert refine_tab.source_value(str(tmp_path / "other.png"), node, history) == str(tmp_path / "other.png")
    assert refine_tab.source_value(str(cached_copy), None, history) == str(cached_copy)


def test_two_sessions_keep_separate_trees(studio, tab, tmp_path):
    from gradio_client import Client, handle_file

    demo, _ = tab
    port = free_port()
    demo.queue(api_open=False).launch(
        server_port=port, prevent_thread_lock=True, quiet=True, allowed_paths=[str(studio.outputs.root)]
    )
    try:
        url = f"http://127.0.0.1:{port}/"
        alice, bob = Client(url, verbose=False), Client(url, verbose=False)
        colourful().save(tmp_path / "look.png")
        args = dict(
            prompt=PROMPT,
            negative_prompt="",
            strength=0.5,
            num_inference_steps=2,
            guidance_scale=7.5,
            scheduler="Euler",
            seed=7,
            batch_size=1,
            strength_schedule="constant",
            final_strength=0.5,
            seed_policy="increment",
            color_correction=False,
            api_name="/refine",
        )
        shown, seed, infotext = alice.predict(image=handle_file(tmp_path / "look.png"), loops=2, **args)
        assert len(shown) == 2 and seed == 7 and "Denoising strength: 0.5" in infotext
        bob.predict(image=handle_file(tmp_path / "look.png"), loops=1, **args)
        _, alice_nodes = alice.predict(api_name="/refine_history")
        _, bob_nodes = bob.predict(api_name="/refine_history")
        assert [n["caption"] for n in alice_nodes] == ["#1 source", "#2 ← #1, s=0.5, seed 7", "#3 ← #2, s=0.5, seed 8"]
        assert [n["caption"] for n in bob_nodes] == ["#1 source", "#2 ← #1, s=0.5, seed 7"]
    finally:
        demo.close()


def test_a_cancel_stops_after_the_current_step_and_finished_loops_stay(studio):
    reported: list[int] = []
    job = Job()

    def on_step(step: int, total: int) -> None:
        reported.append(step)
        if len(reported) == 3:  # the first step of loop 2 (2 steps per loop): Cancel is pressed
            job.cancel.set()

    job.on_step = on_step
    items: list = []
    job.on_image = items.append
    with pytest.raises(Cancelled):
        refine(
            studio,
            RefineRequest(
                image=colourful(),
                prompt=PROMPT,
                strength=0.5,
                num_inference_steps=4,
                loops=4,
                seed=3,
                guidance_scale=1.0,
            ),
            job,
        )
    assert [i.loop for i in items] == [1]  # loop 1 landed and was saved
    assert reported == [1, 2, 3]  # progress counts across loops; no step ran after the one Cancel came in
    assert items[0].path.is_file()


def test_a_cancel_in_the_tab_keeps_every_finished_loop_in_the_history(studio, tmp_path):
    ctx = UIContext(
        native_size=64, limits=studio.limits, count_tokens=lambda text: "", outputs_root=studio.outputs.root
    )
    with gr.Blocks():
        parts = refine_tab.create(ctx, ModeCalls("refine", lambda req, job: refine(studio, req, job)))
    colourful().save(tmp_path / "look.png")
    run = parts.handler(
        str(tmp_path / "look.png"),
        PROMPT,
        "",
        0.5,
        2,
        1.0,
        "Euler",
        7,
        1,
        4,
        "constant",
        0.5,
        "increment",
        False,
        None,
        History(studio.outputs.root).to_dict(),
        None,
    )
    shown, seed, _, tree = next(item for item in run if not is_skip(item))  # loop 1 is shown and in the tree
    assert ctx.board.cancel("anonymous")
    with pytest.warns(UserWarning, match=r"Cancelled\. 1 finished image\(s\) were kept in the history"):
        after = [item for item in run if not is_skip(item)]
    assert all(item[0] == shown for item in after)  # nothing more: what was shown stays shown
    assert len(shown) == 1 and seed == 7
    assert len(History.from_dict(tree, studio.outputs.root).nodes) == 2  # the source and loop 1
