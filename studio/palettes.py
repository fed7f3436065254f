"""Palettes: a season's colours (or a mill's inks) as data, validated strictly when the studio starts.

One JSON file per palette in `presets/palettes/` (an operator adds their own beside the shipped ones):

    {"name": "SS26 Citrus Grove", "description": "...",
     "colors": ["#F4B63F", {"hex": "#2E6B4F", "name": "Bottle green"}, ...]}

`colors` holds 2 to 64 distinct colours, each `#RRGGBB` or an object with `hex` and an optional `name` (a colour
name or a mill's ink code). An unknown key, a missing key, a colour that is not `#RRGGBB`, a colour given twice,
bad JSON or a palette name used twice is a `PaletteError` naming the file and the key (`colors[3].hex`): the
studio refuses to start rather than offer a broken palette. Palettes also come from text (an API caller's or a
designer's own: `Name: #hex #hex ...`, one per line) and from a mood photo (its k main colours).
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from studio import patterns
from studio.errors import RequestError
from studio.presets import PresetError, read_object

log = logging.getLogger(__name__)

PALETTES_DIR = Path(__file__).resolve().parent.parent / "presets" / "palettes"
TOP_KEYS = {"name": True, "description": False, "colors": True}  # key -> required
COLOR_KEYS = {"hex": True, "name": False}
MIN_COLORS, MAX_COLORS = 2, 64
MAX_NAME_CHARS, MAX_COLOR_NAME_CHARS = 80, 40
RESERVED = ":;\n\r"  # they separate a name from its colours, and one colourway from the next, in mappings
HEX = re.compile(r"#?([0-9A-Fa-f]{6})")

RGB = tuple[int, int, int]


class PaletteError(PresetError):
    """A palette file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Palette:
    name: str
    colors: tuple[RGB, ...]
    names: tuple[str, ...] = ()  # one per colour ("" when unnamed); empty: none named
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def name_of(self, index: int) -> str:
        return self.names[index] if index < len(self.names) else ""

    @property
    def hex(self) -> list[str]:
        return [to_hex(color) for color in self.colors]


def to_hex(color: Sequence[int]) -> str:
    r, g, b = color
    return f"#{r:02x}{g:02x}{b:02x}"


def parse_hex(text: Any) -> RGB | None:
    """`#RRGGBB` (or `RRGGBB`) as an RGB triple; None for anything else."""
    match = HEX.fullmatch(text.strip()) if isinstance(text, str) else None
    if match is None:
        return None
    value = int(match.group(1), 16)
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


