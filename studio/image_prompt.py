"""Image prompts ("look like this picture"): the IP-Adapter fields every mode's request shares, their checks, what
a run does with them, their infotext (A1111's ControlNet unit style) and how /restore reads that back.

A request carries `ip_adapter_image` (pictures), `ip_adapter_scale` (one weight per picture, or one for all) and
`ip_adapter_model`. A request without pictures, or whose every weight is 0, runs the plain UNet exactly as before
and pays nothing. Otherwise its pipeline is derived over the cache's IP-Adapter copy of the UNet
(`ModelCache.image_prompt_unet`) and, under the GPU lock, the pictures are encoded and the weights set
(`set_ip_adapter_scale`) just before the pipeline call (`ImagePrompt.call_kwargs`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from studio import ip_adapter
from studio.engine.checks import RequestError
from studio.engine.contract import Studio
from studio.fields import Check, Unsupported
from studio.images import ImageInputError, load_image
from studio.metadata import parse_infotext

MODELS = tuple(ip_adapter.MODELS)  # "ip-adapter_sd15" (default), "ip-adapter-plus_sd15" (closer to the picture)
DEFAULT_MODEL = MODELS[0]
DEFAULT_SCALE = 0.6  # diffusers' and the IP-Adapter authors' usual weight for picture + text
MAX_SCALE = 2.0
MAX_IMAGES = ip_adapter.MAX_IMAGES
A1111_MODULE = "ip-adapter_clip_sd15"  # sd-webui-controlnet's preprocessor for both SD1.5 adapters
PICTURE_PIXELS = 4096 * 4096  # a reference picture is shrunk to the encoder's 224 px: a phone photo is fine


FIELDS = ("ip_adapter_image", "ip_adapter_scale", "ip_adapter_model")


@dataclass(frozen=True, kw_only=True)
class ImagePromptFields:
    """The image-prompt fields of a mode's request (a base class: they come after the mode's own fields)."""

    ip_adapter_image: tuple[Any, ...] = ()  # pictures: uploaded files' paths, PIL images or arrays
    ip_adapter_scale: tuple[float, ...] = ()  # one weight per picture, or one for every picture; () = 0.6 each
    ip_adapter_model: str = DEFAULT_MODEL


# ---- checks -------------------------------------------------------------------------------------------------------
def parse_scales(value: Any) -> tuple[float, ...]:
    """Weights as the API and the form send them: "0.7, 0.3", a number, or a list of numbers."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        parts = [part for part in re.split(r"[,;\s]+", value.strip()) if part]
        try:
            return tuple(float(part) for part in parts)
        except ValueError:
            raise RequestError(
                f"ip_adapter_scale must be numbers separated by commas, one per picture (e.g. 0.7, 0.3); got {value!r}."
            ) from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (float(value),)
    if isinstance(value, Sequence) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return tuple(float(v) for v in value)
    raise RequestError(f"ip_adapter_scale must be numbers, one per picture (e.g. 0.7, 0.3); got {value!r}.")


def weights(req: Any) -> tuple[float, ...]:
    """One weight per picture of the request."""
    count, scales = len(req.ip_adapter_image), tuple(req.ip_adapter_scale)
    if not scales:
        return (DEFAULT_SCALE,) * count
    return scales * count if len(scales) == 1 else scales


def check_image_prompt(req: Any) -> None:
    """The image-prompt fields of any mode's request. Weights without pictures are no image prompt (the form always
    holds a weight)."""
    count = len(req.ip_adapter_image)
    if req.ip_adapter_model not in MODELS:
        raise RequestError(f"Unknown ip_adapter_model {req.ip_adapter_model!r}. Choose one of: {', '.join(MODELS)}.")
    if count > MAX_IMAGES:
        raise RequestError(f"{count} pictures in the image prompt; at most {MAX_IMAGES}. Drop the extra ones.")
    scales = tuple(req.ip_adapter_scale)
    if count and len(scales) not in (0, 1, count):
        raise RequestError(
            f"{len(scales)} weights for {count} pictures: give one weight per picture (e.g. "
            f"{', '.join(['0.6'] * count)}), or one weight for all."
        )
    for scale in scales:
        if not 0 <= scale <= MAX_SCALE:
            raise RequestError(f"Each ip_adapter_scale must be between 0 and {MAX_SCALE:g}; got {scale:g}.")


def scale_check(value: Any) -> str | None:
    """A preset's or restored PNG's weights (the form's text, or numbers)."""
    try:
        scales = parse_scales(value)
    except RequestError as exc:
        return str(exc)
    if len(scales) > MAX_IMAGES or any(not 0 <= s <= MAX_SCALE for s in scales):
        return f"must be at most {MAX_IMAGES} weights between 0 and {MAX_SCALE:g}; got {value!r}"
    return None


def fields() -> dict[str, Check]:
    """What presets and PNG restore may set (the pictures themselves are never restored)."""
    return {
        "ip_adapter_scale": scale_check,
        "ip_adapter_model": lambda v: None if v in MODELS else f"must be one of {', '.join(MODELS)}; got {v!r}",
    }


