"""What every mode shares: requests' common fields and their checks, seeds, progress/cancel, saving results.

The engine knows nothing of Gradio: modes take a request dataclass (fields named as diffusers names them) and a
`Job` (progress callback, cancel flag), and return a `Result` with the saved files and the parameters used.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from PIL import Image

from studio.cache import ModelCache
from studio.metadata import format_infotext
from studio.outputs import Outputs
from studio.preview import decoded_preview, preview_due, preview_image
from studio.prompts import clean_prompt, prompt_kwargs
from studio.schedulers import SAMPLERS, get_sampler
from studio.settings import Limits

MAX_SEED = 2**32 - 1


class RequestError(ValueError):
    """Input the user can fix; the message says what happened and what to do."""


class Cancelled(Exception):
    """Raised inside the step callback when the designer presses Cancel."""


class CancelFlag(Protocol):
    """What a run reads to stop early: a `threading.Event`, or `studio.jobs.FileFlag` across processes."""

    def set(self) -> None: ...
    def is_set(self) -> bool: ...


@dataclass
class Job:
    """Per-run controls handed in by the caller (the UI, a script, a test)."""

    on_step: Callable[[int, int], None] | None = None
    cancel: CancelFlag = field(default_factory=threading.Event)
    on_image: Callable[[Generated], None] | None = None
    # live preview: on_preview(image, step, total) every `preview_every` steps (0 = never); see studio.preview
    on_preview: Callable[[Image.Image, int, int], None] | None = None
    preview_every: int = 0


@dataclass
class Generated:
    path: Path
    image: Image.Image
    seed: int
    infotext: str


@dataclass
class Result:
    images: list[Generated]
    seed: int  # the first image's seed: re-running with it reproduces the whole batch
    params: dict[str, Any]

    @property
    def paths(self) -> list[Path]:
        return [g.path for g in self.images]


@dataclass
class Studio:
    """What every mode runs against: settings' limits, the shared model cache and the outputs folder."""

    cache: ModelCache
    outputs: Outputs

    @property
    def limits(self) -> Limits:
        return self.cache.settings.limits


# ---- checks ---------------------------------------------------------------------------------------------------
def check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise RequestError(f"{name} must be between {low:g} and {high:g}; got {value:g}.")


def check_size(width: int, height: int, limits: Limits) -> None:
    for name, value in (("width", width), ("height", height)):
        if value % 8:
            raise RequestError(f"{name} must be a multiple of 8 (got {value}); try {max(8, round(value / 8) * 8)}.")
        check_range(name, value, 64 if value >= 64 else 8, limits.max_side)
    if width * height > limits.max_pixels:
        raise RequestError(
            f"{width}x{height} is {width * height:,} pixels; this studio allows {limits.max_pixels:,}. "
            "Choose a smaller size."
        )


def check_common(req: Any, limits: Limits, prompt_required: bool = True) -> None:
    """Checks shared by every request type (fields named as diffusers names them)."""
    if prompt_required and not (req.prompt or "").strip():
        raise RequestError("The prompt is empty: describe the garment or look you want.")
    check_range("num_inference_steps", req.num_inference_steps, 1, limits.max_steps)
    check_range("guidance_scale", req.guidance_scale, 0, 30)
    check_range("seed", req.seed, -1, MAX_SEED)
    check_range("batch_size", req.batch_size, 1, limits.max_batch_size)
    check_range("batch_count", req.batch_count, 1, limits.max_batch_count)
    if req.scheduler not in SAMPLERS:
        raise RequestError(f"Unknown scheduler {req.scheduler!r}. Choose one of: {', '.join(SAMPLERS)}.")


def clean_prompts(req: Any, limits: Limits) -> dict[str, str]:
    try:
        return {
            "prompt": clean_prompt(req.prompt, limits.max_prompt_chars),
            "negative_prompt": clean_prompt(req.negative_prompt, limits.max_prompt_chars),
        }
    except ValueError as exc:
        raise RequestError(str(exc)) from None


# ---- seeds and progress ---------------------------------------------------------------------------------------
def resolve_seed(seed: int) -> int:
    return secrets.randbelow(MAX_SEED + 1) if seed == -1 else int(seed)


