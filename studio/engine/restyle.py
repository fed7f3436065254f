"""Restyle: keep a look's silhouette (HED soft edges, or the designer's own sketch) and change everything else.

An SD1.5 ControlNet reads the edge map. The ControlNet and the HED annotator live in the shared cache's slots; the
pipeline is derived from the resident base with `from_pipe`, so no weight is loaded twice. Outside the guidance
window (start/end) and at weight 0 the ControlNet is not run at all (sd-webui-controlnet does the same): the
UNet then takes exactly the txt2img path.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import MultiControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from studio import edges, image_prompt, tiling
from studio.engine.batches import resolve_seed, run_batches
from studio.engine.checks import RequestError, check_common, check_latents, check_range, check_size, clean_prompts
from studio.engine.contract import Job, Result, Studio
from studio.engine.saving import Writes, base_params
from studio.images import ImageInputError, load_image
from studio.schedulers import DEFAULT_SAMPLER

log = logging.getLogger(__name__)

INPUT_PIXELS_PER_OUTPUT_PIXEL = 16  # a phone photo may be far larger than the output; it is cropped and resized


@dataclass(frozen=True)
class RestyleRequest(image_prompt.ImagePromptFields):
    image: Any  # a photo, or an edge map / line sketch (preprocessor "none"): PIL image, array or uploaded file
    prompt: str
    negative_prompt: str = ""
    preprocessor: str = "hed"  # "hed", "hed_safe", or "none" (the image already is an edge map)
    invert: bool = False  # "none" only: dark lines on light paper → light-on-dark
    preprocessor_resolution: int | None = None  # None: pixel perfect (the output's short side)
    controlnet_conditioning_scale: float = 1.0
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    guess_mode: bool = False
    width: int | None = None  # None: the input's aspect ratio at the model's native scale
    height: int | None = None
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1
    batch_size: int = 1
    batch_count: int = 1
    repeat: str | None = None  # a Textile repeat ("full", "half_drop", "brick", "x", "y"), or None


class WindowedControlNet(MultiControlNetModel):
    """The pipeline's ControlNet, run only where it contributes: a step whose effective weight is 0 (outside the
    start/end window, or weight 0) returns no residuals instead of zeros computed at full cost."""

    def forward(
        self,
        sample: torch.Tensor,
        timestep: Any,
        encoder_hidden_states: torch.Tensor,
        controlnet_cond: list[torch.Tensor],
        conditioning_scale: list[float],
        *args: Any,
        guess_mode: bool = False,
        **kwargs: Any,
    ) -> Any:
        if any(scale != 0 for scale in conditioning_scale):
            return super().forward(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale,
                *args,
                guess_mode=guess_mode,
                **kwargs,
            )
        if not guess_mode:
            return None, None  # the UNet takes its plain path, exactly as in txt2img
        # In guess mode the pipeline pads the residuals for the unconditional half, so it needs real zeros.
        return zero_residuals(self.nets[0], sample)


# Weak: a wrapper lives as long as the cache's derived pipeline that holds it (dropped with its ControlNet slot).
_WINDOWED: weakref.WeakValueDictionary[int, WindowedControlNet] = weakref.WeakValueDictionary()


def windowed(controlnet: torch.nn.Module) -> WindowedControlNet:
    """The one `WindowedControlNet` around a ControlNet, so the cache's derived pipeline for it is built once."""
    wrapper = _WINDOWED.get(id(controlnet))
    if wrapper is None or wrapper.nets[0] is not controlnet:
        wrapper = _WINDOWED[id(controlnet)] = WindowedControlNet([controlnet])
    return wrapper


