"""PNG restore: read the `parameters` infotext of an Atelier or AUTOMATIC1111 PNG back into a tab's request fields.

Which tab: Atelier writes `Mode: txt2img|refine|textile|inpaint|restyle` (its exports `textile-print`, ... belong
to their mode). An A1111 PNG goes to Restyle when it records a ControlNet unit, to Inpaint when it records
inpainting keys (`Mask blur`, `Masked content`, ...), to Refine (img2img) when it records `Denoising strength`
without hires fix, and to txt2img otherwise.

Each infotext key has one reader in `READERS` that turns its text into request fields (diffusers names). A field
the tab does not have, a value the studio would refuse (checked with the presets' table), and any key no reader
knows are left out and reported in `ignored` and in the note; the form keeps its own value for them. Refine restores
one loop that reproduces the image from its parent (the recorded strength and seed are that loop's own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio import edges
from studio.engine.inpaint import INPAINT_AREA, MASKED_CONTENT
from studio.images import ImageInputError, open_upload
from studio.metadata import parse_infotext, parse_size, read_parameters
from studio.presets import MODE_FIELDS, MODES, check_values
from studio.schedulers import from_infotext
from studio.settings import Limits

log = logging.getLogger(__name__)

TAB_NAMES = {"txt2img": "txt2img", "refine": "Refine", "textile": "Textile", "inpaint": "Inpaint", "restyle": "Restyle"}
INPAINT_KEYS = ("Mask blur", "Masked content", "Inpaint area", "Mask mode", "Masked area padding")
# Recorded for the record, not form fields: consumed without being reported as ignored.
INFORMATIONAL = {
    "Mode",
    "Model",
    "Model hash",
    "Schedule type",
    "Loop",
    "Parent",
    "Strength schedule",
    "Export",
    "Print pixels",
    "Palette",
    "Inpaint model",
}
# Refine restores one loop (see the module docstring), whatever the form held before.
MODE_DEFAULTS: dict[str, dict[str, Any]] = {"refine": {"loops": 1, "strength_schedule": "constant"}}


class RestoreError(ValueError):
    """A file that cannot be restored; the message says why and what to do."""


class Unsupported(ValueError):
    """A readable value this studio has no equivalent for (e.g. a sampler it does not offer)."""


@dataclass
class Restored:
    mode: str  # the tab to fill: one of studio.presets.MODES
    values: dict[str, Any]  # request field -> value; only what the PNG states (plus MODE_DEFAULTS)
    ignored: list[str] = field(default_factory=list)  # infotext keys left out
    note: str = ""  # one or two sentences for the designer
    model: str | None = None  # the checkpoint recorded in the PNG (the studio does not switch to it)


# ---- readers: infotext value (+ all params) -> request fields ---------------------------------------------------
Reader = Callable[[str, Mapping[str, str]], dict[str, Any]]


def _boolean(value: str) -> bool:
    if value.strip().lower() not in ("true", "false"):
        raise ValueError(f"not true/false: {value!r}")
    return value.strip().lower() == "true"


def _one(name: str, read: Callable[[str], Any]) -> Reader:
    return lambda value, _params: {name: read(value.strip())}


def _size(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
    width, height = parse_size(value.strip())
    return {"width": width, "height": height}


def _scheduler(value: str, params: Mapping[str, str]) -> dict[str, Any]:
    name = from_infotext(value.strip(), params.get("Schedule type"))
    if name is None:
        raise Unsupported(
            f"{value.strip()} with schedule {params.get('Schedule type') or 'Automatic'} is not offered here"
        )
    return {"scheduler": name}


def _reverse(table: Mapping[str, str], name: str) -> Reader:
    lookup = {label.lower(): key for key, label in table.items()}

    def read(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
        if value.strip().lower() not in lookup:
            raise Unsupported(f"{value.strip()!r} is not offered here")
        return {name: lookup[value.strip().lower()]}

    return read


def _print_size(value: str, params: Mapping[str, str]) -> dict[str, Any]:
    """`Print size: 21.00x29.70 cm`; when the print file has the tile's own pixels, the size followed the tile."""
    size, _, unit = value.strip().partition(" ")
    if params.get("Print pixels", "").strip() == params.get("Size", "").strip():
        return {"physical_width": 0.0, "physical_height": 0.0, "unit": unit}
    width, _, height = size.partition("x")
    return {"physical_width": float(width), "physical_height": float(height), "unit": unit}