def generators(seeds: list[int]) -> list[torch.Generator]:
    """CPU generators: the same seed gives the same image on any machine (CPU or GPU)."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


Preview = Callable[[torch.Tensor], "Image.Image | None"]


def previewer(studio: Studio) -> Preview:
    """Latents → live-preview picture: through TAESD when the cache has it at hand, else the latent-factor
    approximation. The decoder is looked up once, at the first preview of the run (runs without previews never
    touch it), not on every previewed step."""
    looked_up: list[Any] = []

    def preview(latents: torch.Tensor) -> Image.Image | None:
        if not looked_up:
            looked_up.append(studio.cache.preview_decoder())
        decoder = looked_up[0]
        return preview_image(latents) if decoder is None else decoded_preview(decoder, latents)

    return preview


def step_callback(job: Job | None, total: int, preview: Preview = preview_image) -> Callable[..., dict[str, Any]]:
    """`callback_on_step_end` that reports progress and stops the run when cancelled."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if job is not None:
            if job.cancel.is_set():
                raise Cancelled("Cancelled.")
            if job.on_step is not None:
                job.on_step(step + 1, total)
            if job.on_preview is not None and preview_due(step + 1, total, job.preview_every):
                _send_preview(job, preview, kwargs.get("latents"), step + 1, total)
        return kwargs

    return callback


def _send_preview(job: Job, preview: Preview, latents: Any, step: int, total: int) -> None:
    """The latents are only read: previews never change the image."""
    image = preview(latents) if isinstance(latents, torch.Tensor) else None
    if image is not None and job.on_preview is not None:
        job.on_preview(image, step, total)


def run_batches(
    studio: Studio,
    pipe: Any,
    req: Any,
    prompts: dict[str, str],
    job: Job | None,
    size: tuple[int, int],
    seed: int,
    params: Callable[[int], dict[str, Any]],
    prefix: str,
    **extra: Any,
) -> list[Generated]:
    """`req.batch_count` pipeline calls of `req.batch_size` images (image i of the run uses seed + i, A1111's
    convention), each image saved with `params(its seed)` as soon as its batch is done. `extra` goes to the pipeline
    (control images, latents)."""
    images = []
    for batch in range(req.batch_count):
        seeds = [seed + batch * req.batch_size + i for i in range(req.batch_size)]
        output = pipe(
            **prompt_kwargs(pipe, **prompts),
            **extra,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
            width=size[0],
            height=size[1],
            num_images_per_prompt=req.batch_size,
            generator=generators(seeds),
            callback_on_step_end=step_callback(job, req.num_inference_steps, previewer(studio)),
            output_type="pil",
        )
        for image, image_seed in zip(output.images, seeds, strict=True):
            images.append(save_image(studio, image, prompts, params(image_seed), prefix, job))
    return images


# ---- metadata and saving ---------------------------------------------------------------------------------------
def base_params(studio: Studio, req: Any, seed: int, width: int, height: int, mode: str) -> dict[str, Any]:
    """A1111's key order: Steps, Sampler, Schedule type, CFG scale, Seed, Size, Model hash, Model, ..."""
    sampler = get_sampler(req.scheduler)
    ckpt = studio.cache.checkpoint()
    return {
        "Steps": req.num_inference_steps,
        "Sampler": sampler.a1111_sampler,
        "Schedule type": sampler.schedule_type,
        "CFG scale": req.guidance_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": studio.cache.model_hash() or None,
        "Model": ckpt.name,
        "Mode": mode,
    }


def save_image(
    studio: Studio,
    image: Image.Image,
    prompts: dict[str, str],
    params: dict[str, Any],
    mode: str,
    job: Job | None,
    dpi: int | None = None,
) -> Generated:
    infotext = format_infotext(prompts["prompt"], prompts["negative_prompt"], params)
    path = studio.outputs.save(image, infotext, mode, dpi=(dpi, dpi) if dpi else None)
    generated = Generated(path=path, image=image, seed=int(params["Seed"]), infotext=infotext)
    if job is not None and job.on_image is not None:
        job.on_image(generated)
    return generated
