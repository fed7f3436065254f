"""Colourways: one print, recoloured into a season's palettes, still seamless, exported for the mill. No GPU.

The tile is separated into N spot colours (Textile's colourway step, `patterns.colourway`; a tile that already
holds at most N colours keeps them exactly) as a spot index per pixel. Each colourway gives every spot colour one
new colour:
- **to a palette**: each spot colour in turn, the most used first, takes the nearest palette colour that no spot
  colour has taken yet, by CIEDE2000 (`assign`); with *keep light/dark order*, only the choices that keep the
  spots' lightness order stay open. A palette with fewer colours than the print's spot colours is refused, or with
  *merge*, the closest spot colours are merged (CIEDE2000, pixel-weighted) until they fit;
- **as picked** (`mappings`: `Name: #spot>#new, ...`), spot colours not named keeping their own.
The new colours are looked up per pixel through the spot index, so the mapping is exact: pixel counts per colour
are the source's per spot colour, and a seamless tile stays seamless in its repeat (the lookup commutes with any
move of pixels, the repeat's rolls included). Each colourway is saved as the tile and as a print-size PNG with its
DPI (each pixel of the print exactly one spot's colour: the spot masks are resampled across the repeat's edges and
the strongest wins), with a palette listing (hex, RGB, the palette's colour names); a sheet shows every colourway
as a repeat preview side by side. Metadata records the source tile (name and pixel hash) and the mapping, so a
colourway is reproduced from the source tile and its PNG (restored into the tab). It never takes the GPU lock.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from skimage.color import deltaE_ciede2000, rgb2lab

from studio import palettes, patterns, tiling
from studio.engine.checks import RequestError, check_range
from studio.engine.contract import Cancelled, Generated, Job, Result, Studio
from studio.engine.saving import save_image
from studio.engine.textile import TextileRequest, print_size, tile_dpi
from studio.images import ImageInputError, load_image, open_upload
from studio.metadata import parse_infotext, read_parameters
from studio.palettes import RGB, Palette, parse_hex, to_hex
from studio.settings import Limits

MIN_COLORS, MAX_COLORS = 2, 16  # spot colours a print is separated into
MAX_COLOURWAYS = 12  # per run, the original included
MAX_TEXT_CHARS = 8000
AUTO, NO_REPEAT = "auto", "none"
REPEAT_CHOICES = (AUTO, *tiling.REPEATS, NO_REPEAT)
ORIGINAL = "Original"
KEPT, NEAREST = "light/dark kept", "nearest"  # the infotext's `Colour order`
_PAIR = re.compile(r"(\S+?)\s*(?:->|>|→)\s*(\S+)")


@dataclass(frozen=True)
class ColourwaysRequest:
    image: Any = None  # the print tile: a Textile result (its repeat is read from its metadata) or any image
    colors: int = 6  # spot colours the tile is separated into (2-16)
    palettes: tuple[str, ...] = ()  # palette names (presets/palettes): one colourway each, mapped automatically
    custom_palettes: str = ""  # more palettes as text, one per line: `Name: #hex #hex ...`
    mappings: str = ""  # colourways as picked, one per line: `Name: #spot>#new, #spot>#new`
    mood_image: Any = None  # a mood photo: its `mood_colors` main colours are one more palette
    mood_colors: int = 6
    keep_order: bool = False  # keep the spots' light/dark order when mapping to a palette
    merge: bool = False  # a palette with fewer colours than spot colours: merge the closest spot colours
    include_original: bool = True  # the separated original is the first colourway
    repeat: str = AUTO  # auto: the tile's recorded repeat (none for an image that records none)
    dpi: int = 300
    physical_width: float = 0.0  # print size of one tile in `unit`; 0: follows the other side, or the tile's px
    physical_height: float = 0.0
    unit: str = "cm"


@dataclass(frozen=True)
class Spots:
    """A tile separated into spot colours: the spot of every pixel and the spot colours, most used first."""

    index: np.ndarray  # (H, W) uint8: spot per pixel
    colors: tuple[RGB, ...]
    counts: tuple[int, ...]

    @property
    def hex(self) -> list[str]:
        return [to_hex(color) for color in self.colors]

    def image(self, targets: Sequence[RGB] | None = None) -> Image.Image:
        """Every pixel in its spot's new colour (`targets`, one per spot), or in the spot colour itself."""
        lookup = np.asarray(targets if targets is not None else self.colors, dtype=np.uint8)
        return Image.fromarray(lookup[self.index], "RGB")


