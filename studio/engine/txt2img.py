"""txt2img: a garment or look from a description."""

from __future__ import annotations

from dataclasses import dataclass

from diffusers import StableDiffusionPipeline

from studio.engine.common import (
    Job,
    Result,
    Studio,
    base_params,
    check_common,
    check_size,
    clean_prompts,
    generators,
    resolve_seed,
    save_image,
    step_callback,
)
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER


@dataclass(frozen=True)
class Txt2ImgRequest:
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1  # -1: random; the seed used is returned
    batch_size: int = 1  # images per UNet batch; image i uses seed + i
    batch_count: int = 1  # batches run one after another


def txt2img(studio: Studio, req: Txt2ImgRequest, job: Job | None = None) -> Result:
    check_common(req, studio.limits)
    prompts = clean_prompts(req, studio.limits)
    with studio.cache.gpu():
        native = studio.cache.native_size()
        width, height = req.width or native, req.height or native
        check_size(width, height, studio.limits)
        pipe = studio.cache.derive(StableDiffusionPipeline, scheduler=req.scheduler)
        seed = resolve_seed(req.seed)
        images = []
        for batch in range(req.batch_count):
            seeds = [seed + batch * req.batch_size + i for i in range(req.batch_size)]
            output = pipe(
                **prompt_kwargs(pipe, **prompts),
                num_inference_steps=req.num_inference_steps,
                guidance_scale=req.guidance_scale,
                width=width,
                height=height,
                num_images_per_prompt=req.batch_size,
                generator=generators(seeds),
                callback_on_step_end=step_callback(job, req.num_inference_steps),
                output_type="pil",
            )
            for image, image_seed in zip(output.images, seeds, strict=True):
                params = base_params(studio, req, image_seed, width, height, "txt2img")
                images.append(save_image(studio, image, prompts, params, "txt2img", job))
    return Result(images=images, seed=seed, params={**prompts, **base_params(studio, req, seed, width, height,
                                                                                    "txt2img")})
