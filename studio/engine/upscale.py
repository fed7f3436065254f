"""Upscale: any result (or upload) to a larger size with a super-resolution model, then optionally a detail pass.

1. **Model upscale** (`studio.upscale`): an ESRGAN-family file from the upscalers folder, in tiles under the GPU
   lock; a repeat tile sees its wrapped neighbourhood, so it stays seamless. Lanczos when no model is chosen.
2. **Detail pass** (A1111's "SD upscale"): img2img at low strength over the enlarged picture in overlapping tiles
   at the model's native size, blended where they overlap (a feathered weight, normalised). For a repeat, the
   tiles are laid on the print itself: a tile crossing the tile's edge reads the neighbour as the repeat defines it
   and its result is added back where those pixels belong (`patterns.plane_index`), so the seam is painted like
   any other place. Each tile is Textile's swatch img2img (`textile.SwatchPipeline`) with its starting noise cut
   from one noise field over the whole picture, so moving the picture and the noise together moves the result.

The same steps make Textile's print files (`print_enlarge`). The metadata records what A1111 users know from its
extras tab and SD upscale script: `Postprocess upscaler`, `Postprocess upscale by`, `Postprocess upscale to`,
`SD upscale overlap`, plus `Upscaler hash` (A1111's 10-hex sha256), `SD upscale tile` and `Detail strength`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from studio import patterns, tiling, upscale
from studio.engine.batches import resolve_seed
from studio.engine.checks import RequestError, check_range
from studio.engine.colourways import NO_REPEAT, load_source
from studio.engine.contract import Cancelled, Job, Result, Studio
from studio.engine.saving import base_params, save_image
from studio.engine.textile import SwatchPipeline, encode
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER, SAMPLERS
from studio.settings import Limits

AUTO = "auto"
REPEAT_CHOICES = (AUTO, *tiling.REPEATS, NO_REPEAT)
MAX_SCALE = 8.0
MAX_SIDE = 16384
DETAIL_OVERLAP = 64  # px
MAX_TILE = 2048


@dataclass(frozen=True)
class DetailPass:
    """img2img over the enlarged picture in overlapping tiles (A1111's SD upscale)."""

    strength: float
    prompt: str = ""
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    scheduler: str = DEFAULT_SAMPLER
    seed: int = 0
    tile_size: int = 0  # px; 0: the model's native size
    tile_overlap: int = DETAIL_OVERLAP


@dataclass(frozen=True)
class UpscaleRequest:
    image: Any = None  # any picture; a studio tile brings its repeat and prompt along in its metadata
    upscaler: str = ""  # a file of the upscalers folder by name; "" the default file; "Lanczos": no model
    scale: float = 4.0  # the size is scale x the image's, unless width/height give it
    width: int | None = None  # target px; one side alone keeps the image's aspect
    height: int | None = None
    repeat: str = AUTO  # auto: the repeat the image records (none when it records none); a repeat; or "none"
    detail_strength: float = 0.0  # the detail pass's img2img strength; 0: no detail pass
    prompt: str = ""  # the detail pass's prompt; "" the image's own recorded prompt
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 5.0
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1
    tile_size: int = 0  # the detail pass's tiles in px; 0: the model's native size
    tile_overlap: int = DETAIL_OVERLAP


# ---- checks -------------------------------------------------------------------------------------------------------
def check_request(req: UpscaleRequest, limits: Limits) -> None:
    """The request's settings (a preset or a restore checks these without an image; the run checks that too)."""
    if req.repeat not in REPEAT_CHOICES:
        raise RequestError(f"Unknown repeat {req.repeat!r}. Choose one of: {', '.join(REPEAT_CHOICES)}.")
    if len(req.upscaler) > 200:
        raise RequestError("upscaler must be the name of a file in the upscalers folder.")
    check_range("scale", req.scale, 1.0, MAX_SCALE)
    for name in ("width", "height"):
        value = getattr(req, name)
        if value is not None:
            check_range(name, value, 8, MAX_SIDE)
    check_range("detail_strength", req.detail_strength, 0.0, 1.0)
    if req.detail_strength > 0:
        check_detail(req, limits)


def check_detail(req: Any, limits: Limits) -> None:
    """The detail pass's own settings (only when it runs)."""
    if req.scheduler not in SAMPLERS:
        raise RequestError(f"Unknown sampler {req.scheduler!r}. Choose one of: {', '.join(SAMPLERS)}.")
    check_range("num_inference_steps", req.num_inference_steps, 1, limits.max_steps)
    check_range("guidance_scale", req.guidance_scale, 0.0, 30.0)
    if int(req.num_inference_steps * req.detail_strength) < 1:
        raise RequestError(
            f"{req.num_inference_steps} steps at detail strength {req.detail_strength:g} run no step at all; "
            "raise the steps or the strength."
        )
    if req.tile_size and (req.tile_size % 8 or not 64 <= req.tile_size <= MAX_TILE):
        raise RequestError(f"tile_size must be 0 (native) or a multiple of 8 from 64 to {MAX_TILE}.")
    if req.tile_overlap % 8 or req.tile_overlap < 0:
        raise RequestError("tile_overlap must be a multiple of 8 px, 0 or more.")


def target_size(req: UpscaleRequest, width: int, height: int) -> tuple[int, int]:
    """The result's px: width/height when given (one side follows the other), else scale x the image's."""
    if req.width and req.height:
        size = (req.width, req.height)
    elif req.width:
        size = (req.width, max(1, round(req.width * height / width)))
    elif req.height:
        size = (max(1, round(req.height * width / height)), req.height)
    else:
        size = (max(1, round(width * req.scale)), max(1, round(height * req.scale)))
    if size[0] * size[1] > patterns.MAX_PRINT_PIXELS or max(size) > MAX_SIDE:
        raise RequestError(
            f"A {size[0]}x{size[1]} px result is too large (at most {patterns.MAX_PRINT_PIXELS:,} pixels and "
            f"{MAX_SIDE} px a side); lower the scale or the size."
        )
    return size


def check_repeat_size(repeat: str | None, size: tuple[int, int]) -> None:
    """Half-drop and brick offsets are half the new size: exact only when that side is even."""
    width, height = size
    if repeat == "half_drop" and height % 2:
        raise RequestError(f"A half-drop repeat needs an even height; use {width}x{height + 1} (or {height - 1}).")
    if repeat == "brick" and width % 2:
        raise RequestError(f"A brick repeat needs an even width; use {width + 1}x{height} (or {width - 1}).")


# ---- the detail pass ----------------------------------------------------------------------------------------------
def starts(length: int, tile: int, overlap: int, wrap: bool) -> list[int]:
    """Where tiles of `tile` px start along an axis of `length` px: every `tile - overlap` px around a wrapped
    axis (the last tile crosses the edge), inside it otherwise (the last one ends at the edge)."""
    stride = max(8, tile - overlap)
    if wrap:
        return [k * stride for k in range(math.ceil(length / stride))]
    if length <= tile:
        return [0]
    return sorted({*range(0, length - tile, stride), length - tile})


def used_overlap(detail: DetailPass, tile: int) -> int:
    """The overlap in px: the setting, at most half the tile's side (a multiple of 8)."""
    return min(detail.tile_overlap, tile // 2 // 8 * 8)


def feather(size: int, overlap: int) -> np.ndarray:
    """A tile's blending weight along one axis: rising over `overlap` px at each end, never 0."""
    ramp = np.minimum(np.arange(1, size + 1), np.arange(size, 0, -1)) / (overlap + 1)
    return np.minimum(ramp, 1.0).astype(np.float32)


def detail_pass(
    studio: Studio, image: Image.Image, repeat: str | None, detail: DetailPass, job: Job | None = None,
    noise: torch.Tensor | None = None,
) -> np.ndarray:  # fmt: skip
    """img2img in overlapping tiles over `image` (laid on the print for a repeat), blended; (H, W, 3) float in
    [0, 1]. `noise` (tests, scripts): the (1, 4, ceil(H/8), ceil(W/8)) starting noise field."""
    prompts = {"prompt": detail.prompt, "negative_prompt": detail.negative_prompt}
    pipe = studio.cache.derive(SwatchPipeline, scheduler=detail.scheduler, prompts=prompts)  # with its LoRAs
    pixels = np.asarray(image.convert("RGB"))
    height, width = pixels.shape[:2]
    wrap_x, wrap_y = tiling.wraps(repeat) if repeat is not None else (False, False)
    tile = detail.tile_size or studio.cache.native_size()
    tile_h = tile if wrap_y else min(tile, height - height % 8)
    tile_w = tile if wrap_x else min(tile, width - width % 8)
    if tile_h < 8 or tile_w < 8:
        raise RequestError(f"A {width}x{height} px picture is too small for a detail pass.")
    overlap = used_overlap(detail, min(tile_h, tile_w))
    latent = (1, 4, math.ceil(height / 8), math.ceil(width / 8))
    if noise is None:
        generator = torch.Generator().manual_seed(detail.seed)
        noise = randn_tensor(latent, generator=generator, dtype=torch.float32)
    places = list(itertools.product(starts(height, tile_h, overlap, wrap_y), starts(width, tile_w, overlap, wrap_x)))
    total = np.zeros((height * width, 3), dtype=np.float32)
    weights = np.zeros(height * width, dtype=np.float32)
    blend = np.outer(feather(tile_h, overlap), feather(tile_w, overlap))
    for number, (y0, x0) in enumerate(places):
        if job is not None and job.on_step is not None:
            job.on_step(number, len(places))
        index = patterns.plane_index(height, width, np.arange(y0, y0 + tile_h), np.arange(x0, x0 + tile_w), repeat)
        tile_noise = _noise_at(noise, y0, x0, tile_h, tile_w, repeat)
        with studio.cache.gpu():  # per tile: other requests' GPU work interleaves with a long print
            embeds = prompt_kwargs(pipe, **prompts)  # sets this request's LoRA weights again: another may have run
            out = _detail_tile(pipe, embeds, detail, pixels.reshape(-1, 3)[index], tile_noise, job)
        np.add.at(total, index.ravel(), (out * blend[..., None]).reshape(-1, 3))
        np.add.at(weights, index.ravel(), blend.ravel())
    if job is not None and job.on_step is not None:
        job.on_step(len(places), len(places))
    return (total / weights[:, None]).reshape(height, width, 3)


def _noise_at(noise: torch.Tensor, y0: int, x0: int, tile_h: int, tile_w: int, repeat: str | None) -> torch.Tensor:
    """The starting noise under a tile: the noise field's latent pixels laid out by the repeat like the image's."""
    _, channels, lat_h, lat_w = noise.shape
    rows, cols = np.arange(y0 // 8, y0 // 8 + tile_h // 8), np.arange(x0 // 8, x0 // 8 + tile_w // 8)
    index = torch.from_numpy(patterns.plane_index(lat_h, lat_w, rows, cols, repeat))
    return noise.reshape(1, channels, -1)[:, :, index]


def _detail_tile(
    pipe: Any, embeds: dict[str, Any], detail: DetailPass, window: np.ndarray, noise: torch.Tensor, job: Job | None
) -> np.ndarray:
    """One tile's img2img from its own pixels and starting noise; (h, w, 3) float in [0, 1]."""

    def stop_when_cancelled(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if job is not None and job.cancel.is_set():
            raise Cancelled("Cancelled.")
        return kwargs

    clean = encode(pipe, Image.fromarray(window))
    pipe.start_noise = noise
    return pipe(
        **embeds,
        image=clean,
        strength=detail.strength,
        num_inference_steps=detail.num_inference_steps,
        guidance_scale=detail.guidance_scale,
        generator=torch.Generator().manual_seed(detail.seed),
        callback_on_step_end=stop_when_cancelled,
        output_type="np",
    ).images[0]


# ---- one call for both modes --------------------------------------------------------------------------------------
@dataclass
class Enlarged:
    image: Image.Image
    params: dict[str, Any]  # the infotext keys that record how


def enlarge(
    studio: Studio, image: Image.Image, size: tuple[int, int], repeat: str | None, upscaler_name: str,
    detail: DetailPass | None, job: Job | None = None,
) -> Enlarged:  # fmt: skip
    """`image` at `size`: the model (or Lanczos), then the detail pass when asked for."""
    check_repeat_size(repeat, size)
    folder = studio.cache.settings.upscalers_dir
    model = None if upscaler_name == upscale.LANCZOS else upscale.open_upscaler(studio.cache, folder, upscaler_name)
    stop = (lambda: job.cancel.is_set()) if job is not None else None
    big, passes = upscale.enlarge(model, image, size, repeat, lock=studio.cache.gpu, stop=stop)
    params: dict[str, Any] = {
        "Postprocess upscaler": model.name if model is not None and passes else upscale.LANCZOS,
        "Upscaler hash": model.hash if model is not None and passes else None,
        "Postprocess upscale by": round(size[0] / image.width, 4),
        "Postprocess upscale to": f"{size[0]}x{size[1]}",
    }
    if detail is not None and detail.strength > 0:
        pixels = detail_pass(studio, big, repeat, detail, job)
        big = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
        tile = detail.tile_size or studio.cache.native_size()
        params.update({"Detail strength": detail.strength, "SD upscale tile": tile,
                       "SD upscale overlap": used_overlap(detail, tile)})  # fmt: skip
    return Enlarged(big, params)


def detail_of(
    req: Any, prompts: dict[str, str], seed: int, tile_size: int = 0, tile_overlap: int = DETAIL_OVERLAP
) -> DetailPass:
    """The detail pass a request asks for: its strength, prompts, steps, CFG, sampler and `seed`."""
    return DetailPass(
        req.detail_strength,
        prompts["prompt"],
        prompts["negative_prompt"],
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        scheduler=req.scheduler,
        seed=seed,
        tile_size=tile_size,
        tile_overlap=tile_overlap,
    )


def print_enlarge(
    studio: Studio, req: Any, tile: Image.Image, size: tuple[int, int], prompts: dict[str, str], seed: int
) -> tuple[Image.Image, dict[str, Any]]:
    """Textile's print file: its tile enlarged by the request's upscaler, then its detail pass with the tile's own
    prompt, sampler, steps, CFG and seed (a TextileRequest; typed loosely: textile imports this lazily)."""
    detail = None
    if req.detail_strength > 0:
        detail = detail_of(req, prompts, seed)
    done = enlarge(studio, tile, size, req.repeat, req.upscaler, detail)
    return done.image, done.params


# ---- the mode -----------------------------------------------------------------------------------------------------
def run(studio: Studio, req: UpscaleRequest, job: Job | None = None) -> Result:
    """The Upscale mode: one picture, enlarged (and detailed), saved with what made it."""
    check_request(req, studio.limits)
    if req.image is None:
        raise RequestError("No image given: upload a picture, or send a result here with Send to Upscale.")
    source = load_source(studio, req.image)
    repeat = source.repeat if req.repeat == AUTO else req.repeat
    repeat = None if repeat in (None, NO_REPEAT) else repeat
    size = target_size(req, *source.image.size)
    prompts = {"prompt": req.prompt or source.prompt, "negative_prompt": req.negative_prompt or source.negative_prompt}
    detail = None
    seed = source.seed
    if req.detail_strength > 0:
        seed = resolve_seed(req.seed)
        detail = detail_of(req, prompts, seed, req.tile_size, req.tile_overlap)
    done = enlarge(studio, source.image, size, repeat, req.upscaler, detail, job)
    params: dict[str, Any] = {"Seed": seed, "Size": f"{size[0]}x{size[1]}", "Mode": "upscale"}
    if detail is not None:
        params = {**base_params(studio, req, seed, *size, "upscale")}
    params.update({**done.params, "Repeat": repeat or NO_REPEAT, "Source": source.name, "Source hash": source.digest})
    saved = save_image(studio, done.image, prompts, params, "upscale", job)
    return Result(images=[saved], seed=seed, params={**prompts, **params})
