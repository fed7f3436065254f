"""ControlNet units: which ControlNet and annotator each preprocessor uses, a request's units, and their infotext.

Restyle's own fields describe unit 1; `controlnet_units` (a list of dicts with the same diffusers / A1111-style
keys) adds up to two more, each matched by order to a picture of `control_image`. A unit's `model` is the
ControlNet kind it drives (`hed`, `lineart`, `canny`, `openpose`); by default the preprocessor picks it, and a
ready-made map (preprocessor `none`) may drive any of them.

Every unit is written into the PNG as sd-webui-controlnet writes it (`ControlNet 0`, `ControlNet 1`, ...), so
AUTOMATIC1111 and Civitai read the units back; `unit_infotext` formats one unit at a given index, so units of
other kinds (image prompts) can be numbered after these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

from studio import edges, registry
from studio.engine.checks import RequestError, check_range

MAX_UNITS = 3  # unit 1 (Restyle's own fields) and up to two more
# ControlNet kind -> its cache slot (registry: HED's `controlnet`, and CONTROL_COMPANIONS)
CONTROLNET_SLOTS = {
    "hed": "controlnet",
    "lineart": "controlnet_lineart",
    "canny": "controlnet_canny",
    "openpose": "controlnet_openpose",
}
MODELS = tuple(CONTROLNET_SLOTS)
# preprocessor -> the ControlNet kind it feeds ("none": a ready-made map, HED's ControlNet unless `model` says)
PREPROCESSOR_MODELS = {
    "hed": "hed",
    "hed_safe": "hed",
    "lineart": "lineart",
    "lineart_coarse": "lineart",
    "canny": "canny",
    "openpose": "openpose",
    "none": "hed",
}
# preprocessor -> the annotator slot it runs (canny is OpenCV, a ready-made map needs none)
ANNOTATOR_SLOTS = {
    "hed": "annotator",
    "hed_safe": "annotator",
    "lineart": "annotator_lineart",
    "lineart_coarse": "annotator_lineart",
    "openpose": "annotator_openpose",
}
# sd-webui-controlnet's control modes; diffusers' guess mode is "ControlNet is more important"
CONTROL_MODES = {False: "Balanced", True: "ControlNet is more important"}


@dataclass(frozen=True)
class ControlUnit:
    """One ControlNet unit, named as Restyle's request names unit 1's fields."""

    image: Any
    preprocessor: str = "hed"
    model: str = "auto"  # "auto": the preprocessor's own ControlNet (PREPROCESSOR_MODELS)
    invert: bool = False
    preprocessor_resolution: int | None = None  # None: pixel perfect
    controlnet_conditioning_scale: float = 1.0
    control_guidance_start: float = 0.0
    control_guidance_end: float = 1.0
    low_threshold: int = edges.CANNY_THRESHOLDS[0]
    high_threshold: int = edges.CANNY_THRESHOLDS[1]

    @property
    def kind(self) -> str:
        return self.model if self.model != "auto" else PREPROCESSOR_MODELS[self.preprocessor]

    @property
    def thresholds(self) -> tuple[int, int]:
        return self.low_threshold, self.high_threshold


UNIT_KEYS = tuple(spec.name for spec in fields(ControlUnit) if spec.name != "image")


def _named(index: int) -> str:
    return "" if index == 0 else f"Control unit {index + 1}: "


def check_unit(unit: ControlUnit, index: int = 0) -> None:
    """A unit's settings, with errors naming the unit (unit 1 is Restyle's own fields)."""
    name = _named(index)
    if unit.preprocessor not in edges.PREPROCESSORS:
        raise RequestError(
            f"{name}Unknown preprocessor {unit.preprocessor!r}. Choose one of: {', '.join(edges.PREPROCESSORS)}."
        )
    if unit.model not in ("auto", *MODELS):
        raise RequestError(
            f"{name}Unknown ControlNet model {unit.model!r}. Choose one of: {', '.join(MODELS)}, or auto."
        )
    if (
        unit.model not in (None, "auto")
        and unit.preprocessor != "none"
        and unit.kind != PREPROCESSOR_MODELS[unit.preprocessor]
    ):
        raise RequestError(
            f"{name}Preprocessor {unit.preprocessor!r} makes a map for the {PREPROCESSOR_MODELS[unit.preprocessor]} "
            f"ControlNet, not {unit.model!r}: leave the model empty, pick its own, or use preprocessor 'none' with a "
            "ready-made map."
        )
    if unit.invert and unit.preprocessor != "none":
        raise RequestError(f"{name}Invert applies to your own sketch: choose preprocessor 'none', or untick Invert.")
    try:
        if unit.preprocessor_resolution is not None:
            check_range("preprocessor_resolution", unit.preprocessor_resolution, 64, 2048)
        check_range("controlnet_conditioning_scale", unit.controlnet_conditioning_scale, 0, 2)
        check_range("control_guidance_start", unit.control_guidance_start, 0, 1)
        check_range("control_guidance_end", unit.control_guidance_end, 0, 1)
        check_range("low_threshold", unit.low_threshold, 1, 255)
        check_range("high_threshold", unit.high_threshold, 1, 255)
    except RequestError as exc:
        raise RequestError(f"{name}{exc}") from None
    if unit.control_guidance_start >= unit.control_guidance_end:
        raise RequestError(
            f"{name}Guidance start ({unit.control_guidance_start:g}) must be before guidance end "
            f"({unit.control_guidance_end:g}); e.g. start 0, end 1 guides every step."
        )
    if unit.low_threshold > unit.high_threshold:
        raise RequestError(f"{name}Canny's low threshold must not be above its high threshold.")


def units_problem(value: Any) -> str | None:
    """Why a `controlnet_units` value (presets, restore) is not a list of up to two unit dicts, or None."""
    try:
        extra_units(value, None)
    except RequestError as exc:
        return str(exc)
    return None


def extra_units(units: Any, images: Sequence[Any] | None) -> list[ControlUnit]:
    """`controlnet_units` (a list of dicts) with `control_image` matched by order. `images` None: the settings
    alone are checked (presets, restore), with no picture."""
    units = [] if units in (None, "") else units
    if not isinstance(units, list | tuple) or not all(isinstance(unit, Mapping) for unit in units):
        raise RequestError('controlnet_units must be a list of units, e.g. [{"preprocessor": "canny"}].')
    if len(units) > MAX_UNITS - 1:
        raise RequestError(f"At most {MAX_UNITS} control units in all: unit 1 and up to {MAX_UNITS - 1} more.")
    pictures = list(images or ())
    if images is not None and len(pictures) != len(units):
        raise RequestError(
            f"{len(units)} further control unit(s) but {len(pictures)} control image(s): give one picture per "
            "further unit, in the same order."
        )
    parsed = []
    for index, unit in enumerate(units, start=1):
        unknown = sorted(set(unit) - set(UNIT_KEYS))
        if unknown:
            raise RequestError(f"{_named(index)}unknown key(s) {', '.join(unknown)}; use {', '.join(UNIT_KEYS)}.")
        parsed.append(_unit(pictures[index - 1] if images is not None else None, unit, index))
    return parsed


def _unit(image: Any, values: Mapping[str, Any], index: int) -> ControlUnit:
    """A unit from JSON values, each converted to the field's type with an error naming unit and key."""
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        try:
            if key in ("preprocessor_resolution", "low_threshold", "high_threshold"):
                kwargs[key] = None if value in (None, 0, "") else int(value)
            elif key in ("controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end"):
                kwargs[key] = float(value)
            elif key == "invert":
                if not isinstance(value, bool):
                    raise ValueError
                kwargs[key] = value
            else:
                kwargs[key] = "auto" if key == "model" and value in (None, "") else str(value)
        except (TypeError, ValueError):
            raise RequestError(f"{_named(index)}{key} has the unreadable value {value!r}.") from None
    if kwargs.get("low_threshold") is None:
        kwargs.pop("low_threshold", None)
    if kwargs.get("high_threshold") is None:
        kwargs.pop("high_threshold", None)
    unit = ControlUnit(image=image, **kwargs)
    check_unit(unit, index)
    return unit


