"""Presets: one JSON file per preset in `presets/`, validated strictly when the studio starts.

A preset file holds exactly these keys (`description` may be left out):

    {"name": "Dreamlike refinement", "mode": "refine", "description": "...",
     "values": {"strength": 0.75, "guidance_scale": 7.5, "negative_prompt": "..."}}

`mode` is the tab it belongs to (a mode's name: txt2img, refine, textile, inpaint, restyle, ...) or "any": a
negative-prompt set that holds only `negative_prompt` and is offered in every tab. The keys of `values` are the
mode's request field names (as diffusers names them; each `Mode.fields` declares them with their checks); a preset
fills only the fields it names and the designer can still edit everything. An unknown key, an unknown mode, a value
of the wrong type or out of range, bad JSON or a duplicate name is a `PresetError` naming the file and the key: the
studio refuses to start rather than ship a broken preset.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from studio.errors import StudioError
from studio.fields import Check, is_number, prompt_fields
from studio.settings import Limits

if TYPE_CHECKING:
    from studio.modes import Mode

log = logging.getLogger(__name__)

ANY = "any"  # negative-prompt sets: only `negative_prompt`, listed in every mode that has one
TOP_KEYS = {"name": True, "mode": True, "description": False, "values": True}  # key -> required
MAX_NAME_CHARS = 80

FieldTable = dict[str, dict[str, Check]]  # mode name (or ANY) -> request field -> its check


class PresetError(StudioError, ValueError):
    """A preset file that cannot be used; the message names the file and the key."""

    def __init__(self, path: Path, key: str | None, problem: str) -> None:
        self.path, self.key = path, key
        where = f"{path}: {key}: " if key else f"{path}: "
        super().__init__(where + problem)


def field_table(modes: Sequence[Mode], limits: Limits) -> FieldTable:
    """Every key a preset (or a restored PNG) may set, per mode, with its check; computed from the modes."""
    return {
        **{m.name: m.fields(limits) for m in modes},
        ANY: {"negative_prompt": prompt_fields(limits)["negative_prompt"]},
    }


def check_values(table: FieldTable, mode: str, values: Mapping[str, Any]) -> dict[str, str]:
    """What is wrong with each bad value of `values` for `mode` ({} when all are fine), including unknown keys."""
    allowed = table[mode]
    problems = {}
    for key, value in values.items():
        if key not in allowed:
            problems[key] = f"unknown key for mode {mode!r}; allowed: {', '.join(allowed)}"
        elif (problem := allowed[key](value)) is not None:
            problems[key] = problem
    start, end = values.get("control_guidance_start"), values.get("control_guidance_end")
    if is_number(start) and is_number(end) and start >= end:
        problems["control_guidance_end"] = f"must be after control_guidance_start ({start:g}); got {end:g}"
    return problems


# ---- presets ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preset:
    name: str
    mode: str  # a mode's name, or ANY
    values: dict[str, Any]
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def applies_to(self, mode: str) -> bool:
        return self.mode in (mode, ANY)

    def apply(self, form: Mapping[str, Any]) -> dict[str, Any]:
        """The form's values with this preset's values laid over them (keys the preset does not name are kept)."""
        return {**form, **self.values}


def read_object(path: Path, top_keys: Mapping[str, bool], kind: str, error: type[PresetError]) -> dict[str, Any]:
    """A data file holding one JSON object with exactly `top_keys` (key -> required), checked strictly; `error`
    names the file and the key. Presets and palettes both read their files with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise error(path, None, f"cannot read the file ({exc})") from None
    except json.JSONDecodeError as exc:
        raise error(path, None, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise error(path, None, f"must hold one JSON object with {', '.join(top_keys)}")
    for key in data:
        if key not in top_keys:
            raise error(path, key, f"unknown key; a {kind} has only {', '.join(top_keys)}")
    for key, required in top_keys.items():
        if required and key not in data:
            raise error(path, key, "missing")
    return data


def read_preset(path: Path, table: FieldTable) -> Preset:
    """One preset file, checked strictly; `PresetError` names the file and the offending key."""
    path = Path(path)
    data = read_object(path, TOP_KEYS, "preset", PresetError)
    name, mode, description, values = data["name"], data["mode"], data.get("description", ""), data["values"]
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_CHARS:
        raise PresetError(path, "name", f"must be a non-empty string of at most {MAX_NAME_CHARS} characters")
    if not isinstance(mode, str) or mode not in table:
        raise PresetError(path, "mode", f"unknown mode {mode!r}; use one of {', '.join(table)}")
    if not isinstance(description, str):
        raise PresetError(path, "description", "must be a string")
    if not isinstance(values, dict) or not values:
        raise PresetError(path, "values", "must be a non-empty object of request fields")
    problems = check_values(table, mode, values)
    if problems:
        key, problem = next(iter(problems.items()))
        raise PresetError(path, f"values.{key}", problem)
    return Preset(name=name.strip(), mode=mode, values=dict(values), description=description, path=path)


def load_presets(folder: Path, limits: Limits, modes: Sequence[Mode]) -> dict[str, list[Preset]]:
    """Every `*.json` in `folder`, by mode (sorted by name); "any" presets follow each mode's own. Fails fast."""
    table = field_table(modes, limits)
    presets = sorted(
        (read_preset(path, table) for path in sorted(Path(folder).glob("*.json"))), key=lambda p: p.name.casefold()
    )
    names = [m.name for m in modes]
    negatives = [p for p in presets if p.mode == ANY]  # offered in every tab that has a negative prompt
    by_mode = {
        mode: [p for p in presets if p.mode == mode] + (negatives if "negative_prompt" in table[mode] else [])
        for mode in names
    }
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
