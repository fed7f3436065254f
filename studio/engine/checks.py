"""Request checks every mode shares: ranges, sizes, prompts, given latents. Each failure is a `RequestError`
whose message names the field (as diffusers names it) and says what to do."""

from __future__ import annotations

import unicodedata
from typing import Any

import torch

from studio.engine.contract import Studio
from studio.errors import RequestError
from studio.prompts import clean_prompt
from studio.schedulers import SAMPLERS
from studio.settings import Limits

__all__ = ["MAX_SEED", "RequestError", "check_common", "check_latents", "check_range", "check_size", "clean_prompts"]

MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 30.0


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


def check_common(
    req: Any,
    limits: Limits,
    *,
    prompt_required: bool = True,
    steps: tuple[int, int] | None = None,
    guidance: tuple[float, float] = (0, MAX_GUIDANCE),
) -> None:
    """Checks shared by every request type, for the fields the request has (fields named as diffusers names
    them). `steps` and `guidance` narrow the ranges for a mode that needs it (drafts)."""
    if prompt_required and not visible(req.prompt or ""):
        raise RequestError("The prompt is empty: describe the garment or look you want.")
    check_range("num_inference_steps", req.num_inference_steps, *(steps or (1, limits.max_steps)))
    check_range("guidance_scale", req.guidance_scale, *guidance)
    check_range("seed", req.seed, -1, MAX_SEED)
    check_range("batch_size", req.batch_size, 1, limits.max_batch_size)
    if hasattr(req, "batch_count"):
        check_range("batch_count", req.batch_count, 1, limits.max_batch_count)
    if hasattr(req, "scheduler") and req.scheduler not in SAMPLERS:
        raise RequestError(f"Unknown scheduler {req.scheduler!r}. Choose one of: {', '.join(SAMPLERS)}.")
    if hasattr(req, "ip_adapter_image"):  # an image prompt (studio.image_prompt.ImagePromptFields)
        from studio.image_prompt import check_image_prompt  # imported here: image_prompt imports this module

        check_image_prompt(req)


def visible(text: str) -> bool:
    """True when the text has a character that shows: not only spaces, control, format or bidi characters."""
    return any(unicodedata.category(char)[0] not in "CZ" for char in text)


def check_latents(studio: Studio, latents: torch.Tensor | None, batch_size: int, width: int, height: int) -> None:
    """Starting latents given by a script or test must fit the batch, the size and the UNet's channels."""
    if latents is None:
        return
    base = studio.cache.base()
    factor = base.vae_scale_factor
    expected = (batch_size, base.unet.config.in_channels, height // factor, width // factor)
    if tuple(latents.shape) != expected:
        raise RequestError(
            f"latents have shape {tuple(latents.shape)}; a {width}x{height} batch of {batch_size} needs {expected}."
        )


def clean_prompts(req: Any, limits: Limits) -> dict[str, str]:
    try:
        return {
            "prompt": clean_prompt(req.prompt, limits.max_prompt_chars),
            "negative_prompt": clean_prompt(req.negative_prompt, limits.max_prompt_chars),
        }
    except ValueError as exc:
        raise RequestError(str(exc)) from None
