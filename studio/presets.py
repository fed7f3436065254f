"""Presets: one JSON file per preset in `presets/`, validated strictly when the studio starts.

A preset file holds exactly these keys (`description` may be left out):

    {"name": "Dreamlike refinement", "mode": "refine", "description": "...",
     "values": {"strength": 0.75, "guidance_scale": 7.5, "negative_prompt": "..."}}

`mode` is the tab it belongs to (txt2img, refine, textile, inpaint, restyle) or "any": a negative-prompt set that
holds only `negative_prompt` and is offered in every tab. The keys of `values` are the mode's request field names
(as diffusers names them, see `MODE_FIELDS`); a preset fills only the fields it names and the designer can still
edit everything. An unknown key, an unknown mode, a value of the wrong type or out of range, bad JSON or a duplicate
name is a `PresetError` naming the file and the key: the studio refuses to start rather than ship a broken preset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import edges, patterns, tiling
from studio.engine.common import MAX_SEED
from studio.engine.inpaint import INPAINT_AREA, MASKED_CONTENT, MAX_MASK_BLUR, MAX_PADDING
from studio.engine.refine import MAX_LOOPS, SCHEDULES, SEED_POLICIES
from studio.engine.textile import MAX_COLORS
from studio.schedulers import SAMPLERS
from studio.settings import Limits

log = logging.getLogger(__name__)

MODES = ("txt2img", "refine", "textile", "inpaint", "restyle")
ANY = "any"  # negative-prompt sets: only `negative_prompt`, listed in every mode
TOP_KEYS = {"name": True, "mode": True, "description": False, "values": True}  # key -> required
MAX_NAME_CHARS = 80

Check = Callable[[Any], str | None]  # returns what is wrong with a value, or None


class PresetError(ValueError):
    """A preset file that cannot be used; the message names the file and the key."""

    def __init__(self, path: Path, key: str | None, problem: str) -> None:
        self.path, self.key = path, key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)


# ---- value checks -----------------------------------------------------------------------------------------------
def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def number(low: float, high: float) -> Check:
    def check(value: Any) -> str | None:
        if not _is_number(value):
            return f"must be a number; got {value!r}"
        return None if low <= value <= high else f"must be between {low:g} and {high:g}; got {value:g}"

    return check


def integer(low: int, high: int, multiple: int = 1) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, int) or isinstance(value, bool):
            return f"must be a whole number; got {value!r}"
        if not low <= value <= high:
            return f"must be between {low} and {high}; got {value}"
        return None if value % multiple == 0 else f"must be a multiple of {multiple}; got {value}"

    return check


def choice(options: tuple[Any, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else f"must be one of {', '.join(map(repr, options))}; got {value!r}"

    return check


def text(max_chars: int) -> Check:
    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string; got {value!r}"
        return None if len(value) <= max_chars else f"is {len(value)} characters long; at most {max_chars}"

    return check


def flag(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"must be true or false; got {value!r}"


def optional(inner: Check) -> Check:
    def check(value: Any) -> str | None:
        return None if value is None else inner(value)

    return check


def without(fields: dict[str, Check], *names: str) -> dict[str, Check]:
    return {key: check for key, check in fields.items() if key not in names}


# ---- the one table: allowed keys per mode ---------------------------------------------------------------------
def mode_fields(limits: Limits) -> dict[str, dict[str, Check]]:
    """Every key a preset (or a restored PNG) may set, per mode, with its check. Keys are request field names."""
    size = optional(integer(64, limits.max_side, multiple=8))
    common: dict[str, Check] = {
        "prompt": text(limits.max_prompt_chars),
        "negative_prompt": text(limits.max_prompt_chars),
        "num_inference_steps": integer(1, limits.max_steps),
        "guidance_scale": number(0, 30),
        "scheduler": choice(tuple(SAMPLERS)),
        "seed": integer(-1, MAX_SEED),
        "batch_size": integer(1, limits.max_batch_size),
        "batch_count": integer(1, limits.max_batch_count),
    }
    strength = number(0.01, 1)
    return {
        "txt2img": {**common, "width": size, "height": size},
        "refine": {
            **without(common, "batch_count"),
            "strength": strength,
            "loops": integer(1, MAX_LOOPS),
            "strength_schedule": choice(SCHEDULES),
            "final_strength": optional(strength),
            "seed_policy": choice(SEED_POLICIES),
            "color_correction": flag,
        },
        "textile": {
            **common,
            "width": size,
            "height": size,
            "repeat": choice(tiling.REPEATS),
            "strength": strength,
            "dpi": integer(36, 2400),
            "physical_width": number(0, 1000),
            "physical_height": number(0, 1000),
            "unit": choice(patterns.UNITS),
            "colors": choice((0, *range(2, MAX_COLORS + 1))),
        },
        "inpaint": {
            **common,
            "strength": strength,
            "mask_blur": integer(0, MAX_MASK_BLUR),
            "invert_mask": flag,
            "masked_content": choice(tuple(MASKED_CONTENT)),
            "inpaint_area": choice(tuple(INPAINT_AREA)),
            "padding": integer(0, MAX_PADDING),
        },
        "restyle": {
            **common,
            "width": size,
            "height": size,
            "preprocessor": choice(edges.PREPROCESSORS),
            "invert": flag,
            "preprocessor_resolution": optional(integer(64, 2048)),
            "controlnet_conditioning_scale": number(0, 2),
            "control_guidance_start": number(0, 1),
            "control_guidance_end": number(0, 1),
            "guess_mode": flag,
            "repeat": optional(choice(tiling.REPEATS)),
        },
        ANY: {"negative_prompt": common["negative_prompt"]},
    }


MODE_FIELDS = mode_fields(Limits())


def check_values(mode: str, values: Mapping[str, Any], limits: Limits | None = None) -> dict[str, str]:
    """What is wrong with each bad value of `values` for `mode` ({} when all are fine), including unknown keys."""
    fields = MODE_FIELDS if limits is None else mode_fields(limits)
    allowed = fields[mode]
    problems = {}
    for key, value in values.items():
        if key not in allowed:
            problems[key] = f"unknown key for mode {mode!r}; allowed: {', '.join(allowed)}"
        elif (problem := allowed[key](value)) is not None:
            problems[key] = problem
    start, end = values.get("control_guidance_start"), values.get("control_guidance_end")
    if _is_number(start) and _is_number(end) and start >= end:
        problems["control_guidance_end"] = f"must be after control_guidance_start ({start:g}); got {end:g}"
    return problems


# ---- presets ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    mode: str  # one of MODES, or ANY
    values: dict[str, Any]
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def applies_to(self, mode: str) -> bool:
        return self.mode in (mode, ANY)

    def apply(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """The form's values with this preset's values laid over them (keys the preset does not name are kept)."""
        return {**form, **self.values}


def read_preset(path: Path, limits: Limits | None = None) -> Preset:
    """One preset file, checked strictly; `PresetError` names the file and the offending key."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise PresetError(path, None, f"cannot read the file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise PresetError(path, None, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise PresetError(path, None, "must hold one JSON object with name, mode, description and values")
    for key in data:
        if key not in TOP_KEYS:
            raise PresetError(path, key, f"unknown key; a preset has only {', '.join(TOP_KEYS)}")
    for key, required in TOP_KEYS.items():
        if required and key not in data:
            raise PresetError(path, key, "missing")
    name, mode, description, values = data["name"], data["mode"], data.get("description", ""), data["values"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise PresetError(path, "name", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    if mode not in (*MODES, ANY):
        raise PresetError(path, "mode", f"unknown mode {mode!r}; use one of {', '.join((*MODES, ANY))}")
    if not isinstance(description, str):
        raise PresetError(path, "description", "must be a string")
    if not isinstance(values, dict) or not values:
        raise PresetError(path, "values", "must be a non-empty object of request fields")
    problems = check_values(mode, values, limits)
    if problems:
        key, problem = next(iter(problems.items()))
        raise PresetError(path, f"values.{key}", problem)
    return Preset(name=name.strip(), mode=mode, values=dict(values), description=description, path=path)


def load_presets(folder: Path, limits: Limits | None = None) -> dict[str, list[Preset]]:
    """Every `*.json` in `folder`, by mode (sorted by name); "any" presets follow each mode's own. Fails fast."""
    presets = sorted(
        (read_preset(path, limits) for path in sorted(Path(folder).glob("*.json"))), key=lambda p: p.name.casefold()
    )
    by_mode = {mode: [p for p in presets if p.mode == mode] + [p for p in presets if p.mode == ANY] for mode in MODES}
    for mode, listed in by_mode.items():
        seen: dict[str, Preset] = {}
        for preset in listed:
            other = seen.setdefault(preset.name.casefold(), preset)
            if other is not preset:
                raise PresetError(
                    preset.path or Path(folder),
                    "name",
                    f"{preset.name!r} is also the name of "
                    f"{other.path.name if other.path else 'another preset'} in the {mode} tab",
                )
    log.info("Loaded %d presets from %s", len(presets), folder)
    return by_mode


def find(presets: Mapping[str, list[Preset]], mode: str, name: str) -> Preset:
    """The preset called `name` offered in `mode`'s tab."""
    for preset in presets.get(mode, []):
        if preset.name == name:
            return preset
    raise KeyError(f"No preset {name!r} for {mode}; choose one of: {', '.join(p.name for p in presets.get(mode, []))}")