@dataclass(frozen=True)
class ColourMap:
    """One colourway: the new colour of each spot colour (in the spots' order)."""

    name: str
    targets: tuple[RGB, ...]
    names: tuple[str, ...]  # the palette's name of each target ("" when it has none)
    palette: str  # where the colours came from: a palette's name, "picked" or "original"


@dataclass(frozen=True)
class Source:
    image: Image.Image  # RGB
    name: str  # the file's name ("uploaded image" when it came without one)
    digest: str  # 10 hex of sha256 over its size and RGB pixels
    prompt: str = ""  # the source's own prompt and seed, when its metadata records them
    negative_prompt: str = ""
    seed: int = -1
    repeat: str | None = None  # the repeat recorded in its metadata


@dataclass
class ColourwayExport:
    colourway: ColourMap
    tile: Generated
    print_file: Path  # at physical size x DPI (the tile's own file when no resizing was needed)
    listing: Path


@dataclass
class ColourwaysResult(Result):
    exports: list[ColourwayExport] = field(default_factory=list)
    sheet: Path | None = None
    listing: str = ""  # every colourway's palette listing
    listing_file: Path | None = None
    spots: list[str] = field(default_factory=list)  # the source's spot colours, hex
    repeat: str = NO_REPEAT
    notes: list[str] = field(default_factory=list)


# ---- checks -------------------------------------------------------------------------------------------------------
def check_request(req: ColourwaysRequest, limits: Limits) -> None:
    if req.image is None:
        raise RequestError("No tile given: upload a print tile, or send a Textile result here.")
    check_colors("colors", req.colors)
    if req.mood_image is not None:
        check_colors("mood_colors", req.mood_colors)
    if req.repeat not in REPEAT_CHOICES:
        raise RequestError(f"Unknown repeat {req.repeat!r}. Choose one of: {', '.join(REPEAT_CHOICES)}.")
    if not all(isinstance(name, str) for name in req.palettes):
        raise RequestError("palettes must be a list of palette names.")
    for name in ("custom_palettes", "mappings"):
        if len(getattr(req, name) or "") > MAX_TEXT_CHARS:
            raise RequestError(f"{name} is longer than {MAX_TEXT_CHARS} characters.")
    check_range("dpi", req.dpi, 36, 2400)
    if req.unit not in patterns.UNITS:
        raise RequestError(f"Unit must be 'cm' or 'in'; got {req.unit!r}.")
    check_range("physical_width", req.physical_width, 0, 1000)
    check_range("physical_height", req.physical_height, 0, 1000)


def check_colors(name: str, value: int) -> None:
    if not MIN_COLORS <= value <= MAX_COLORS:
        raise RequestError(
            f"{name} must be between {MIN_COLORS} and {MAX_COLORS} spot colours; got {value}. Prints are separated "
            f"into {MIN_COLORS} to {MAX_COLORS} colours."
        )


def mappings_problem(value: Any) -> str | None:
    """What is wrong with a `mappings` text, read without a tile (presets, PNG restore); None when it reads."""
    if not isinstance(value, str):
        return f"must be a string; got {value!r}"
    try:
        for number, entry in enumerate(_entries(value), start=1):
            _read_pairs(entry, f"mappings, colourway {number}")
    except RequestError as exc:
        return str(exc)
    return None


