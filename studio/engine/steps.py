"""What happens at each denoising step: progress, cancel and live previews, through `callback_on_step_end`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from studio.engine.contract import Job, Studio
from studio.errors import Cancelled
from studio.preview import decoded_preview, preview_due, preview_image

PreviewFn = Callable[[torch.Tensor], "Image.Image | None"]


def previewer(studio: Studio) -> PreviewFn:
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


def step_callback(job: Job | None, total: int, preview: PreviewFn = preview_image) -> Callable[..., dict[str, Any]]:
    """`callback_on_step_end` that reports progress and stops the run when cancelled."""

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if job is not None:
            if job.cancel.is_set():
                raise Cancelled("Cancelled.")
            if job.on_step is not None:
                job.on_step(step + 1, total)
            if job.on_preview is not None and preview_due(step + 1, total, job.preview_every):
                send_preview(job, preview, kwargs.get("latents"), step + 1, total)
        return kwargs

    return callback


def send_preview(job: Job, preview: PreviewFn, latents: Any, step: int, total: int) -> None:
    """The latents are only read: previews never change the image."""
    image = preview(latents) if isinstance(latents, torch.Tensor) else None
    if image is not None and job.on_preview is not None:
        job.on_preview(image, step, total)
