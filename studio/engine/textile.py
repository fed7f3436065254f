"""Textile: seamless repeat prints (full drop, half-drop, brick, one axis), generated natively, exported for print.

The UNet and the VAE wrap around by the chosen repeat (`studio.tiling.wrapped`) for the length of each run, under
the GPU lock. With a swatch, an existing fabric photo is made seamless by img2img under the same wrapping. Each tile
is exported as a PNG carrying its DPI, at physical size x DPI when one is given, with a 3 x 3 repeat preview and an
optional N-colour colourway (palette swatches + hex list).
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image, ImageOps

from studio import image_prompt, patterns, tiling, upscale
from studio.engine.batches import generators, resolve_seed, seed_batches
from studio.engine.checks import RequestError, check_common, check_latents, check_range, check_size, clean_prompts
from studio.engine.contract import Generated, Job, Result, Studio
from studio.engine.saving import Writes, base_params, save_image, to_pil
from studio.engine.steps import PreviewFn, previewer, step_callback
from studio.images import ImageInputError, load_image
from studio.preview import preview_image
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER
from studio.settings import Limits

MAX_COLORS = 64
DEFAULT_NEGATIVE = "text, watermark, signature, frame, border, vignette, photo of a person, blurry, low quality"


@dataclass(frozen=True)
class TextileRequest(image_prompt.ImagePromptFields):
    prompt: str
    negative_prompt: str = DEFAULT_NEGATIVE
    repeat: str = "full"  # one of studio.tiling.REPEATS
    width: int | None = None  # tile size in px; None: the model's native size, rounded up to the repeat's granule
    height: int | None = None
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    image: Any = None  # a swatch (fabric photo) to make seamless; None: generate from the prompt
    strength: float = 0.6  # how far the swatch may change
    dpi: int = 300
    physical_width: float = 0.0  # print size of one tile in `unit`; 0: follows the other side, or the tile's px
    physical_height: float = 0.0
    unit: str = "cm"
    colors: int = 0  # spot colours of the colourway; 0: none
    # How the print file is enlarged: a model file of the upscalers folder by name ("" the default file), or
    # "Lanczos" (resampling alone); then a detail pass (img2img in tiles) at this strength, 0: none.
    upscaler: str = upscale.LANCZOS
    detail_strength: float = 0.0


@dataclass
class PrintExport:
    tile: Generated
    print_file: Path  # the tile at physical size x DPI (the tile's own file when no resizing was needed)
    preview: Path  # 3 x 3 repeat preview
    colourway: Path | None = None
    palette_image: Path | None = None
    palette_text: Path | None = None
    palette: list[str] = field(default_factory=list)  # hex, most used first


@dataclass
class TextileResult(Result):
    exports: list[PrintExport] = field(default_factory=list)


class SwatchPipeline(StableDiffusionImg2ImgPipeline):
    """img2img from already-encoded latents and a given starting noise, so both can be rolled with the tile."""

    start_noise: torch.Tensor | None = None

    def prepare_latents(
        self,
        image: Any,
        timestep: Any,
        batch_size: int,
        num_images_per_prompt: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: Any = None,
    ) -> torch.Tensor:
        if self.start_noise is None:
            return super().prepare_latents(image, timestep, batch_size, num_images_per_prompt, dtype, device, generator)
        clean = image.to(device=device, dtype=dtype)
        return self.scheduler.add_noise(clean, self.start_noise.to(device=device, dtype=dtype), timestep)


# ---- checks -------------------------------------------------------------------------------------------------------
def check_request(req: TextileRequest, limits: Limits) -> None:
    check_common(req, limits)
    if req.repeat not in tiling.REPEATS:
        raise RequestError(f"Unknown repeat {req.repeat!r}. Choose one of: {', '.join(tiling.REPEATS)}.")
    check_range("dpi", req.dpi, 36, 2400)
    check_range("colors", req.colors, 0, MAX_COLORS)
    if req.colors == 1:
        raise RequestError("A colourway needs at least 2 colours (0 turns it off).")
    if req.unit not in patterns.UNITS:
        raise RequestError(f"Unit must be 'cm' or 'in'; got {req.unit!r}.")
    check_range("physical_width", req.physical_width, 0, 1000)
    check_range("physical_height", req.physical_height, 0, 1000)
    if len(req.upscaler) > 200:
        raise RequestError("upscaler must be the name of a file in the upscalers folder, or Lanczos.")
    check_range("detail_strength", req.detail_strength, 0, 1)
    if req.detail_strength and int(req.num_inference_steps * req.detail_strength) < 1:
        raise RequestError(
            f"{req.num_inference_steps} steps at detail strength {req.detail_strength:g} run no step of the "
            "print's detail pass; raise the steps or the detail strength (0 turns it off)."
        )
    if req.image is not None:
        check_range("strength", req.strength, 0.01, 1)
        if int(req.num_inference_steps * req.strength) < 1:
            raise RequestError(
                f"{req.num_inference_steps} steps at strength {req.strength:g} run no step at all; "
                "raise the steps or the strength."
            )


def tile_size(studio: Studio, req: TextileRequest) -> tuple[int, int]:
    """The tile in px; each side must be a multiple of the repeat's granule so the wrap is exact."""
    base = studio.cache.base()
    step_w, step_h = tiling.granule(len(base.unet.config.block_out_channels) - 1, base.vae_scale_factor, req.repeat)
    native = studio.cache.native_size()
    width = req.width or -(-native // step_w) * step_w
    height = req.height or -(-native // step_h) * step_h
    check_size(width, height, studio.limits)
    if width % step_w or height % step_h:
        fix = f"{-(-width // step_w) * step_w}x{-(-height // step_h) * step_h}"
        raise RequestError(
            f"A {tiling.REPEAT_LABELS[req.repeat]} repeat on this model needs a tile width that is a "
            f"multiple of {step_w} px and a height that is a multiple of {step_h} px "
            f"(got {width}x{height}); try {fix}."
        )
    return width, height


def print_size(req: TextileRequest, width: int, height: int) -> tuple[int, int]:
    """Pixels of the print file: physical size x DPI; a missing side follows the tile's aspect ratio."""
    if req.physical_width <= 0 and req.physical_height <= 0:
        return width, height
    out_w = patterns.print_pixels(req.physical_width, req.unit, req.dpi) if req.physical_width > 0 else None
    out_h = patterns.print_pixels(req.physical_height, req.unit, req.dpi) if req.physical_height > 0 else None
    out_w = out_w or max(1, round(out_h * width / height))  # type: ignore[operator]
    out_h = out_h or max(1, round(out_w * height / width))
    # half-drop and brick offsets are half the print's height / width: exact only when that side is even
    out_h += out_h % 2 if req.repeat == "half_drop" else 0
    out_w += out_w % 2 if req.repeat == "brick" else 0
    if abs(out_w * height - out_h * width) > 0.01 * width * out_h:
        raise RequestError(
            f"The physical size ({out_w}x{out_h} px at {req.dpi} DPI) does not have the tile's "
            f"{width}:{height} shape; set one side to 0 so it follows the other."
        )
    if out_w * out_h > patterns.MAX_PRINT_PIXELS:
        raise RequestError(
            f"A {out_w}x{out_h} px print file is too large; lower the DPI or the physical size "
            f"(at most {patterns.MAX_PRINT_PIXELS:,} pixels)."
        )
    return out_w, out_h


def load_swatch(studio: Studio, value: Any) -> Image.Image:
    """The swatch photo, upright RGB; it is centre-cropped to the tile's shape later."""
    try:
        return load_image(value, studio.limits.max_pixels * 4, what="swatch")
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None


# ---- generation ---------------------------------------------------------------------------------------------------
def textile(
    studio: Studio, req: TextileRequest, job: Job | None = None, latents: torch.Tensor | None = None
) -> TextileResult:
    """Generate seamless tiles for `req.repeat` and export them for print.

    `latents` (tests, scripts) replaces the seeded starting noise of every batch; with a swatch it is the noise
    added to the swatch's latents.
    """
    check_request(req, studio.limits)
    prompts = clean_prompts(req, studio.limits)
    swatch = load_swatch(studio, req.image) if req.image is not None else None
    model = studio.cache.current
    width, height = tile_size(studio, req)
    out_size = print_size(req, width, height)
    check_latents(studio, latents, req.batch_size, width, height)
    if out_size != (width, height) and req.upscaler != upscale.LANCZOS:  # a missing file is told before any work
        req = replace(req, upscaler=upscale.resolve(studio.cache.settings.upscalers_dir, req.upscaler).name)
    pipe_cls = StableDiffusionPipeline if swatch is None else SwatchPipeline
    ip = image_prompt.prepare(studio, req, ref=model)
    pipe = studio.cache.derive(pipe_cls, scheduler=req.scheduler, ref=model, prompts=prompts, **ip.modules)
    fitted = None if swatch is None else ImageOps.fit(swatch, (width, height), Image.Resampling.LANCZOS)
    seed = resolve_seed(req.seed)
    tile = Tile(studio, req, prompts, (width, height), out_size, model)
    tiles, exports = [], []
    with Writes(job, defer=True) as writes, studio.cache.gpu():
        for seeds in seed_batches(seed, req.batch_size, req.batch_count):
            writes.flush()  # the previous batch's writes run while this one denoises
            images = denoise(pipe, req, prompts, seeds, (width, height), fitted, latents, job, previewer(studio), ip)
            for pixels, image_seed in zip(images, seeds, strict=True):
                saved = writes.submit(partial(tile.save, pixels, image_seed))
                tiles.append(saved)
                exports.append(writes.submit(partial(tile.export, saved), tell=False))
    params = {**prompts, **tile.params(seed)}
    return TextileResult(
        images=[t.result() for t in tiles], seed=seed, params=params, exports=[e.result() for e in exports]
    )


@dataclass(frozen=True)
class Tile:
    """What every tile of a run is saved and exported with, on the writer threads."""

    studio: Studio
    req: TextileRequest
    prompts: dict[str, str]
    size: tuple[int, int]
    out_size: tuple[int, int]
    model: str

    def params(self, seed: int) -> dict[str, Any]:
        return tile_params(self.studio, self.req, seed, self.size, self.out_size, self.model)

    def save(self, pixels: np.ndarray, seed: int) -> Generated:
        dpi = tile_dpi(self.req, self.size[0], self.out_size)
        name = download_names(self.req, self.prompts, seed, self.out_size)["tile"]
        return save_image(
            self.studio, to_pil(pixels), self.prompts, self.params(seed), "textile", None, dpi=dpi, name=name
        )

    def export(self, tile: Future[Generated]) -> PrintExport:
        """Once the tile is written (and told): its print file, repeat preview and colourway."""
        saved = tile.result()
        return export(self.studio, self.req, self.prompts, saved, self.params(saved.seed), self.out_size)


def denoise(
    pipe: Any,
    req: TextileRequest,
    prompts: dict[str, str],
    seeds: list[int],
    size: tuple[int, int],
    swatch: Image.Image | None,
    latents: torch.Tensor | None,
    job: Job | None,
    preview: PreviewFn = preview_image,
    ip: image_prompt.ImagePrompt | None = None,
) -> np.ndarray:
    """One batch with the UNet and the VAE wrapped by the repeat (restored when this returns or raises); the
    tiles' pixels as the pipeline's `output_type="np"` gives them."""
    steps = req.num_inference_steps if swatch is None else int(req.num_inference_steps * req.strength)
    common = dict(
        **prompt_kwargs(pipe, **prompts),
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        num_images_per_prompt=len(seeds),
        generator=generators(seeds),
        callback_on_step_end=step_callback(job, steps, preview),
        output_type="np",
        **(ip.call_kwargs(pipe, req.guidance_scale) if ip is not None else {}),
    )
    with tiling.wrapped([pipe.unet, pipe.vae], req.repeat):
        if swatch is None:
            return pipe(**common, width=size[0], height=size[1], latents=latents).images
        clean = encode(pipe, swatch).repeat(len(seeds), 1, 1, 1)
        pipe.start_noise = (
            latents
            if latents is not None
            else randn_tensor(clean.shape, generator=generators(seeds), device=clean.device, dtype=clean.dtype)
        )
        return pipe(**common, image=clean, strength=req.strength).images


@torch.no_grad()
def encode(pipe: Any, image: Image.Image) -> torch.Tensor:
    """The swatch's latents (the distribution's mode: no sampling noise that would not roll with the tile)."""
    pixels = pipe.image_processor.preprocess(image).to(device=pipe.vae.device, dtype=pipe.vae.dtype)
    return pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor


# ---- metadata and export ------------------------------------------------------------------------------------------
def tile_params(
    studio: Studio,
    req: TextileRequest,
    seed: int,
    size: tuple[int, int],
    out_size: tuple[int, int],
    model: str | None = None,
) -> dict[str, Any]:
    params = {**base_params(studio, req, seed, size[0], size[1], "textile", model), **image_prompt.request_params(req)}
    if req.image is not None:
        params["Denoising strength"] = req.strength
    out_w, out_h = out_size
    physical = [patterns.physical_length(px, req.unit, req.dpi) for px in out_size]
    params.update(
        {
            "Repeat": req.repeat,
            "DPI": req.dpi,
            "Print size": f"{physical[0]:.2f}x{physical[1]:.2f} {req.unit}",
            "Print pixels": f"{out_w}x{out_h}",
        }
    )
    # how the print file is enlarged (the print file itself records the rest: the upscaler's hash, scale and size)
    params.update({"Postprocess upscaler": req.upscaler, "Detail strength": req.detail_strength})
    return params


def download_names(
    req: TextileRequest, prompts: dict[str, str], seed: int, out_size: tuple[int, int]
) -> dict[str, str]:
    """What each file of a tile is called when downloaded, e.g. `florals-halfdrop-30x30cm-300dpi.png` for the
    print; the seed tells apart the tiles of a run that makes several."""
    physical = tuple(patterns.physical_length(px, req.unit, req.dpi) for px in out_size)
    base = patterns.print_name(prompts["prompt"], req.repeat, physical, req.unit, req.dpi)  # type: ignore[arg-type]
    several = f"-seed{seed}" if req.batch_size * req.batch_count > 1 else ""
    short = f"{patterns.slug(prompts['prompt'])}-{patterns.REPEAT_SLUGS[req.repeat]}"
    return {
        "print": f"{base}{several}",
        "tile": f"{short}-tile-seed{seed}",
        "preview": f"{short}-repeat-preview-seed{seed}",
        "colourway": f"{base}-{req.colors}colours{several}",
        "palette": f"{short}-palette-{req.colors}colours-seed{seed}",
    }


def tile_dpi(req: TextileRequest, width: int, out_size: tuple[int, int]) -> int:
    """The tile file's own DPI: printed at it, the tile has the same physical size as the print file."""
    return max(1, round(req.dpi * width / out_size[0]))


def export(
    studio: Studio,
    req: TextileRequest,
    prompts: dict[str, str],
    tile: Generated,
    params: dict[str, Any],
    out_size: tuple[int, int],
) -> PrintExport:
    """Print file (physical size x DPI: enlarged by the request's upscaler and detail pass), 3 x 3 repeat preview,
    optional colourway with its palette; each under a name that says what it is."""
    from studio.engine.upscale import print_enlarge  # the Upscale engine builds on this module's swatch img2img

    names = download_names(req, prompts, tile.seed, out_size)
    printed, print_file = tile.image, tile.path
    if out_size != tile.image.size:
        printed, record = print_enlarge(studio, req, tile.image, out_size, prompts, tile.seed)
        print_params = {**params, **record, "Export": "print"}
        print_file = save_image(
            studio, printed, prompts, print_params, "textile-print", None, dpi=req.dpi, name=names["print"]
        ).path
    preview = patterns.preview(tile.image, req.repeat)
    done = PrintExport(
        tile=tile,
        print_file=print_file,
        preview=save_image(
            studio,
            preview,
            prompts,
            {**params, "Export": "repeat preview"},
            "textile-preview",
            None,
            name=names["preview"],
        ).path,  # fmt: skip
    )
    if req.colors:
        way = patterns.colourway(printed, req.colors)
        extra = {**params, "Export": "colourway", "Colours": len(way.palette), "Palette": " ".join(way.hex)}
        done.colourway = save_image(
            studio, way.image, prompts, extra, "textile-colourway", None, dpi=req.dpi, name=names["colourway"]
        ).path
        done.palette_image = save_image(
            studio, patterns.swatches(way.palette), prompts, {**extra, "Export": "palette"}, "textile-palette", None,
            name=names["palette"],
        ).path  # fmt: skip
        done.palette_text = studio.outputs.write_text(done.palette_image.with_suffix(".txt"), palette_listing(way))
        done.palette = way.hex
    return done


def palette_listing(way: patterns.Colourway) -> str:
    return "".join(f"{code}  rgb({r}, {g}, {b})\n" for code, (r, g, b) in zip(way.hex, way.palette, strict=True))
