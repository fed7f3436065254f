"""Restyle: keep a look's silhouette (soft edges, line art, canny edges, a pose, or the designer's own sketch) and
change everything else.

SD1.5 ControlNets read the control maps: up to three units (Restyle's own fields are unit 1, `controlnet_units`
adds more, studio.control_units), through diffusers' `MultiControlNetModel`. Every ControlNet and annotator lives
in the shared cache's slots; the pipeline is derived from the resident base with `from_pipe`, so no weight is loaded
twice. Outside its guidance window (start/end) and at weight 0 a unit's ControlNet is not run at all
(sd-webui-controlnet does the same): with no unit active the UNet takes exactly the txt2img path.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import MultiControlNetModel, StableDiffusionControlNetPipeline
from PIL import Image

from studio import control_units, edges, image_prompt, tiling
from studio.control_units import ControlUnit
from studio.engine.batches import resolve_seed, run_batches
from studio.engine.checks import RequestError, check_common, check_latents, check_size, clean_prompts
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
    preprocessor: str = "hed"  # edges.PREPROCESSORS, or "none" (the image already is a control map)
    model: str = "auto"  # the ControlNet (control_units.MODELS); "auto": the preprocessor's own
    invert: bool = False  # "none" only: dark lines on light paper → light-on-dark
    preprocessor_resolution: int | None = None  # None: pixel perfect (the output's short side)
    controlnet_conditioning_scale: float = 1.0
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    guess_mode: bool = False
    low_threshold: int = edges.CANNY_THRESHOLDS[0]  # canny only
    high_threshold: int = edges.CANNY_THRESHOLDS[1]
    # Up to two more units: dicts with unit 1's keys (control_units.UNIT_KEYS), each matched by order to a picture
    # of `control_image`.
    controlnet_units: list[Mapping[str, Any]] = field(default_factory=list)
    control_image: list[Any] = field(default_factory=list)
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
        active = [index for index, scale in enumerate(conditioning_scale) if scale != 0]
        if len(active) == len(self.nets):
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
        if active:  # the same sum MultiControlNetModel makes, over the units that contribute
            return MultiControlNetModel.forward(
                _Active([self.nets[i] for i in active]),
                sample,
                timestep,
                encoder_hidden_states,
                [controlnet_cond[i] for i in active],
                [conditioning_scale[i] for i in active],
                *args,
                guess_mode=guess_mode,
                **kwargs,
            )
        if not guess_mode:
            return None, None  # the UNet takes its plain path, exactly as in txt2img
        # In guess mode the pipeline pads the residuals for the unconditional half, so it needs real zeros.
        return zero_residuals(self.nets[0], sample)


@dataclass
class _Active:
    """The contributing nets of a step, for MultiControlNetModel's own summing loop (it reads only `nets`)."""

    nets: list[torch.nn.Module]


# Weak: a wrapper lives as long as the cache's derived pipeline that holds it (dropped with its ControlNet slot).
_WINDOWED: weakref.WeakValueDictionary[tuple[int, ...], WindowedControlNet] = weakref.WeakValueDictionary()


def windowed(*controlnets: torch.nn.Module) -> WindowedControlNet:
    """The one `WindowedControlNet` around these ControlNets (in this order), so the cache's derived pipeline for
    them is built once."""
    key = tuple(id(net) for net in controlnets)
    wrapper = _WINDOWED.get(key)
    if wrapper is None or any(a is not b for a, b in zip(wrapper.nets, controlnets, strict=True)):
        wrapper = _WINDOWED[key] = WindowedControlNet(list(controlnets))
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
    control_units.check_unit(ControlUnit(None, preprocessor, invert=invert, preprocessor_resolution=resolution))
    if repeat is not None and repeat not in tiling.REPEATS:
        raise RequestError(f"Unknown repeat {repeat!r}. Choose one of: {', '.join(tiling.REPEATS)}, or none.")


def first_unit(req: RestyleRequest) -> ControlUnit:
    """Unit 1: Restyle's own fields."""
    return ControlUnit(**{key: getattr(req, key) for key in ("image", *control_units.UNIT_KEYS)})


def request_units(req: RestyleRequest, with_images: bool = True) -> list[ControlUnit]:
    """Every unit of a request, checked: unit 1, then `controlnet_units` matched to `control_image`."""
    first = first_unit(req)
    control_units.check_unit(first)
    images = list(req.control_image or ()) if with_images else None
    return [first, *control_units.extra_units(list(req.controlnet_units or ()), images)]


def check_control(req: RestyleRequest) -> None:
    request_units(req, with_images=False)
    check_preprocessing(req.preprocessor, req.invert, req.preprocessor_resolution, req.repeat)


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
    low_threshold: int = edges.CANNY_THRESHOLDS[0],
    high_threshold: int = edges.CANNY_THRESHOLDS[1],
) -> Image.Image:
    """The control map a Restyle request with these settings will use, at its output size (for the preview)."""
    check_preprocessing(preprocessor, invert, resolution, repeat)
    control_units.check_unit(
        ControlUnit(None, preprocessor, low_threshold=low_threshold, high_threshold=high_threshold)
    )
    picture = load_input(studio, image, preprocessor, invert)
    size = output_size(studio, picture.size, width, height, repeat)
    check_size(*size, studio.limits)
    return _edge_map(studio, picture, preprocessor, size, resolution, invert, (low_threshold, high_threshold))