def palette_names(known: Sequence[str]) -> Any:
    """A field check: a list of the library's palette names."""

    def check(value: Any) -> str | None:
        if not isinstance(value, list | tuple) or not all(isinstance(name, str) for name in value):
            return f"must be a list of palette names; got {value!r}"
        unknown = [name for name in value if name not in known]
        if unknown:
            return f"unknown palette(s) {', '.join(map(repr, unknown))}; choose from {', '.join(known)}"
        return None

    return check


# ---- separation and colour distance ---------------------------------------------------------------------------------
def separate(tile: Image.Image, colors: int) -> Spots:
    """The tile in at most `colors` spot colours: its own colours when it has no more than that, else Textile's
    colourway step (median cut refined by k-means, no dithering: every pixel's spot depends on its colour alone)."""
    rgb = tile.convert("RGB")
    if rgb.getcolors(colors) is not None:  # None: more than `colors` colours (PIL counts them without a sort)
        return _spots(np.asarray(rgb))
    return _spots(np.asarray(patterns.colourway(rgb, colors).image.convert("RGB")))


def _spots(pixels: np.ndarray) -> Spots:
    packed = (pixels[..., 0].astype(np.uint32) << 16) | (pixels[..., 1].astype(np.uint32) << 8) | pixels[..., 2]
    values, inverse, counts = np.unique(packed.ravel(), return_inverse=True, return_counts=True)
    order = np.lexsort((values, -counts))  # most used first; equal counts by colour value
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    dtype = np.uint8 if len(values) <= 256 else np.int64
    index = rank[inverse].reshape(pixels.shape[:2]).astype(dtype)
    colors = tuple((int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255) for v in values[order])
    return Spots(index=index, colors=colors, counts=tuple(int(c) for c in counts[order]))


def to_lab(colors: Sequence[RGB]) -> np.ndarray:
    """(n, 3) CIELAB (D65) of RGB colours."""
    return np.asarray(rgb2lab(np.asarray(colors, dtype=np.float64).reshape(1, -1, 3) / 255.0)[0])


