"""Live preview: a cheap RGB picture of the latents every few denoising steps, without running the VAE.

Two ways, as ComfyUI and A1111 offer them: TAESD (`madebyollin/taesd`, a small decoder distilled from
SD's VAE) when the cache has it at hand — a full-size, near-final picture for a few milliseconds of GPU — and
otherwise the latent-factor approximation below.

SD1.5's four latent channels map almost linearly to RGB. The factors below are the ones the community's tools use
for SD1.5 previews (ComfyUI's `latent_formats.SD15`); they apply to the latents as the pipeline holds them (already
multiplied by the VAE's scaling factor) and give RGB in about [-1, 1]. One small matrix product per preview: no
weights, no GPU memory, and the latents are only read, so the final image is exactly what it is without previews.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image

# rows: latent channels 0..3; columns: R, G, B
SD15_LATENT_RGB = torch.tensor(
    [
        [0.3512, 0.2297, 0.3227],
        [0.3250, 0.4974, 0.2350],
        [-0.2829, 0.1762, 0.2721],
        [-0.2120, -0.2616, -0.7177],
    ]
)
PREVIEW_SCALE = 4  # preview px per latent px: half the final image's side for SD1.5 (VAE factor 8)


def preview_due(step: int, total: int, every: int) -> bool:
    """Whether finished step `step` (1-based) of `total` gets a preview. The last step gets none: the real image
    follows at once."""
    return every > 0 and step < total and step % every == 0


def latents_to_rgb(latents: torch.Tensor) -> torch.Tensor:
    """(C=4, h, w) or (N, 4, h, w) latents → RGB in [0, 1] of the same leading shape with 3 channels."""
    factors = SD15_LATENT_RGB.to(device=latents.device, dtype=torch.float32)
    rgb = torch.einsum("...chw,cr->...rhw", latents.detach().to(torch.float32), factors)
    return ((rgb + 1) / 2).clamp(0, 1)


def preview_image(latents: torch.Tensor, scale: int = PREVIEW_SCALE) -> Image.Image | None:
    """A small PIL picture of the first image of a latent batch (None for latents that are not SD's 4 channels)."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        return None
    image = rgb_image(latents_to_rgb(latents[0]))
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)


def decoded_preview(decoder: Any, latents: torch.Tensor) -> Image.Image | None:
    """The first image of a latent batch through TAESD (an `AutoencoderTiny`), at full size. TAESD takes the
    latents as the pipeline holds them (its scaling factor is 1) and returns RGB in [-1, 1]."""
    if latents.ndim != 4 or latents.shape[1] != 4:
        return None
    with torch.no_grad():
        sample = decoder.decode(latents[:1].detach().to(decoder.device, decoder.dtype)).sample[0]
    return rgb_image(((sample.to(torch.float32) + 1) / 2).clamp(0, 1))


def rgb_image(rgb: torch.Tensor) -> Image.Image:
    """(3, h, w) RGB in [0, 1] → a PIL image."""
    pixels = (rgb * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