def _edge_map(
    studio: Studio,
    picture: Image.Image,
    preprocessor: str,
    size: tuple[int, int],
    resolution: int | None,
    invert: bool,
    thresholds: tuple[int, int] = edges.CANNY_THRESHOLDS,
) -> Image.Image:
    """An annotator network (HED, line art, pose) runs under the GPU lock; canny and the designer's own sketch are
    CPU work: without it."""
    slot = control_units.ANNOTATOR_SLOTS.get(preprocessor)
    annotator = studio.cache.slot(slot) if slot is not None else None
    resolution = resolution or edges.pixel_perfect(*size)
    with studio.cache.gpu() if annotator is not None else contextlib.nullcontext():
        return edges.edge_map(annotator, picture, preprocessor, size, resolution, invert, thresholds)


# ---- generation -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def repeating(pipe: Any, controlnets: Sequence[torch.nn.Module], repeat: str | None) -> Iterator[None]:
    """Textile's seamless repeat on the UNet, the VAE and every unit's ControlNet for the duration of one run."""
    if repeat is None:
        yield
        return
    with tiling.wrapped([pipe.unet, pipe.vae, *controlnets], repeat):
        yield


def controlnet_params(
    studio: Studio, req: RestyleRequest, units: Sequence[ControlUnit], resolutions: Sequence[int]
) -> dict[str, Any]:
    """sd-webui-controlnet's infotext entries (`ControlNet 0`, `ControlNet 1`, ...), so A1111 and Civitai read
    every unit back."""
    params: dict[str, Any] = {}
    for index, (unit, resolution) in enumerate(zip(units, resolutions, strict=True)):
        model = Path(studio.cache.companion_source(control_units.CONTROLNET_SLOTS[unit.kind])).name
        key, text = control_units.unit_infotext(
            index, control_units.unit_fields(unit, model, resolution, req.guess_mode)
        )
        params[key] = text
    return {**params, "Repeat": req.repeat}


def control_kwargs(
    req: RestyleRequest, units: Sequence[ControlUnit], controls: Sequence[Image.Image]
) -> dict[str, Any]:
    """The ControlNet pipeline's own arguments: one entry per unit (a list, for `WindowedControlNet`)."""
    return {
        "image": list(controls),
        "controlnet_conditioning_scale": [float(unit.controlnet_conditioning_scale) for unit in units],
        "control_guidance_start": [float(unit.control_guidance_start) for unit in units],
        "control_guidance_end": [float(unit.control_guidance_end) for unit in units],
        "guess_mode": req.guess_mode,
    }


def restyle(studio: Studio, req: RestyleRequest, job: Job | None = None, latents: torch.Tensor | None = None) -> Result:
    """Generate from the prompt while the ControlNets hold the inputs' lines. `latents` (tests, scripts) replaces
    the seeded initial noise of every batch."""
    check_common(req, studio.limits)
    check_control(req)
    units = request_units(req)
    prompts = clean_prompts(req, studio.limits)
    pictures = [load_input(studio, unit.image, unit.preprocessor, unit.invert) for unit in units]
    model = studio.cache.current
    width, height = output_size(studio, pictures[0].size, req.width, req.height, req.repeat)
    check_size(width, height, studio.limits)
    check_latents(studio, latents, req.batch_size, width, height)
    resolutions = [unit.preprocessor_resolution or edges.pixel_perfect(width, height) for unit in units]
    controls = [
        _edge_map(studio, picture, unit.preprocessor, (width, height), resolution, unit.invert, unit.thresholds)
        for unit, picture, resolution in zip(units, pictures, resolutions, strict=True)
    ]
    controlnets = [studio.cache.slot(control_units.CONTROLNET_SLOTS[unit.kind]) for unit in units]
    ip = image_prompt.prepare(studio, req, ref=model)
    pipe = studio.cache.derive(
        StableDiffusionControlNetPipeline,
        scheduler=req.scheduler,
        ref=model,
        prompts=prompts,
        controlnet=windowed(*controlnets),
        **ip.modules,
    )
    extra = {
        **controlnet_params(studio, req, units, resolutions),
        **image_prompt.request_params(req, first_unit=len(units)),  # numbered after the ControlNet units
    }
    seed = resolve_seed(req.seed)
    with Writes(job, defer=True) as writes, studio.cache.gpu(), repeating(pipe, controlnets, req.repeat):
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
            **control_kwargs(req, units, controls),
            **ip.call_kwargs(pipe, req.guidance_scale),
            latents=latents,
        )
    params = {**prompts, **base_params(studio, req, seed, width, height, "restyle", model), **extra}
    return Result(images=[image.result() for image in images], seed=seed, params=params)