def delta_e(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """CIEDE2000 between every row of `a` and every row of `b` (Lab): an (len(a), len(b)) matrix."""
    return np.asarray(deltaE_ciede2000(a[:, None, :], b[None, :, :]))


def assign(spots: Sequence[RGB], palette: Sequence[RGB], keep_order: bool = False) -> list[int]:
    """The palette colour (its index) of each spot colour, for spot colours given most used first."""
    return assign_lab(to_lab(spots), to_lab(palette), keep_order)


def assign_lab(spots: np.ndarray, palette: np.ndarray, keep_order: bool = False) -> list[int]:
    """Nearest unused, by CIEDE2000: each spot colour in turn takes the nearest palette colour no earlier spot colour
    took (equal distances: the earlier palette colour). With `keep_order`, a spot colour may only take a palette
    colour that keeps the light/dark order (a lighter spot colour gets a lighter palette colour, lightness L*,
    equal L* by position) and leaves enough palette colours on each side for the spot colours still to come."""
    n, k = len(spots), len(palette)
    if k < n:
        raise ValueError(f"{k} palette colours cannot take {n} spot colours one each")
    distances = delta_e(spots, palette)
    taken: dict[int, int] = {}  # spot -> palette index
    if not keep_order:
        for i in range(n):
            free = [j for j in range(k) if j not in taken.values()]
            taken[i] = min(free, key=lambda j: (distances[i, j], j))
        return [taken[i] for i in range(n)]
    spot_rank = _ranks(spots[:, 0])
    palette_rank = _ranks(palette[:, 0])
    by_rank = {rank: j for j, rank in enumerate(palette_rank)}
    placed: dict[int, int] = {}  # spot rank -> palette rank
    for i in range(n):
        rank = spot_rank[i]
        below = max((r for r in placed if r < rank), default=-1)
        above = min((r for r in placed if r > rank), default=n)
        low = placed.get(below, -1)
        high = placed.get(above, k)
        # room for the spots between `below` and this one, and between this one and `above`
        open_ranks = [p for p in range(low + 1, high) if p - low >= rank - below and high - p >= above - rank]
        chosen = min(open_ranks, key=lambda p: (distances[i, by_rank[p]], by_rank[p]))
        placed[rank] = chosen
        taken[i] = by_rank[chosen]
    return [taken[i] for i in range(n)]


def _ranks(values: np.ndarray) -> list[int]:
    """Each value's position from darkest to lightest (equal values by their position)."""
    order = sorted(range(len(values)), key=lambda i: (float(values[i]), i))
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def merge_spots(spots: np.ndarray, counts: Sequence[int], groups: int) -> list[int]:
    """Merge the closest spot colours (Lab, CIEDE2000 between pixel-weighted means) until `groups` remain; the group
    of each spot colour, groups numbered by pixel count (most used first)."""
    members = [[i] for i in range(len(spots))]
    while len(members) > groups:
        means = np.stack([_mean(spots, counts, m) for m in members])
        distances = delta_e(means, means)
        np.fill_diagonal(distances, np.inf)
        a, b = np.unravel_index(int(np.argmin(distances)), distances.shape)
        a, b = min(a, b), max(a, b)
        members[a] += members.pop(b)
    members.sort(key=lambda m: (-sum(counts[i] for i in m), min(m)))
    group = [0] * len(spots)
    for number, m in enumerate(members):
        for i in m:
            group[i] = number
    return group


def _mean(spots: np.ndarray, counts: Sequence[int], members: list[int]) -> np.ndarray:
    weights = np.asarray([counts[i] for i in members], dtype=np.float64)
    return np.asarray((spots[members] * weights[:, None]).sum(0) / weights.sum())


def to_palette(spots: Spots, palette: Palette, keep_order: bool, merge: bool, name: str | None = None) -> ColourMap:
    """The colourway of `palette`: each spot colour to its palette colour (`assign_lab`)."""
    n, k = len(spots.colors), len(palette.colors)
    spot_lab, palette_lab = to_lab(spots.colors), to_lab(palette.colors)
    if k >= n:
        chosen = assign_lab(spot_lab, palette_lab, keep_order)
    elif merge:
        group = merge_spots(spot_lab, spots.counts, k)
        means = np.stack([_mean(spot_lab, spots.counts, [i for i in range(n) if group[i] == g]) for g in range(k)])
        per_group = assign_lab(means, palette_lab, keep_order)
        chosen = [per_group[group[i]] for i in range(n)]
    else:
        raise RequestError(
            f"The palette {palette.name!r} has {k} colours, but the print is separated into {n} spot colours. "
            f"Separate it into {k} spot colours, or tick 'Merge spot colours' (merge=True) to let the closest spot "
            "colours share a palette colour."
        )
    return ColourMap(
        name=name or palette.name,
        targets=tuple(palette.colors[j] for j in chosen),
        names=tuple(palette.name_of(j) for j in chosen),
        palette=palette.name,
    )


# ---- picked mappings ------------------------------------------------------------------------------------------------
def _entries(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[;\n]", text or "") if part.strip()]


def _read_pairs(entry: str, where: str) -> tuple[str | None, list[tuple[RGB, RGB]]]:
    head, colon, rest = entry.partition(":")
    name, body = (head.strip(), rest) if colon else (None, entry)
    if name is not None and (problem := palettes.name_problem(name, palettes.MAX_NAME_CHARS)) is not None:
        raise RequestError(f"{where}: the name {problem}.")
    pairs: list[tuple[RGB, RGB]] = []
    for token in (t.strip() for t in body.split(",")):
        if not token:
            continue
        match = _PAIR.fullmatch(token)
        if match is None:
            raise RequestError(f"{where}: {token!r} is not a pair '#spot>#new' (hex colours, #RRGGBB).")
        spot, new = (_hex(part, where) for part in match.groups())
        pairs.append((spot, new))
    if not pairs:
        raise RequestError(f"{where}: no '#spot>#new' pair.")
    return name, pairs


def _hex(text: str, where: str) -> RGB:
    color = parse_hex(text)
    if color is None:
        raise RequestError(f"{where}: {text!r} is not a hex colour; write #RRGGBB, e.g. #2E6B4F.")
    return color


def parse_mappings(text: str, spots: Spots, merge: bool = False) -> list[ColourMap]:
    """Colourways picked by hand: one per line (or ';'), `Name: #spot>#new, ...`; spot colours not named keep their
    colour. Each `#spot` must be one of the print's spot colours; two spot colours may share a new colour only with
    `merge`."""
    maps = []
    for number, entry in enumerate(_entries(text), start=1):
        where = f"mappings, colourway {number}"
        name, pairs = _read_pairs(entry, where)
        targets = list(spots.colors)
        named: set[RGB] = set()
        for spot, new in pairs:
            if spot not in spots.colors:
                raise RequestError(
                    f"{where}: {to_hex(spot)} is not one of the print's {len(spots.colors)} spot colours "
                    f"({' '.join(spots.hex)})."
                )
            if spot in named:
                raise RequestError(f"{where}: {to_hex(spot)} is mapped twice.")
            named.add(spot)
            targets[spots.colors.index(spot)] = new
        if not merge and len(set(targets)) < len(targets):
            shared = next(t for t in targets if targets.count(t) > 1)
            sources = [to_hex(s) for s, t in zip(spots.colors, targets, strict=True) if t == shared]
            raise RequestError(
                f"{where}: {' and '.join(sources)} would both become {to_hex(shared)}; give each spot colour its own "
                "colour, or tick 'Merge spot colours' (merge=True) to let them share one."
            )
        maps.append(ColourMap(name or f"Picked {number}", tuple(targets), ("",) * len(targets), "picked"))
    return maps


def format_mapping(colourway: ColourMap, spots: Spots) -> str:
    """`Name: #spot>#new, ...` over every spot colour: `parse_mappings` reads it back to the same colourway."""
    pairs = ", ".join(f"{to_hex(s)}>{to_hex(t)}" for s, t in zip(spots.colors, colourway.targets, strict=True))
    return f"{colourway.name}: {pairs}"


def identity(spots: Spots) -> ColourMap:
    return ColourMap(ORIGINAL, spots.colors, ("",) * len(spots.colors), "original")


# ---- the source ---------------------------------------------------------------------------------------------------
def load_source(studio: Studio, value: Any) -> Source:
    """The tile, upright RGB, with what its metadata says of it (prompt, seed, repeat)."""
    try:
        image = load_image(value, studio.limits.max_pixels * 4, what="tile")
        text = read_parameters(open_upload(value, "tile"))
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None
    digest = hashlib.sha256(f"{image.width}x{image.height}:".encode() + image.tobytes()).hexdigest()[:10]
    name = Path(value).name[:120] if isinstance(value, str | Path) else "uploaded image"
    if not text:
        return Source(image, name, digest)
    info = parse_infotext(text)
    seed = info.params.get("Seed", "").strip()
    recorded = info.params.get("Repeat", "").strip()
    return Source(
        image,
        name,
        digest,
        prompt=info.prompt,
        negative_prompt=info.negative_prompt,
        seed=int(seed) if seed.lstrip("-").isdigit() else -1,
        repeat=recorded if recorded in (*tiling.REPEATS, NO_REPEAT) else None,
    )


def resolve_repeat(req: ColourwaysRequest, source: Source) -> tuple[str, list[str]]:
    """The repeat to preview and resample by, and a note when an image records none."""
    repeat = req.repeat
    notes = []
    if repeat == AUTO:
        repeat = source.repeat or NO_REPEAT
        if source.repeat is None:
            notes.append(
                "This image records no repeat (it is not a tile of the studio): it is recoloured as it is, with no "
                "repeat assumed. Choose a repeat to preview and print it as one."
            )
    width, height = source.image.size
    if repeat == "half_drop" and height % 2:
        raise RequestError(f"A half-drop repeat needs an even tile height; this tile is {width}x{height} px.")
    if repeat == "brick" and width % 2:
        raise RequestError(f"A brick repeat needs an even tile width; this tile is {width}x{height} px.")
    return repeat, notes


# ---- the run --------------------------------------------------------------------------------------------------------
def colourways(
    studio: Studio, req: ColourwaysRequest, job: Job | None = None, *, palettes_dir: Path = palettes.PALETTES_DIR
) -> ColourwaysResult:
    """Every colourway the request asks for, saved with its print file, listing and metadata, and the sheet."""
    check_request(req, studio.limits)
    library = palettes.library(palettes_dir)
    source = load_source(studio, req.image)
    repeat, notes = resolve_repeat(req, source)
    sizing = TextileRequest("", physical_width=req.physical_width, physical_height=req.physical_height,
                            unit=req.unit, dpi=req.dpi)  # fmt: skip
    out_size = print_size(sizing, *source.image.size)
    spots = separate(source.image, req.colors)
    if len(spots.colors) < req.colors:
        notes.append(f"The tile holds only {len(spots.colors)} colours: each one is a spot colour.")
    maps = plan(studio, req, spots, library)
    prompts = {"prompt": source.prompt, "negative_prompt": source.negative_prompt}
    common = record(req, source, spots, repeat, out_size)
    exports: list[ColourwayExport] = []
    listings: list[str] = []
    for number, colourway in enumerate(maps):
        if job is not None and job.cancel.is_set():
            raise Cancelled()
        if job is not None and job.on_step is not None:
            job.on_step(number, len(maps))
        params = {**common, "Colourway": colourway.name, "Palette": colourway.palette,
                  "Mapping": format_mapping(colourway, spots)}  # fmt: skip
        tile = save_image(
            studio, spots.image(colourway.targets), prompts, params, "colourways", job,
            dpi=tile_dpi(sizing, source.image.width, out_size),
        )  # fmt: skip
        print_file = tile.path
        printed = tile.image
        if out_size != source.image.size:
            printed = print_image(source.image, spots, colourway.targets, out_size, repeat)
            print_file = save_image(
                studio, printed, prompts, {**params, "Mode": "colourways-print"}, "colourways-print", None, dpi=req.dpi
            ).path
        text = listing(colourway, spots, printed, source, repeat, req)
        listings.append(text)
        exports.append(ColourwayExport(colourway, tile, print_file, studio.outputs.write_text(
            print_file.with_suffix(".txt"), text)))  # fmt: skip
    if job is not None and job.on_step is not None:
        job.on_step(len(maps), len(maps))
    sheet_params = {**common, "Mode": "colourways-sheet", "Colourways": "; ".join(m.name for m in maps),
                    "Mapping": "; ".join(format_mapping(m, spots) for m in maps)}  # fmt: skip
    picture = sheet([(m.name, e.tile.image, m.targets) for m, e in zip(maps, exports, strict=True)], repeat)
    sheet_path = save_image(studio, picture, prompts, sheet_params, "colourways-sheet", None).path
    combined = "\n".join(listings)
    return ColourwaysResult(
        images=[e.tile for e in exports],
        seed=source.seed,
        params={**prompts, **sheet_params},
        exports=exports,
        sheet=sheet_path,
        listing=combined,
        listing_file=studio.outputs.write_text(sheet_path.with_suffix(".txt"), combined),
        spots=spots.hex,
        repeat=repeat,
        notes=notes,
    )


def plan(studio: Studio, req: ColourwaysRequest, spots: Spots, library: dict[str, Palette]) -> list[ColourMap]:
    """The colourways of a request, in order: the original, the library's palettes, the custom ones, the mood photo's,
    the picked ones. Names are made unique."""
    unknown = [name for name in req.palettes if name not in library]
    if unknown:
        choices = ", ".join(library) or "none: this studio has no palettes of its own"
        raise RequestError(f"Unknown palette(s) {', '.join(map(repr, unknown))}; choose from: {choices}.")
    chosen = [library[name] for name in dict.fromkeys(req.palettes)]
    chosen += palettes.parse_palettes(req.custom_palettes)
    if req.mood_image is not None:
        chosen.append(mood_palette(studio, req.mood_image, req.mood_colors))
    maps = [identity(spots)] if req.include_original else []
    maps += [to_palette(spots, palette, req.keep_order, req.merge) for palette in chosen]
    maps += parse_mappings(req.mappings, spots, req.merge)
    if len(maps) == (1 if req.include_original else 0):
        raise RequestError(
            "Nothing to recolour: choose a palette, write your own palette or a mapping, or add a mood photo."
        )
    if len(maps) > MAX_COLOURWAYS:
        raise RequestError(f"{len(maps)} colourways in one run; at most {MAX_COLOURWAYS}. Choose fewer palettes.")
    seen: dict[str, int] = {}
    unique = []
    for colourway in maps:
        seen[colourway.name] = seen.get(colourway.name, 0) + 1
        count = seen[colourway.name]
        unique.append(colourway if count == 1 else ColourMap(f"{colourway.name} ({count})", *_rest(colourway)))
    return unique


def _rest(colourway: ColourMap) -> tuple[tuple[RGB, ...], tuple[str, ...], str]:
    return colourway.targets, colourway.names, colourway.palette


def record(
    req: ColourwaysRequest, source: Source, spots: Spots, repeat: str, out_size: tuple[int, int]
) -> dict[str, Any]:
    """The infotext every file of the run shares: the source tile and how it was separated, repeat and print."""
    physical = [patterns.physical_length(px, req.unit, req.dpi) for px in out_size]
    return {
        "Seed": source.seed,  # the source's (-1: it records none); nothing here is random
        "Size": f"{source.image.width}x{source.image.height}",
        "Mode": "colourways",
        "Colours": req.colors,
        "Spot colours": " ".join(spots.hex),
        "Colour order": KEPT if req.keep_order else NEAREST,
        "Merge spot colours": req.merge,
        "Repeat": repeat,
        "DPI": req.dpi,
        "Print size": f"{physical[0]:.2f}x{physical[1]:.2f} {req.unit}",
        "Print pixels": f"{out_size[0]}x{out_size[1]}",
        "Source": source.name,
        "Source hash": source.digest,
    }


# ---- exports --------------------------------------------------------------------------------------------------------
def print_image(
    source: Image.Image, spots: Spots, targets: Sequence[RGB], size: tuple[int, int], repeat: str
) -> Image.Image:
    """The colourway at print size: each spot's mask is resampled (Lanczos, reading across the repeat's edges), and
    every pixel takes the colour of the strongest spot there. No pixel blends two inks."""
    best = np.full((size[1], size[0]), -np.inf, dtype=np.float32)
    winner = np.zeros((size[1], size[0]), dtype=np.uint8)
    for spot in range(len(spots.colors)):
        mask = (spots.index == spot).astype(np.float32)
        strength = np.asarray(_resample(mask, size, repeat))
        stronger = strength > best
        best[stronger] = strength[stronger]
        winner[stronger] = spot
    return Image.fromarray(np.asarray(targets, dtype=np.uint8)[winner], "RGB")


def _resample(mask: np.ndarray, size: tuple[int, int], repeat: str) -> Image.Image:
    height, width = mask.shape
    if repeat == NO_REPEAT:
        return Image.fromarray(mask, "F").resize(size, Image.Resampling.LANCZOS)
    around = Image.fromarray(np.ascontiguousarray(patterns.surroundings(mask, repeat)), "F")
    wrap_x, wrap_y = tiling.wraps(repeat)
    left, top = (width if wrap_x else 0), (height if wrap_y else 0)
    return around.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + width, top + height))