# ---- a run ----------------------------------------------------------------------------------------------------------
@dataclass
class ImagePrompt:
    """One request's image prompt, ready to run; `active` False: the plain path, nothing added."""

    model: str = DEFAULT_MODEL
    weights: tuple[float, ...] = ()
    pictures: list[Image.Image] = field(default_factory=list)
    unet: Any = None  # the IP-Adapter copy of the UNet the mode runs
    encoder: Any = None
    _embeddings: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return bool(self.pictures) and any(self.weights)

    @property
    def modules(self) -> dict[str, Any]:
        """`ModelCache.derive` extras: the adapted UNet and the encoder (none for the plain path)."""
        return {"unet": self.unet, "image_encoder": self.encoder} if self.active else {}

    def call_kwargs(self, pipe: Any, guidance_scale: float) -> dict[str, Any]:
        """Under the GPU lock, just before the pipeline call: the weights set, the pictures' embeddings."""
        if not self.active:
            return {}
        if not self._embeddings:  # encoded once per request (Refine's loops and every batch reuse them)
            plus = self.model in ip_adapter.PLUS
            self._embeddings = [ip_adapter.encode(self.encoder, picture, plus) for picture in self.pictures]
        pipe.set_ip_adapter_scale([*self.weights, *[0.0] * (MAX_IMAGES - len(self.weights))])
        cfg = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None  # as the pipeline decides
        return {"ip_adapter_image_embeds": ip_adapter.image_embeds(self._embeddings, cfg)}


def prepare(studio: Studio, req: Any, unet: Any = None, ref: str | None = None) -> ImagePrompt:
    """The request's pictures decoded and, when any weight is above 0, the IP-Adapter copy of `unet` (default: the
    base's) and the encoder from the cache. Bad pictures are a `RequestError` in words."""
    check_image_prompt(req)
    if not req.ip_adapter_image:
        return ImagePrompt()
    pictures = [_picture(value, i) for i, value in enumerate(req.ip_adapter_image)]
    prompt = ImagePrompt(req.ip_adapter_model, weights(req), pictures)
    if prompt.active:
        source = unet if unet is not None else studio.cache.base(ref).unet
        prompt.unet = studio.cache.image_prompt_unet(source, prompt.model, ref)
        prompt.encoder = studio.cache.slot("image_encoder")
    return prompt


def _picture(value: Any, index: int) -> Image.Image:
    try:
        return load_image(value, PICTURE_PIXELS, what=f"image prompt picture {index + 1}")
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None


# ---- infotext and restore -----------------------------------------------------------------------------------------
def unit_params(model: str, scales: Sequence[float], first_unit: int = 0) -> dict[str, str]:
    """sd-webui-controlnet's IP-Adapter units, one per picture: `ControlNet N: "Module: ip-adapter_clip_sd15,
    Model: ip-adapter_sd15, Weight: 0.6, ..."`."""
    units = {}
    for i, scale in enumerate(scales):
        unit = {
            "Module": A1111_MODULE,
            "Model": model,
            "Weight": f"{scale:g}",
            "Resize Mode": "Crop and Resize",
            "Guidance Start": "0",
            "Guidance End": "1",
            "Pixel Perfect": "False",
            "Control Mode": "Balanced",
        }
        units[f"ControlNet {first_unit + i}"] = ", ".join(f"{key}: {value}" for key, value in unit.items())
    return units


def request_params(req: Any, first_unit: int = 0) -> dict[str, str]:
    """A request's IP-Adapter units for its infotext (none without pictures)."""
    return unit_params(req.ip_adapter_model, weights(req), first_unit) if req.ip_adapter_image else {}


def _unit(value: str) -> dict[str, str]:
    return {key.lower(): text.strip() for key, text in parse_infotext(value).params.items()}


def is_ip_unit(value: str) -> bool:
    unit = _unit(value)
    return unit.get("module", unit.get("preprocessor", "")).startswith("ip-adapter")


def read_units(params: Mapping[str, str]) -> dict[str, Any]:
    """Every IP-Adapter unit of an infotext, in unit order, as the form's fields (weights as the form's text)."""
    units = sorted((int(key.split()[-1]), value) for key, value in params.items()
                   if re.fullmatch(r"ControlNet \d+", key) and is_ip_unit(value))  # fmt: skip
    models = {re.sub(r"\s*\[[0-9a-f]+\]$", "", _unit(value).get("model", "")) for _, value in units}
    if len(models) != 1 or not models <= set(MODELS):
        raise Unsupported(f"IP-Adapter model {', '.join(sorted(models))} is not offered here ({', '.join(MODELS)})")
    scales = [float(_unit(value).get("weight", "1")) for _, value in units]
    return {"ip_adapter_model": models.pop(), "ip_adapter_scale": ", ".join(f"{s:g}" for s in scales)}


def unit_reader(other: Any = None) -> Any:
    """The reader of a `ControlNet N` key: an IP-Adapter unit restores the image prompt's model and weights (every
    IP unit reads all of them, so the order of keys does not matter); another unit goes to `other` (Restyle's)."""

    def read(value: str, params: Mapping[str, str]) -> dict[str, Any]:
        if is_ip_unit(value):
            return read_units(params)
        if other is None:
            raise Unsupported("a ControlNet unit is used only by Restyle")
        result: dict[str, Any] = other(value, params)
        return result

    return read