def unit_dict(unit: ControlUnit) -> dict[str, Any]:
    """A unit as `controlnet_units` holds it (JSON: no picture; defaults left out)."""
    default = ControlUnit(image=None)
    return {key: getattr(unit, key) for key in UNIT_KEYS if getattr(unit, key) != getattr(default, key)}


# ---- annotators ---------------------------------------------------------------------------------------------------
def load_annotator(slot: str, source: str) -> Any:
    """A controlnet_aux annotator through its own `from_pretrained`, from lllyasviel/Annotators' file layout."""
    files = registry.ANNOTATOR_FILES[slot]
    if slot == "annotator_lineart":
        from controlnet_aux import LineartDetector

        return LineartDetector.from_pretrained(source, filename=files[0], coarse_filename=files[1])
    from controlnet_aux import OpenposeDetector

    return OpenposeDetector.from_pretrained(source, filename=files[0], hand_filename=files[1], face_filename=files[2])


# ---- infotext ------------------------------------------------------------------------------------------------------
def unit_infotext(index: int, unit: Mapping[str, Any]) -> tuple[str, str]:
    """One unit as sd-webui-controlnet writes it: (`ControlNet <index>`, `Module: ..., Model: ..., Weight: ...`).
    Entries that are None are left out; the order of `unit` is kept."""
    text = ", ".join(f"{key}: {value}" for key, value in unit.items() if value is not None)
    return f"ControlNet {index}", text


def unit_fields(unit: ControlUnit, model_name: str, resolution: int, guess_mode: bool) -> dict[str, Any]:
    """A ControlNet unit's entries in sd-webui-controlnet's order."""
    module = "invert" if unit.preprocessor == "none" and unit.invert else edges.A1111_MODULES[unit.preprocessor]
    canny = unit.preprocessor == "canny"
    return {
        "Module": module,
        "Model": model_name,
        "Weight": f"{unit.controlnet_conditioning_scale:g}",
        "Resize Mode": "Crop and Resize",
        "Processor Res": resolution if unit.preprocessor != "none" else None,
        "Threshold A": unit.low_threshold if canny else None,
        "Threshold B": unit.high_threshold if canny else None,
        "Guidance Start": f"{unit.control_guidance_start:g}",
        "Guidance End": f"{unit.control_guidance_end:g}",
        "Pixel Perfect": unit.preprocessor_resolution is None,
        "Control Mode": CONTROL_MODES[guess_mode],
        "Guess Mode": guess_mode,
    }


def model_kind(name: str) -> str | None:
    """The ControlNet kind an infotext's `Model:` names (`control_v11p_sd15_canny [d14c016b]` -> canny)."""
    lowered = name.lower()
    for kind, words in (("openpose", ("openpose", "pose")), ("lineart", ("lineart",)), ("canny", ("canny",)),
                        ("hed", ("hed", "softedge", "controlnet"))):  # fmt: skip
        if any(word in lowered for word in words):
            return kind
    return None