def listing(
    colourway: ColourMap, spots: Spots, printed: Image.Image, source: Source, repeat: str, req: ColourwaysRequest
) -> str:
    """The colourway's inks for the mill: one line per colour of the print file (hex, RGB, the palette's name, the
    spot colours it replaces, its share of the print)."""
    pixels = np.asarray(printed.convert("RGB")).astype(np.uint32)
    packed, counts = np.unique((pixels[..., 0] << 16) | (pixels[..., 1] << 8) | pixels[..., 2], return_counts=True)
    share = {(int(v >> 16) & 255, int(v >> 8) & 255, int(v) & 255): int(n) for v, n in zip(packed, counts, strict=True)}
    total = int(counts.sum())
    physical = " x ".join(f"{patterns.physical_length(px, req.unit, req.dpi):.2f}" for px in printed.size)
    label = tiling.REPEAT_LABELS.get(repeat, "no repeat")
    lines = [
        f"Colourway: {colourway.name} (colours: {colourway.palette})",
        f"Source: {source.name} (pixels sha256 {source.digest}), {len(spots.colors)} spot colours, {label}",
        f"Print file: {printed.width} x {printed.height} px at {req.dpi} DPI ({physical} {req.unit})",
    ]
    for target in dict.fromkeys(colourway.targets):
        replaced = [to_hex(s) for s, t in zip(spots.colors, colourway.targets, strict=True) if t == target]
        name = next((n for n, t in zip(colourway.names, colourway.targets, strict=True) if t == target and n), "")
        r, g, b = target
        percent = 100 * share.get(target, 0) / total
        lines.append(f"{to_hex(target)}  rgb({r}, {g}, {b})  {name or '-'}  <- {' + '.join(replaced)}  {percent:.1f} %")
    return "\n".join(lines) + "\n"


