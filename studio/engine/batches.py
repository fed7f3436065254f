"""Seeds and batches: A1111's convention that image i of a run uses seed + i, over `batch_count` pipeline calls
of `batch_size` images each; CPU generators so a seed gives the same image on any machine."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from functools import partial
from typing import Any

import numpy as np
import torch

from studio.engine.checks import MAX_SEED
from studio.engine.contract import Generated, Job, Studio
from studio.engine.saving import Writes, save_image, to_pil
from studio.engine.steps import previewer, step_callback
from studio.prompts import prompt_kwargs


def resolve_seed(seed: int) -> int:
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else int(seed)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same image on any machine (CPU or GPU)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def seed_batches(seed: int, batch_size: int, batch_count: int) -> Iterator[list[int]]:
    """The seeds of each pipeline call: batch b holds seed + b * batch_size + i for its images i."""
    for batch in range(batch_count):
        yield [seed + batch * batch_size + i for i in range(batch_size)]


def run_batches(
    studio: Studio,
    pipe: Any,
    req: Any,
    *,
    writes: Writes,
    prompts: dict[str, str],
    job: Job | None,
    size: tuple[int, int],
    seed: int,
    params: Callable[[int], dict[str, Any]],
    prefix: str,
    **extra: Any,
) -> list[Future[Generated]]:
    """`req.batch_count` pipeline calls of `req.batch_size` images. Call it holding the GPU lock: between calls it
    only hands each image to `writes`, which saves it with `params(its seed)` on a writer thread and then tells
    the job. `extra` goes to the pipeline (control images, latents)."""
    images = []
    kwargs = prompt_kwargs(pipe, **prompts)  # long prompts: their chunks are encoded here, once per run
    for seeds in seed_batches(seed, req.batch_size, req.batch_count):
        writes.flush()  # the previous batch's writes run while this one denoises
        output = pipe(
            **kwargs,
            **extra,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
            width=size[0],
            height=size[1],
            num_images_per_prompt=req.batch_size,
            generator=generators(seeds),
            callback_on_step_end=step_callback(job, req.num_inference_steps, previewer(studio)),
            output_type="np",
        )
        for pixels, image_seed in zip(output.images, seeds, strict=True):
            images.append(writes.submit(partial(_save, studio, pixels, prompts, params, image_seed, prefix)))
    return images


def _save(
    studio: Studio,
    pixels: np.ndarray,
    prompts: dict[str, str],
    params: Callable[[int], dict[str, Any]],
    seed: int,
    prefix: str,
) -> Generated:
    return save_image(studio, to_pil(pixels), prompts, params(seed), prefix, None)
