"""Where a result is written: its A1111 `parameters` (infotext) and the PNG in the outputs folder."""

from __future__ import annotations

from typing import Any

from PIL import Image

from studio.engine.contract import Generated, Job, Studio
from studio.metadata import format_infotext
from studio.schedulers import get_sampler


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
    """Write the PNG with its infotext (atomically), then tell the job: written before shown."""
    infotext = format_infotext(prompts["prompt"], prompts["negative_prompt"], params)
    path = studio.outputs.save(image, infotext, mode, dpi=(dpi, dpi) if dpi else None)
    generated = Generated(path=path, image=image, seed=int(params["Seed"]), infotext=infotext)
    if job is not None and job.on_image is not None:
        job.on_image(generated)
    return generated
