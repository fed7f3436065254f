"""Live preview: a cheap latent picture every N steps, of the expected size, that never changes the final image."""

from __future__ import annotations

import inspect

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.cache import PREVIEW_SLOT, ModelCache
from studio.engine.batches import generators
from studio.engine.contract import Job, Studio
from studio.engine.steps import previewer, step_callback
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.modes import TXT2IMG, bind
from studio.outputs import Outputs
from studio.preview import PREVIEW_SCALE, SD15_LATENT_RGB, latents_to_rgb, preview_due, preview_image
from studio.prompts import prompt_kwargs
from studio.ui import txt2img_tab
from studio.ui.widgets import UIContext
from tests.conftest import final, make_settings, pixels

PROMPT = "a belted trench coat, studio photo"


def collect(every: int) -> tuple[Job, list[tuple[Image.Image, int, int]]]:
    seen: list[tuple[Image.Image, int, int]] = []
    return Job(on_preview=lambda image, step, total: seen.append((image, step, total)), preview_every=every), seen


def test_preview_is_due_every_n_steps_but_never_on_the_last():
    assert [s for s in range(1, 11) if preview_due(s, 10, 3)] == [3, 6, 9]
    assert [s for s in range(1, 11) if preview_due(s, 10, 5)] == [5]  # step 10 is the real image
    assert not any(preview_due(s, 10, 0) for s in range(1, 11))


def test_preview_maps_each_latent_channel_through_its_rgb_factors():
    latents = torch.zeros(2, 4, 3, 5)
    assert torch.allclose(latents_to_rgb(latents), torch.full((2, 3, 3, 5), 0.5))  # zero latents: mid grey
    for channel in range(4):
        one = torch.zeros(4, 3, 5)
        one[channel] = 0.5
        expected = ((0.5 * SD15_LATENT_RGB[channel] + 1) / 2).clamp(0, 1)
        assert torch.allclose(latents_to_rgb(one)[:, 1, 2], expected)
    assert preview_image(torch.zeros(1, 9, 8, 8)) is None  # not SD latents: no preview rather than a wrong one