def _controlnet(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
    """One sd-webui-controlnet unit: `Module: softedge_hed, Model: ..., Weight: 1, Guidance Start: 0, ...`."""
    unit = {key.lower(): text.strip() for key, text in parse_infotext(value).params.items()}
    module = unit.get("module", unit.get("preprocessor", ""))
    modules = {a1111: ours for ours, a1111 in edges.A1111_MODULES.items()}
    if module == "invert":
        fields: dict[str, Any] = {"preprocessor": "none", "invert": True}
    elif module in modules:
        fields = {"preprocessor": modules[module], "invert": False}
    else:
        raise Unsupported(f"module {module!r} is not offered here (Restyle uses soft edges or your own sketch)")
    readers = {
        "weight": ("controlnet_conditioning_scale", float),
        "guidance start": ("control_guidance_start", float),
        "guidance end": ("control_guidance_end", float),
        "guess mode": ("guess_mode", _boolean),
    }
    fields.update({name: read(unit[key]) for key, (name, read) in readers.items() if key in unit})
    if "pixel perfect" in unit:
        pixel_perfect = _boolean(unit["pixel perfect"])
        fields["preprocessor_resolution"] = None if pixel_perfect else int(unit.get("processor res", ""))
    return fields


CONTROLNET_USED = {
    "module",
    "preprocessor",
    "model",
    "weight",
    "guidance start",
    "guidance end",
    "guess mode",
    "pixel perfect",
    "processor res",
    "resize mode",
}


def controlnet_unused(value: str) -> list[str]:
    """Keys of a ControlNet unit that Restyle has no field for (thresholds, control mode, ...)."""
    return [key for key in parse_infotext(value).params if key.lower() not in CONTROLNET_USED]


READERS: dict[str, Reader] = {
    "Steps": _one("num_inference_steps", int),
    "Sampler": _scheduler,
    "CFG scale": _one("guidance_scale", float),
    "Seed": _one("seed", int),
    "Size": _size,
    "Denoising strength": _one("strength", float),
    "Seed policy": _one("seed_policy", str),
    "Color correction": _one("color_correction", _boolean),
    "Repeat": _one("repeat", str),
    "DPI": _one("dpi", int),
    "Print size": _print_size,
    "Colours": _one("colors", int),
    "Mask blur": _one("mask_blur", int),
    "Mask mode": lambda value, _p: {"invert_mask": value.strip().lower() == "inpaint not masked"},
    "Masked content": _reverse(MASKED_CONTENT, "masked_content"),
    "Inpaint area": _reverse(INPAINT_AREA, "inpaint_area"),
    "Masked area padding": _one("padding", int),
    "ControlNet 0": _controlnet,
    "ControlNet": _controlnet,  # the older single-unit spelling
}


# ---- restore ----------------------------------------------------------------------------------------------------
def detect_mode(params: Mapping[str, str]) -> str:
    recorded = params.get("Mode", "").strip().split("-")[0]
    if recorded in MODES:
        return recorded
    if any(key.startswith("ControlNet") for key in params):
        return "restyle"
    if any(key in params for key in INPAINT_KEYS):
        return "inpaint"
    if "Denoising strength" in params and not any(key.startswith("Hires") for key in params):
        return "refine"
    return "txt2img"


def restore_from_text(text: str, limits: Limits | None = None) -> Restored:
    """Request fields for the right tab from an infotext (a PNG's `parameters`, or text pasted from A1111)."""
    info = parse_infotext(text)
    params = info.params
    if params.get("Mode") == "refine-source":
        raise RestoreError(
            "This is a Refine source copy: it records no generation settings. Send it to a tab "
            "as an input image instead."
        )
    mode = detect_mode(params)
    values: dict[str, Any] = {
        **MODE_DEFAULTS.get(mode, {}),
        "prompt": info.prompt,
        "negative_prompt": info.negative_prompt,
    }
    reasons: dict[str, str] = {}
    atelier = params.get("Mode", "").split("-")[0] in MODES
    for key, value in params.items():
        if key in INFORMATIONAL or (key == "Size" and atelier and "width" not in MODE_FIELDS[mode]):
            continue  # Atelier's Refine and Inpaint record the input's own size, which is no setting
        if key not in READERS:
            reasons[key] = "not an Atelier setting"
            continue
        try:
            fields = READERS[key](value, params)
        except Unsupported as exc:
            reasons[key] = str(exc)
            continue
        except (ValueError, TypeError):
            reasons[key] = f"unreadable value {value.strip()!r}"
            continue
        problems = check_values(mode, fields, limits)
        if problems:
            unknown = any("unknown key" in problem for problem in problems.values())
            reasons[key] = (
                f"not a setting of the {TAB_NAMES[mode]} tab"
                if unknown
                else "; ".join(f"{name} {problem}" for name, problem in problems.items())
            )
            continue
        values.update(fields)
        if key.startswith("ControlNet"):
            reasons.update({f"{key}: {sub}": "not used by Restyle" for sub in controlnet_unused(value)})
    source = "Atelier" if atelier else "AUTOMATIC1111"
    restored = Restored(mode=mode, values=values, ignored=list(reasons), model=params.get("Model"))
    restored.note = _note(restored, source, reasons, params)
    log.info("Restored %s PNG into %s (%d fields, %d ignored)", source, mode, len(values), len(reasons))
    return restored


def _note(restored: Restored, source: str, reasons: Mapping[str, str], params: Mapping[str, str]) -> str:
    tab = TAB_NAMES[restored.mode]
    note = f"Filled {len(restored.values)} {tab} fields from an {source} PNG."
    if restored.model:
        note += f" Made with model {restored.model}; the current model is kept."
    if restored.mode == "refine" and "Loop" in params:
        note += f" Loop {params['Loop']} of a chain: restored as one loop from its parent image's settings."
    if reasons:
        note += " Ignored: " + "; ".join(f"{key} ({why})" for key, why in reasons.items()) + "."
    return note


def restore_from_png(source: str | Path | Image.Image, limits: Limits | None = None) -> Restored:
    """The tab and request fields recorded in a PNG's `parameters` chunk (a file path or a PIL image); values
    outside `limits` (the studio's own) are ignored."""
    try:
        image = source if isinstance(source, Image.Image) else open_upload(source, "PNG")
    except ImageInputError as exc:
        raise RestoreError(str(exc)) from None
    text = read_parameters(image)
    if not text or not text.strip():
        kind = f"This {image.format} file" if image.format else "This image"
        raise RestoreError(
            f"{kind} carries no generation settings (no 'parameters' metadata). Drop a PNG saved "
            "by Atelier or AUTOMATIC1111; converting to JPEG/WebP, screenshots and many upload sites "
            "strip it."
        )
    return restore_from_text(text, limits)
