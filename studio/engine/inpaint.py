"""Inpaint: repaint a brushed region of a garment photo and keep everything else exactly.

- The pipeline is `StableDiffusionInpaintPipeline` derived from the shared base (its 4-channel UNet: latent
  blending), or, when `settings.inpaint_model` is set, with the 9-channel inpainting UNet from the cache's
  `inpaint_unet` slot (VAE, text encoder and tokenizer still shared with the base).
- Masked content: "original" (the photo under the mask), "fill" (colours diffused in from around the mask) or
  "latent_noise" (the masked area of the starting latents replaced by random noise, as A1111 does).
- Inpaint area: "whole" (the photo at its own size) or "only_masked" (the mask's bounding box plus `padding`,
  processed at the model's native resolution and scaled back: more detail for small regions).
- The result is always pasted back over the input through the feathered mask: pixels outside the mask and its
  feather band are the (normalised) input's, byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionInpaintPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from studio import image_prompt, masks
from studio.engine.batches import generators, resolve_seed, seed_batches
from studio.engine.checks import RequestError, check_common, check_range, clean_prompts
from studio.engine.contract import Generated, Job, Result, Studio
from studio.engine.saving import Writes, base_params, save_image, to_pil
from studio.engine.steps import PreviewFn, previewer, step_callback
from studio.images import ImageInputError, load_alpha, load_image, load_mask
from studio.preview import preview_image
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER
from studio.settings import Limits

MASKED_CONTENT = {"original": "original", "fill": "fill", "latent_noise": "latent noise"}
INPAINT_AREA = {"whole": "Whole picture", "only_masked": "Only masked"}
MAX_MASK_BLUR = 64
MAX_PADDING = 512


@dataclass(frozen=True)
class InpaintRequest(image_prompt.ImagePromptFields):
    image: Any  # a photo (PIL, array, uploaded file) or an image-editor value {"background", "layers", ...}
    mask_image: Any = None  # white = repaint; None: the editor value's brush layers are the mask
    prompt: str = ""
    negative_prompt: str = ""
    strength: float = 0.75
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1  # -1: random; the seed used is returned
    batch_size: int = 1
    batch_count: int = 1
    mask_blur: int = 4  # feather radius in pixels
    invert_mask: bool = False
    masked_content: str = "original"  # "original" | "fill" | "latent_noise"
    inpaint_area: str = "whole"  # "whole" | "only_masked"
    padding: int = 32  # pixels around the mask for "only_masked"


@dataclass(frozen=True)
class Work:
    """What one inpainting run processes: the region, its size, and the inputs the pipeline receives."""

    box: masks.Box
    image: Image.Image
    mask: Image.Image


def check_request(req: InpaintRequest, limits: Limits) -> None:
    check_common(req, limits, prompt_required=False)
    check_range("strength", req.strength, 0.01, 1.0)
    if int(req.num_inference_steps * req.strength) < 1:
        raise RequestError(
            f"With strength {req.strength:g}, {req.num_inference_steps} steps leave nothing to "
            "denoise: raise the strength or the number of steps."
        )
    check_range("mask_blur", req.mask_blur, 0, MAX_MASK_BLUR)
    check_range("padding", req.padding, 0, MAX_PADDING)
    if req.masked_content not in MASKED_CONTENT:
        raise RequestError(f"Unknown masked content {req.masked_content!r}: use one of {', '.join(MASKED_CONTENT)}.")
    if req.inpaint_area not in INPAINT_AREA:
        raise RequestError(f"Unknown inpaint area {req.inpaint_area!r}: use one of {', '.join(INPAINT_AREA)}.")


def load_inputs(req: InpaintRequest, limits: Limits) -> tuple[Image.Image, Image.Image]:
    """The normalised photo (upright RGB) and the mask ("L", same size, inverted if asked)."""
    editor = masks.editor_value(req.image)
    try:
        image = load_image(editor.background if editor else req.image, limits.max_pixels)
        if req.mask_image is not None:
            mask = load_mask(req.mask_image, image.size, limits.max_pixels)
        elif editor is None:
            raise RequestError("No mask given: upload a mask image (white = repaint) or brush over the photo.")
        elif not editor.layers:
            raise RequestError("Draw a mask first: brush over the area to repaint, or upload a mask.")
        else:
            mask = masks.combine([load_alpha(layer, image.size, limits.max_pixels) for layer in editor.layers])
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None
    if editor is not None and req.mask_image is None and masks.is_empty(mask):
        raise RequestError("Draw a mask first: the brush layers are empty.")
    if req.invert_mask:
        mask = masks.invert(mask)
    if masks.is_empty(mask):
        raise RequestError("The mask is empty: brush over (or paint white) the area to repaint.")
    return image, mask


def plan(image: Image.Image, alpha: Image.Image, req: InpaintRequest, native: int, limits: Limits) -> Work:
    """Crop and scale: the whole photo at its own size (sides rounded down to multiples of 8), or the mask's
    padded bounding box at about the model's native resolution."""
    if req.inpaint_area == "only_masked":
        box = masks.crop_box(alpha, req.padding)
        size = masks.processing_size(box[2] - box[0], box[3] - box[1], native, limits.max_side)
    else:
        box = (0, 0, *image.size)
        size = (max(8, image.width // 8 * 8), max(8, image.height // 8 * 8))
    region, region_mask = image.crop(box), alpha.crop(box)
    if region.size != size:
        region = region.resize(size, Image.Resampling.LANCZOS)
        region_mask = region_mask.resize(size, Image.Resampling.BILINEAR)
    if req.masked_content == "fill":
        region = masks.fill(region, region_mask)
    return Work(box=box, image=region, mask=region_mask)


def own_unet(studio: Studio) -> Any | None:
    """With `inpaint_model` set, its 9-channel UNet (a separate UNet, held in its own slot); else None."""
    return studio.cache.slot("inpaint_unet") if studio.cache.settings.inpaint_model else None


def pipeline(
    studio: Studio,
    scheduler: str,
    model: str | None = None,
    prompts: dict[str, str] | None = None,
    ip: image_prompt.ImagePrompt | None = None,
) -> Any:
    """The base's modules, with `own_unet` when set; with an image prompt, the IP-Adapter copy of that UNet."""
    unet = own_unet(studio)
    modules = {"unet": unet} if unet is not None else {}
    modules.update(ip.modules if ip is not None else {})
    return studio.cache.derive(
        StableDiffusionInpaintPipeline, scheduler=scheduler, ref=model, prompts=prompts, **modules
    )


@torch.no_grad()
def latent_noise_inputs(pipe: Any, work: Work, gens: list[torch.Generator]) -> dict[str, torch.Tensor]:
    """Starting latents whose masked area is pure noise (the rest encodes the photo), plus the masked-photo
    latents a 9-channel UNet is conditioned on. Passed to the pipeline as 4-channel `image` latents."""
    width, height = work.image.size
    device, dtype, vae = pipe.device, pipe.dtype, pipe.vae
    pixels = pipe.image_processor.preprocess(work.image, height=height, width=width).to(device, dtype)
    mask = pipe.mask_processor.preprocess(work.mask, height=height, width=width).to(device, dtype)
    scale = vae.config.scaling_factor
    latents = torch.cat([vae.encode(pixels).latent_dist.sample(generator=g) for g in gens]) * scale
    noise = randn_tensor(latents.shape, generator=gens, device=device, dtype=dtype)
    small = torch.nn.functional.interpolate(mask, size=latents.shape[-2:])
    if pipe.unet.config.in_channels == 9:
        masked = vae.encode(pixels * (mask < 0.5)).latent_dist.mode() * scale
    else:
        masked = torch.zeros_like(latents[:1])  # unused by a 4-channel UNet
    return {"image": latents * (1 - small) + noise * small, "masked_image_latents": masked}


def denoise(
    pipe: Any,
    req: InpaintRequest,
    prompts: dict[str, str],
    work: Work,
    seeds: list[int],
    job: Job | None,
    preview: PreviewFn = preview_image,
    ip: image_prompt.ImagePrompt | None = None,
) -> np.ndarray:
    """One batch's repainted regions, as the pipeline's `output_type="np"` gives them."""
    gens = generators(seeds)
    width, height = work.image.size
    images: dict[str, Any] = {"image": work.image}
    if req.masked_content == "latent_noise":
        images = latent_noise_inputs(pipe, work, gens)
    steps = int(req.num_inference_steps * req.strength)
    output = pipe(
        **prompt_kwargs(pipe, **prompts),
        **images,
        **(ip.call_kwargs(pipe, req.guidance_scale) if ip is not None else {}),
        mask_image=work.mask,
        strength=req.strength,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        width=width,
        height=height,
        num_images_per_prompt=req.batch_size,
        generator=gens,
        callback_on_step_end=step_callback(job, steps, preview),
        output_type="np",
    )
    return output.images


def inpaint_params(
    studio: Studio, req: InpaintRequest, seed: int, size: tuple[int, int], model: str | None = None
) -> dict[str, Any]:
    params = base_params(studio, req, seed, size[0], size[1], "inpaint", model)
    params.update(
        {
            "Denoising strength": req.strength,
            "Mask blur": req.mask_blur,
            "Mask mode": "Inpaint not masked" if req.invert_mask else "Inpaint masked",
            "Masked content": MASKED_CONTENT[req.masked_content],
            "Inpaint area": INPAINT_AREA[req.inpaint_area],
            "Masked area padding": req.padding if req.inpaint_area == "only_masked" else None,
            "Inpaint model": studio.cache.companion_source("inpaint_unet")
            if studio.cache.settings.inpaint_model
            else None,
            **image_prompt.request_params(req),
        }
    )
    return params


def inpaint(studio: Studio, req: InpaintRequest, job: Job | None = None) -> Result:
    check_request(req, studio.limits)
    prompts = clean_prompts(req, studio.limits)
    image, mask = load_inputs(req, studio.limits)
    alpha = masks.feather(mask, req.mask_blur)
    model = studio.cache.current
    ip = image_prompt.prepare(studio, req, unet=own_unet(studio), ref=model)
    pipe = pipeline(studio, req.scheduler, model, prompts, ip)
    native = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    work = plan(image, alpha, req, native, studio.limits)
    seed = resolve_seed(req.seed)
    paste = PasteBack(studio, req, prompts, image, alpha, work.box, model)
    results = []
    with Writes(job, defer=True) as writes, studio.cache.gpu():
        for seeds in seed_batches(seed, req.batch_size, req.batch_count):
            writes.flush()  # the previous batch's writes run while this one denoises
            painted = denoise(pipe, req, prompts, work, seeds, job, previewer(studio), ip)
            results += [writes.submit(partial(paste.save, pixels, s)) for pixels, s in zip(painted, seeds, strict=True)]
    params = {**prompts, **inpaint_params(studio, req, seed, image.size, model)}
    return Result(images=[r.result() for r in results], seed=seed, params=params)


@dataclass(frozen=True)
class PasteBack:
    """On a writer thread: a repainted region pasted back over the photo through the feathered mask, then saved."""

    studio: Studio
    req: InpaintRequest
    prompts: dict[str, str]
    image: Image.Image
    alpha: Image.Image
    box: masks.Box
    model: str

    def save(self, pixels: np.ndarray, seed: int) -> Generated:
        final = masks.paste_back(self.image, to_pil(pixels), self.alpha, self.box)
        params = inpaint_params(self.studio, self.req, seed, self.image.size, self.model)
        return save_image(self.studio, final, self.prompts, params, "inpaint", None)