@pytest.fixture(scope="module")
def latent_studio(tiny_dir, tmp_path_factory) -> Studio:
    """Previews by latent factors only (STUDIO_PREVIEW_DECODER=latent)."""
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("latent-previews"), preview_decoder="latent")
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def test_previews_arrive_every_n_steps_with_the_expected_count_and_size(latent_studio):
    job, seen = collect(every=2)
    txt2img(
        latent_studio, Txt2ImgRequest(PROMPT, num_inference_steps=5, width=64, height=128, seed=3, batch_size=2), job
    )
    assert [(step, total) for _, step, total in seen] == [(2, 5), (4, 5)]
    factor = latent_studio.cache.base().vae_scale_factor
    assert all(image.size == (64 // factor * PREVIEW_SCALE, 128 // factor * PREVIEW_SCALE) for image, _, _ in seen)
    assert PREVIEW_SLOT not in {row.kind for row in latent_studio.cache.resident()}  # TAESD never loaded
    assert all(image.mode == "RGB" for image, _, _ in seen)
    assert not np.array_equal(pixels(seen[0][0]), pixels(seen[1][0]))  # the picture follows the denoising


def test_previews_do_not_change_the_final_image_bit_for_bit(studio):
    pipe = studio.cache.derive(StableDiffusionPipeline, scheduler="Euler a")
    outputs = []
    jobs = [
        (None, preview_image),
        (Job(), preview_image),
        (collect(every=1)[0], preview_image),
        (collect(every=1)[0], previewer(studio)),
    ]  # latent factors, then TAESD, on every step
    for job, preview in jobs:
        with studio.cache.gpu():
            outputs.append(
                pipe(
                    **prompt_kwargs(pipe, PROMPT, ""),
                    num_inference_steps=4,
                    width=64,
                    height=64,
                    generator=generators([11]),
                    callback_on_step_end=step_callback(job, 4, preview),
                    output_type="np",
                ).images
            )
    assert all(np.array_equal(outputs[0], out) for out in outputs[1:])


def build_tab(studio, every: int):
    ctx = UIContext(native_size=64, limits=studio.limits, count_tokens=lambda text: "", preview_every=every)
    with gr.Blocks() as demo:
        parts = txt2img_tab.create(ctx, bind(TXT2IMG, studio))
    live = next(
        dep.fn
        for dep in demo.fns.values()
        if inspect.isgeneratorfunction(dep.fn) and getattr(dep.fn, "__wrapped__", None) is parts.handler
    )
    api = next(dep for dep in demo.fns.values() if dep.api_name == "txt2img")
    return parts, live, api


def form(**values: object) -> dict[str, object]:
    return {
        "prompt": PROMPT,
        "negative_prompt": "",
        "num_inference_steps": 5,
        "guidance_scale": 7.0,
        "width": 64,
        "height": 64,
        "scheduler": "Euler a",
        "seed": 21,
        "batch_size": 1,
        "batch_count": 1,
        **values,
    }


def test_the_browser_handler_streams_previews_then_the_api_handlers_final_outputs(studio):
    parts, live, api = build_tab(studio, every=2)
    assert api.fn is parts.handler and api.api_visibility == "public"
    assert len(api.outputs) == 3  # the API answers (gallery, seed, infotext) only
    assert list(inspect.signature(live).parameters) == list(inspect.signature(parts.handler).parameters)
    updates = list(live(**form(), request=None, progress=gr.Progress()))
    previews = [u for u in updates[:-1] if u[3] != gr.skip()]
    last = updates[-1]
    assert all(u[3] == gr.skip() for u in updates[:-1] if u not in previews)  # the other steps change nothing
    assert len(previews) == 2  # steps 2 and 4 of 5
    for update in previews:
        assert all(part == gr.skip() for part in update[:3])  # gallery untouched: no .change, no session entry
        assert isinstance(update[3]["value"], Image.Image) and update[3]["visible"] is True
    assert last[3] == gr.update(value=None, visible=False)
    gallery, seed, infotext = final(parts.handler(**form(), request=None, progress=gr.Progress()))
    assert last[1:3] == (seed, infotext) and seed == 21
    assert np.array_equal(pixels(last[0][0]), pixels(gallery[0]))


def test_an_error_in_the_streamed_run_reaches_the_designer_in_words(studio):
    _, live, _ = build_tab(studio, every=2)
    with pytest.raises(gr.Error, match="multiple of 8"):
        list(live(**form(width=100), request=None, progress=gr.Progress()))


# ---- TAESD ------------------------------------------------------------------------------------------------------
def test_previews_come_from_taesd_at_full_size_when_it_is_at_hand(studio, latent_studio):
    """The tiny checkpoints ship a TAESD twin (madebyollin/taesd's layout): previews are then decoded pictures at
    the image's own size, not the half-size latent approximation, in every mode's callback."""
    job, seen = collect(every=2)
    txt2img(studio, Txt2ImgRequest(PROMPT, num_inference_steps=5, width=64, height=128, seed=3), job)
    assert [(step, total) for _, step, total in seen] == [(2, 5), (4, 5)]
    assert all(image.size == (64, 128) and image.mode == "RGB" for image, _, _ in seen)
    assert PREVIEW_SLOT in {row.kind for row in studio.cache.resident()}
    decoder = studio.cache.preview_decoder()
    assert type(decoder).__name__ == "AutoencoderTiny" and studio.cache.preview_decoder() is decoder  # loaded once
    latent_job, latent_seen = collect(every=2)
    txt2img(latent_studio, Txt2ImgRequest(PROMPT, num_inference_steps=5, width=64, height=128, seed=3), latent_job)
    assert seen[0][0].size != latent_seen[0][0].size


def test_a_taesd_preview_is_the_decoders_picture_of_the_current_latents(studio):
    decoder = studio.cache.preview_decoder()
    latents = torch.randn(2, 4, 8, 16, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ((decoder.decode(latents[:1]).sample[0] + 1) / 2).clamp(0, 1)
    shown = previewer(studio)(latents)
    assert shown.size == (128, 64)
    assert np.abs(pixels(shown) - (expected.permute(1, 2, 0).numpy() * 255)).max() <= 0.5 + 1e-3  # rounding only


def test_without_taesd_previews_fall_back_to_latent_factors_and_never_look_twice(tiny_dir, tmp_path, caplog):
    settings = make_settings(tiny_dir, tmp_path / "outputs", preview_decoder=str(tmp_path / "no-taesd-here"))
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))
    job, seen = collect(every=1)
    with caplog.at_level("INFO", logger="studio.cache"):
        txt2img(studio, Txt2ImgRequest(PROMPT, num_inference_steps=3, width=64, height=64, seed=1), job)
    factor = studio.cache.base().vae_scale_factor
    assert [image.size for image, _, _ in seen] == [(64 // factor * PREVIEW_SCALE,) * 2] * 2
    assert sum("no TAESD at hand" in record.message for record in caplog.records) == 1  # looked once, not per step
