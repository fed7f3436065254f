"""txt2img: the studio's output is plain diffusers' output, reproducible, and carries its recipe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from studio.engine.checks import RequestError
from studio.engine.contract import Cancelled, Job
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext, read_parameters
from studio.schedulers import get_sampler
from tests.conftest import pixels

PROMPT = "photo of a double-breasted camel wool coat, studio light"


@pytest.fixture(scope="module")
def plain(tiny_dir):
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir / "base", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["DPM++ 2M Karras", "Euler a", "DDIM", "UniPC"])
def test_txt2img_equals_plain_diffusers_pixel_for_pixel(studio, plain, tiny_dir, scheduler):
    req = Txt2ImgRequest(
        prompt=PROMPT,
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=7.5,
        scheduler=scheduler,
        seed=1234,
    )
    ours = txt2img(studio, req).images[0]
    # Plain diffusers usage: the scheduler handed to from_pretrained (the pipeline's __init__ sanitises its config).
    plain = StableDiffusionPipeline.from_pretrained(
        tiny_dir / "base",
        safety_checker=None,
        scheduler=get_sampler(scheduler).build(plain.scheduler.config),
    )
    expected = plain(
        PROMPT,
        negative_prompt="blurry",
        num_inference_steps=4,
        guidance_scale=7.5,
        generator=torch.Generator("cpu").manual_seed(1234),
    ).images[0]
    assert np.array_equal(pixels(ours.path), pixels(expected))


def test_same_seed_gives_same_image(studio):
    req = Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=99)
    first, second = txt2img(studio, req), txt2img(studio, req)
    assert np.array_equal(pixels(first.paths[0]), pixels(second.paths[0]))
    other = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=100))
    assert not np.array_equal(pixels(first.paths[0]), pixels(other.paths[0]))


def test_random_seed_is_returned_and_reproduces_the_image(studio):
    first = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=-1))
    assert 0 <= first.seed < 2**32
    again = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=first.seed))
    assert np.array_equal(pixels(first.paths[0]), pixels(again.paths[0]))


def test_batch_images_use_consecutive_seeds_and_each_reproduces_alone(studio):
    batch = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=500, batch_size=2, batch_count=2))
    assert [g.seed for g in batch.images] == [500, 501, 502, 503]
    single = txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=3, seed=503))
    # Batched convolutions may round differently from a batch of one; the image must be the same picture.
    assert np.abs(pixels(batch.paths[3]) - pixels(single.paths[0])).max() <= 2
    assert len({p.name for p in batch.paths}) == 4


def test_png_parameters_parse_back_into_the_request(studio):
    req = Txt2ImgRequest(
        prompt='刺繍のシルクドレス, embroidered silk dress: "atelier"',
        negative_prompt="lowres, text",
        num_inference_steps=3,
        guidance_scale=6.5,
        width=64,
        height=128,
        scheduler="Euler a",
        seed=4242,
    )
    path = txt2img(studio, req).paths[0]
    with Image.open(path) as image:
        assert image.size == (64, 128)
        info = parse_infotext(read_parameters(image))
    assert info.prompt == req.prompt
    assert info.negative_prompt == req.negative_prompt
    p = info.params
    assert (p["Steps"], p["CFG scale"], p["Seed"], p["Size"]) == ("3", "6.5", "4242", "64x128")
    assert p["Sampler"] == "Euler a" and p["Model"] == "tiny" and len(p["Model hash"]) == 10


def test_prompt_longer_than_77_tokens_is_not_silently_cut(studio):
    head = ", ".join(["tailored wool coat with notched lapels"] * 14)  # well past 75 tokens
    a = txt2img(studio, Txt2ImgRequest(prompt=head + ", bright red", num_inference_steps=3, seed=5))
    b = txt2img(studio, Txt2ImgRequest(prompt=head + ", deep green", num_inference_steps=3, seed=5))
    assert not np.array_equal(pixels(a.paths[0]), pixels(b.paths[0])), "words after token 77 must matter"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"width": 65}, "multiple of 8"),
        ({"num_inference_steps": 10_000}, "num_inference_steps must be between"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"scheduler": "Nope"}, "Unknown scheduler"),
        ({"width": 4096, "height": 4096}, "must be between"),
        ({"batch_size": 99}, "batch_size must be between"),
    ],
)
def test_bad_inputs_give_clear_errors(studio, change, message):
    fields = {"prompt": PROMPT, "num_inference_steps": 2, **change}
    with pytest.raises(RequestError, match=message):
        txt2img(studio, Txt2ImgRequest(**fields))


def test_cancel_stops_inside_the_denoising_loop(studio):
    seen: list[int] = []
    job = Job()

    def on_step(step: int, total: int) -> None:
        seen.append(step)
        job.cancel.set()

    job.on_step = on_step
    with pytest.raises(Cancelled):
        txt2img(studio, Txt2ImgRequest(prompt=PROMPT, num_inference_steps=10, seed=1), job)
    assert seen == [1]