def zero_residuals(controlnet: Any, sample: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Zero tensors shaped like the ControlNet's down-block and mid-block residuals for `sample`."""
    channels = controlnet.config.block_out_channels
    height, width = sample.shape[-2:]
    shapes = [(channels[0], height, width)]
    for index, channel in enumerate(channels):
        shapes += [(channel, height, width)] * controlnet.config.layers_per_block
        if index < len(channels) - 1:  # stride-2 conv with padding 1
            height, width = (height + 1) // 2, (width + 1) // 2
            shapes.append((channel, height, width))
    zeros = [sample.new_zeros((sample.shape[0], *shape)) for shape in shapes]
    return zeros, sample.new_zeros((sample.shape[0], channels[-1], height, width))


# ---- checks and sizes ---------------------------------------------------------------------------------------------
def check_preprocessing(preprocessor: str, invert: bool, resolution: int | None, repeat: str | None) -> None:
    if preprocessor not in edges.PREPROCESSORS:
        raise RequestError(f"Unknown preprocessor {preprocessor!r}. Choose one of: {', '.join(edges.PREPROCESSORS)}.")
    if invert and preprocessor != "none":
        raise RequestError("Invert applies to your own sketch: choose preprocessor 'none', or untick Invert.")
    if resolution is not None:
        check_range("preprocessor_resolution", resolution, 64, 2048)
    if repeat is not None and repeat not in tiling.REPEATS:
        raise RequestError(f"Unknown repeat {repeat!r}. Choose one of: {', '.join(tiling.REPEATS)}, or none.")


def check_control(req: RestyleRequest) -> None:
    check_preprocessing(req.preprocessor, req.invert, req.preprocessor_resolution, req.repeat)
    check_range("controlnet_conditioning_scale", req.controlnet_conditioning_scale, 0, 2)
    check_range("control_guidance_start", req.control_guidance_start, 0, 1)
    check_range("control_guidance_end", req.control_guidance_end, 0, 1)
    if req.control_guidance_start >= req.control_guidance_end:
        raise RequestError(
            f"Guidance start ({req.control_guidance_start:g}) must be before guidance end "
            f"({req.control_guidance_end:g}); e.g. start 0, end 1 guides every step."
        )


def load_input(studio: Studio, value: Any, preprocessor: str, invert: bool) -> Image.Image:
    try:
        return load_image(
            value,
            studio.limits.max_pixels * INPUT_PIXELS_PER_OUTPUT_PIXEL,
            what="input image",
            background=edges.transparent_fill(preprocessor, invert),
        )
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None


def output_size(
    studio: Studio, image_size: tuple[int, int], width: int | None, height: int | None, repeat: str | None = None
) -> tuple[int, int]:
    """Given sizes win; a missing one follows the input's aspect ratio at the model's native scale. In repeat mode
    the auto size is a multiple of the repeat's granule, so the tile wraps exactly."""
    if width and height:
        return width, height
    if width:  # keep the aspect ratio from the one side given
        return width, max(8, round(width * image_size[1] / image_size[0] / 8) * 8)
    if height:
        return max(8, round(height * image_size[0] / image_size[1] / 8) * 8), height
    multiple = (8, 8)
    if repeat is not None:
        base = studio.cache.base()
        multiple = tiling.granule(len(base.unet.config.block_out_channels) - 1, base.vae_scale_factor, repeat)
    return edges.auto_size(image_size, studio.cache.native_size(), multiple)


def detect_edges(
    studio: Studio,
    image: Any,
    preprocessor: str = "hed",
    resolution: int | None = None,
    invert: bool = False,
    width: int | None = None,
    height: int | None = None,
    repeat: str | None = None,
) -> Image.Image:
    """The edge map a Restyle request with these settings will use, at its output size (for the preview)."""
    check_preprocessing(preprocessor, invert, resolution, repeat)
    picture = load_input(studio, image, preprocessor, invert)
    size = output_size(studio, picture.size, width, height, repeat)
    check_size(*size, studio.limits)
    return _edge_map(studio, picture, preprocessor, size, resolution, invert)


def _edge_map(
    studio: Studio, picture: Image.Image, preprocessor: str, size: tuple[int, int], resolution: int | None, invert: bool
) -> Image.Image:
    """HED runs a network: under the GPU lock. The designer's own sketch is PIL work: without it."""
    annotator = studio.cache.slot("annotator") if preprocessor != "none" else None
    resolution = resolution or edges.pixel_perfect(*size)
    with studio.cache.gpu() if annotator is not None else contextlib.nullcontext():
        return edges.edge_map(annotator, picture, preprocessor, size, resolution, invert)


# ---- generation -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def repeating(pipe: Any, controlnet: torch.nn.Module, repeat: str | None) -> Iterator[None]:
    """Textile's seamless repeat on the UNet, the VAE and the ControlNet for the duration of one run."""
    if repeat is None:
        yield
        return
    with tiling.wrapped([pipe.unet, pipe.vae, controlnet], repeat):
        yield


def controlnet_params(studio: Studio, req: RestyleRequest, resolution: int) -> dict[str, Any]:
    """sd-webui-controlnet's infotext entry, so A1111 and Civitai read the unit back."""
    module = "invert" if req.preprocessor == "none" and req.invert else edges.A1111_MODULES[req.preprocessor]
    unit = {
        "Module": module,
        "Model": Path(studio.cache.companion_source("controlnet")).name,
        "Weight": f"{req.controlnet_conditioning_scale:g}",
        "Resize Mode": "Crop and Resize",
        "Processor Res": resolution if req.preprocessor != "none" else None,
        "Guidance Start": f"{req.control_guidance_start:g}",
        "Guidance End": f"{req.control_guidance_end:g}",
        "Pixel Perfect": req.preprocessor_resolution is None,
        "Guess Mode": req.guess_mode,
    }
    text = ", ".join(f"{key}: {value}" for key, value in unit.items() if value is not None)
    return {"ControlNet 0": text, "Repeat": req.repeat}


def control_kwargs(req: RestyleRequest, control: Image.Image) -> dict[str, Any]:
    """The ControlNet pipeline's own arguments (one ControlNet, given as a list to `WindowedControlNet`)."""
    return {
        "image": [control],
        "controlnet_conditioning_scale": float(req.controlnet_conditioning_scale),
        "control_guidance_start": float(req.control_guidance_start),
        "control_guidance_end": float(req.control_guidance_end),
        "guess_mode": req.guess_mode,
    }


def restyle(studio: Studio, req: RestyleRequest, job: Job | None = None, latents: torch.Tensor | None = None) -> Result:
    """Generate from the prompt while the ControlNet holds the input's lines. `latents` (tests, scripts) replaces
    the seeded initial noise of every batch."""
    check_common(req, studio.limits)
    check_control(req)
    prompts = clean_prompts(req, studio.limits)
    picture = load_input(studio, req.image, req.preprocessor, req.invert)
    model = studio.cache.current
    width, height = output_size(studio, picture.size, req.width, req.height, req.repeat)
    check_size(width, height, studio.limits)
    check_latents(studio, latents, req.batch_size, width, height)
    resolution = req.preprocessor_resolution or edges.pixel_perfect(width, height)
    control = _edge_map(studio, picture, req.preprocessor, (width, height), resolution, req.invert)
    controlnet = studio.cache.slot("controlnet")
    ip = image_prompt.prepare(studio, req, ref=model)
    pipe = studio.cache.derive(
        StableDiffusionControlNetPipeline,
        scheduler=req.scheduler,
        ref=model,
        prompts=prompts,
        controlnet=windowed(controlnet),
        **ip.modules,
    )
    extra = {**controlnet_params(studio, req, resolution), **image_prompt.request_params(req, first_unit=1)}
    seed = resolve_seed(req.seed)
    with Writes(job, defer=True) as writes, studio.cache.gpu(), repeating(pipe, controlnet, req.repeat):
        images = run_batches(
            studio,
            pipe,
            req,
            writes=writes,
            prompts=prompts,
            job=job,
            size=(width, height),
            seed=seed,
            params=lambda s: {**base_params(studio, req, s, width, height, "restyle", model), **extra},
            prefix="restyle",
            **control_kwargs(req, control),
            **ip.call_kwargs(pipe, req.guidance_scale),
            latents=latents,
        )
    params = {**prompts, **base_params(studio, req, seed, width, height, "restyle", model), **extra}
    return Result(images=[image.result() for image in images], seed=seed, params=params)