def sheet(colourways: Sequence[tuple[str, Image.Image, Sequence[RGB]]], repeat: str, cell: int = 360) -> Image.Image:
    """Every colourway as a repeat preview side by side (four to a row), each with its colours and name."""
    font = _font(16)
    swatch, gap, per_row = 22, 16, 4
    label_h = 24
    rows = -(-len(colourways) // per_row)
    cols = min(per_row, len(colourways))
    cell_h = cell + gap // 2 + swatch + label_h
    picture = Image.new("RGB", (gap + cols * (cell + gap), gap + rows * (cell_h + gap)), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    for number, (name, tile, colours) in enumerate(colourways):
        row, col = divmod(number, per_row)
        x, y = gap + col * (cell + gap), gap + row * (cell_h + gap)
        preview = tile if repeat == NO_REPEAT else patterns.preview(tile, repeat)
        preview = preview.copy()
        preview.thumbnail((cell, cell), Image.Resampling.LANCZOS)
        picture.paste(preview, (x + (cell - preview.width) // 2, y + (cell - preview.height) // 2))
        for index, colour in enumerate(dict.fromkeys(colours)):
            left = x + index * (swatch + 2)
            if left + swatch > x + cell:
                break
            top = y + cell + gap // 2
            draw.rectangle((left, top, left + swatch - 1, top + swatch - 1), fill=colour, outline=(200, 200, 200))
        draw.text((x, y + cell + gap // 2 + swatch + 4), name, fill=(30, 30, 30), font=font)
    return picture


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (OSError, ValueError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


# ---- further calls of the tab ---------------------------------------------------------------------------------------
def spot_colours(studio: Studio, image: Any, colors: int) -> Spots:
    """The tile's spot colours for N (what a picked mapping maps from)."""
    check_colors("colors", colors)
    return separate(load_source(studio, image).image, colors)


def mood_palette(studio: Studio, image: Any, colors: int) -> Palette:
    """A palette of the `colors` main colours of a mood photo."""
    check_colors("mood_colors", colors)
    try:
        photo = load_image(image, studio.limits.max_pixels * 4, what="mood photo")
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None
    return palettes.from_image(photo, colors)


def swatches(colors: Sequence[RGB]) -> Image.Image:
    return patterns.swatches(list(colors), size=40, per_row=16)