def name_problem(name: Any, limit: int) -> str | None:
    """What is wrong with a palette or colour name (None when it is fine)."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty string"
    if len(name) > limit:
        return f"is {len(name)} characters long; at most {limit}"
    if any(char in RESERVED for char in name) or any(unicodedata.category(c) == "Cc" for c in name):
        return "must not hold ':' or ';' or control characters (they separate colourways in a mapping)"
    return None


# ---- files --------------------------------------------------------------------------------------------------------
def read_palette(path: Path) -> Palette:
    """One palette file, checked strictly; `PaletteError` names the file and the offending key."""
    path = Path(path)
    data = read_object(path, TOP_KEYS, "palette", PaletteError)
    if (problem := name_problem(data["name"], MAX_NAME_CHARS)) is not None:
        raise PaletteError(path, "name", problem)
    description = data.get("description", "")
    if not isinstance(description, str):
        raise PaletteError(path, "description", "must be a string")
    entries = data["colors"]
    if not isinstance(entries, list) or not MIN_COLORS <= len(entries) <= MAX_COLORS:
        raise PaletteError(
            path, "colors", f'must be a list of {MIN_COLORS} to {MAX_COLORS} colours ("#RRGGBB" or {{hex, name}})'
        )
    colors: list[RGB] = []
    names: list[str] = []
    for index, entry in enumerate(entries):
        color, name = _color_entry(path, f"colors[{index}]", entry)
        if color in colors:
            first = colors.index(color)
            raise PaletteError(path, f"colors[{index}]", f"{to_hex(color)} is already colors[{first}]")
        colors.append(color)
        names.append(name)
    return Palette(
        name=data["name"].strip(),
        colors=tuple(colors),
        names=tuple(names) if any(names) else (),
        description=description,
        path=path,
    )


def _color_entry(path: Path, key: str, entry: Any) -> tuple[RGB, str]:
    if isinstance(entry, dict):
        for sub in entry:
            if sub not in COLOR_KEYS:
                raise PaletteError(path, f"{key}.{sub}", "unknown key; a colour has only hex and name")
        if "hex" not in entry:
            raise PaletteError(path, f"{key}.hex", "missing")
        name = entry.get("name", "")
        if "name" in entry and (problem := name_problem(name, MAX_COLOR_NAME_CHARS)) is not None:
            raise PaletteError(path, f"{key}.name", problem)
        hex_key, value = f"{key}.hex", entry["hex"]
    else:
        name, hex_key, value = "", key, entry
    color = parse_hex(value) if isinstance(value, str) and value.startswith("#") else None
    if color is None:
        raise PaletteError(path, hex_key, f'{value!r} is not a hex colour; write "#RRGGBB", e.g. "#2E6B4F"')
    return color, name.strip()


def load_palettes(folder: Path) -> dict[str, Palette]:
    """Every `*.json` in `folder`, by name (sorted, case-insensitively). Fails fast on the first bad file."""
    folder = Path(folder)
    if not folder.is_dir():
        log.warning("No palettes folder at %s: the Colourways tab offers no palettes of its own", folder)
        return {}
    loaded: dict[str, Palette] = {}
    seen: dict[str, Palette] = {}
    for path in sorted(folder.glob("*.json")):
        palette = read_palette(path)
        other = seen.setdefault(palette.name.casefold(), palette)
        if other is not palette:
            where = other.path.name if other.path else "another palette"
            raise PaletteError(path, "name", f"{palette.name!r} is also the name of {where}")
        loaded[palette.name] = palette
    log.info("Loaded %d palettes from %s", len(loaded), folder)
    return dict(sorted(loaded.items(), key=lambda item: item[0].casefold()))


@functools.lru_cache(maxsize=8)
def library(folder: Path = PALETTES_DIR) -> dict[str, Palette]:
    """The palettes of `folder`, read once (when the studio builds its page): name -> palette."""
    return load_palettes(Path(folder))


# ---- text and photos ----------------------------------------------------------------------------------------------
def parse_palettes(text: str, what: str = "custom_palettes", default_name: str = "Custom") -> list[Palette]:
    """Palettes written as text, one per line (or separated by ';'): `Name: #hex #hex ...` (the name may be left
    out). Every colour must be `#RRGGBB` (or `RRGGBB`); a `RequestError` names the line and the token."""
    palettes: list[Palette] = []
    for number, line in enumerate(_entries(text), start=1):
        name, colours = _split_name(line, f"{default_name} {number}")
        tokens = [token for token in re.split(r"[\s,]+", colours) if token]
        where = f"{what}, palette {number} ({name})"
        if (problem := name_problem(name, MAX_NAME_CHARS)) is not None:
            raise RequestError(f"{where}: the name {problem}.")
        colors: list[RGB] = []
        for token in tokens:
            color = parse_hex(token)
            if color is None:
                raise RequestError(f"{where}: {token!r} is not a hex colour; write #RRGGBB, e.g. #2E6B4F.")
            if color in colors:
                raise RequestError(f"{where}: {to_hex(color)} is listed twice.")
            colors.append(color)
        if not MIN_COLORS <= len(colors) <= MAX_COLORS:
            raise RequestError(f"{where}: a palette needs {MIN_COLORS} to {MAX_COLORS} colours; it has {len(colors)}.")
        palettes.append(Palette(name=name, colors=tuple(colors)))
    return palettes


def _entries(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[;\n]", text or "") if part.strip()]


def _split_name(entry: str, default: str) -> tuple[str, str]:
    """`Name: rest` -> (Name, rest); an entry without a name gets `default`."""
    head, colon, rest = entry.partition(":")
    return (head.strip(), rest) if colon else (default, entry)


def from_image(image: Image.Image, count: int, name: str = "Mood photo") -> Palette:
    """The `count` main colours of a photo (most of the picture first): the Textile colourway step on a thumbnail."""
    small = image.convert("RGB")
    small.thumbnail((256, 256), Image.Resampling.BOX)
    colors = list(dict.fromkeys(patterns.colourway(small, count).palette))
    if len(colors) < MIN_COLORS:
        raise RequestError(f"The {name.lower()} has only one colour; a palette needs at least {MIN_COLORS}.")
    return Palette(name=name, colors=tuple(colors))
