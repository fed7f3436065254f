"""Repeat prints as pictures: laying tiles out by repeat, seams, print size at a DPI, colourways. Pure PIL/numpy.

The repeat names and their geometry are those of `studio.tiling` (full, half_drop, brick, x, y); arrays here are
(H, W, ...) unless `axes` says where the height and width axes are.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from studio.tiling import check_repeat, wraps

CM_PER_INCH = 2.54
UNITS = ("cm", "in")
MAX_PRINT_PIXELS = 64_000_000  # what `studio.images` lets PIL open; a print file bigger than that is refused


# ---- geometry ---------------------------------------------------------------------------------------------------
def plane(tile: np.ndarray, repeat: str, rows: int, cols: int) -> np.ndarray:
    """`rows` x `cols` tiles laid out by `repeat` (a crop of the infinite print, starting at the tile itself)."""
    check_repeat(repeat)
    height, width = tile.shape[:2]

    def block(row: int, col: int) -> np.ndarray:
        if repeat == "half_drop":  # column `col` is dropped by col half-tiles
            return np.roll(tile, col * (height // 2), axis=0)
        if repeat == "brick":  # row `row` is shifted across by row half-tiles
            return np.roll(tile, row * (width // 2), axis=1)
        return tile

    return np.concatenate([np.concatenate([block(r, c) for c in range(cols)], axis=1) for r in range(rows)], axis=0)


def translate(array: np.ndarray, dy: int, dx: int, repeat: str, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """The tile seen after the whole print moves down by `dy` and right by `dx` (pixels of `array`).

    For full/x/y this is a plain roll; for half-drop the columns that wrap in across the side edge come in
    dropped by half a tile (brick: the rows that wrap in over the top/bottom edge come in shifted by half).
    A generator that wraps by `repeat` satisfies G(translate(z)) == translate(G(z)).
    """
    check_repeat(repeat)
    y_axis, x_axis = axes
    if repeat == "half_drop":
        return np.roll(_shift_dropped(array, dx, x_axis, y_axis), dy, y_axis)
    if repeat == "brick":
        return np.roll(_shift_dropped(array, dy, y_axis, x_axis), dx, x_axis)
    return np.roll(np.roll(array, dy, y_axis), dx, x_axis)


def _shift_dropped(array: np.ndarray, shift: int, axis: int, drop_axis: int) -> np.ndarray:
    size, half = array.shape[axis], array.shape[drop_axis] // 2
    turns, shift = divmod(shift, size)
    array = np.roll(array, -turns * half, drop_axis)  # moving a whole tile across = half a tile along
    rolled = np.roll(array, shift, axis)
    dropped = np.roll(rolled, -half, drop_axis)
    return np.concatenate([np.take(dropped, range(shift), axis), np.take(rolled, range(shift, size), axis)], axis)


def plane_index(height: int, width: int, ys: np.ndarray, xs: np.ndarray, repeat: str | None) -> np.ndarray:
    """Flat indices into a (height, width) tile of the print's points (ys[i], xs[j]), laid out as `plane` lays
    the repeat out (tile (0, 0) at the origin): an array of shape (len(ys), len(xs)). Points may lie outside the
    tile along the axes `repeat` wraps; with `repeat` None (no repeat) they must lie inside."""
    rows, cols = np.asarray(ys)[:, None], np.asarray(xs)[None, :]
    if repeat is not None:
        check_repeat(repeat)
        wrap_x, wrap_y = wraps(repeat)
        if repeat == "half_drop":  # tile column c is the tile rolled down by c half-tiles
            rows = rows - np.floor_divide(cols, width) * (height // 2)
        if repeat == "brick":  # tile row r is the tile shifted across by r half-tiles
            cols = cols - np.floor_divide(rows, height) * (width // 2)
        rows, cols = (np.mod(rows, height) if wrap_y else rows), (np.mod(cols, width) if wrap_x else cols)
    if rows.min() < 0 or rows.max() >= height or cols.min() < 0 or cols.max() >= width:
        raise ValueError(f"Points outside a {width}x{height} tile along an axis the {repeat} repeat does not wrap.")
    return rows * width + cols


def take(array: np.ndarray, ys: np.ndarray, xs: np.ndarray, repeat: str | None) -> np.ndarray:
    """The print's pixels at (ys x xs) (see `plane_index`); `array` is (H, W, ...)."""
    height, width = array.shape[:2]
    flat = array.reshape(height * width, *array.shape[2:])
    return flat[plane_index(height, width, ys, xs, repeat)]


def pad_wrapped(array: np.ndarray, margin: int, repeat: str | None) -> tuple[np.ndarray, int, int]:
    """The tile with `margin` pixels of the print around it on each axis the repeat wraps (none on the others):
    (padded array, top margin, left margin)."""
    wrap_x, wrap_y = wraps(repeat) if repeat is not None else (False, False)
    top, left = (margin if wrap_y else 0), (margin if wrap_x else 0)
    if not (top or left):
        return array, 0, 0
    height, width = array.shape[:2]
    ys, xs = np.arange(-top, height + top), np.arange(-left, width + left)
    return take(array, ys, xs, repeat), top, left


def surroundings(tile: np.ndarray, repeat: str) -> np.ndarray:
    """The print around `tile`: 3 x 3 tiles (1 x 3 or 3 x 1 for one axis) with `tile` itself in the middle."""
    height, width = tile.shape[:2]
    wrap_x, wrap_y = wraps(repeat)
    moved = translate(tile, height * wrap_y, width * wrap_x, repeat)  # the print's origin moves to the middle
    return plane(moved, repeat, rows=3 if wrap_y else 1, cols=3 if wrap_x else 1)


def preview(tile: Image.Image, repeat: str) -> Image.Image:
    """3 x 3 tiles laid out by the repeat (3 x 1 or 1 x 3 for single-axis repeats)."""
    wrap_x, wrap_y = wraps(repeat)
    array = plane(np.asarray(tile.convert("RGB")), repeat, rows=3 if wrap_y else 1, cols=3 if wrap_x else 1)
    return Image.fromarray(array)


# ---- seams ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeamSteps:
    """Mean absolute pixel step (0-255 levels) across the repeat's wrap edges and between neighbours inside."""

    seam: float
    interior: float


def seam_steps(tile: Image.Image | np.ndarray, repeat: str, axes: str = "xy") -> SeamSteps:
    """Steps across the wrap edges of `repeat` versus steps inside the tile, in the same directions.

    `axes` limits the directions: "x" looks across the side edges (steps along x), "y" across top/bottom.
    """
    array = _levels(tile)
    height, width = array.shape[:2]
    wrap_x, wrap_y = wraps(repeat)
    seams: list[np.ndarray] = []
    inside: list[np.ndarray] = []
    if wrap_x and "x" in axes:
        across = plane(array, repeat, rows=1, cols=2)
        seams.append(np.abs(across[:, width] - across[:, width - 1]))
        inside.append(np.abs(np.diff(array, axis=1)))
    if wrap_y and "y" in axes:
        down = plane(array, repeat, rows=2, cols=1)
        seams.append(np.abs(down[height] - down[height - 1]))
        inside.append(np.abs(np.diff(array, axis=0)))
    if not seams:
        raise ValueError(f"A {repeat} repeat has no wrap edge along {axes!r}.")
    return SeamSteps(
        seam=float(np.concatenate([s.ravel() for s in seams]).mean()),
        interior=float(np.concatenate([s.ravel() for s in inside]).mean()),
    )


def line_step(tile: Image.Image | np.ndarray, axis: str, index: int) -> float:
    """Mean step between pixel column (axis "x") or row ("y") `index - 1` and `index` inside the tile."""
    array = _levels(tile)
    if axis == "x":
        return float(np.abs(array[:, index] - array[:, index - 1]).mean())
    return float(np.abs(array[index] - array[index - 1]).mean())


def _levels(tile: Image.Image | np.ndarray) -> np.ndarray:
    return np.asarray(tile.convert("RGB") if isinstance(tile, Image.Image) else tile).astype(np.float64)


# ---- print size ---------------------------------------------------------------------------------------------------
def print_pixels(physical: float, unit: str, dpi: int) -> int:
    """Pixels for a physical length at a DPI."""
    if unit not in UNITS:
        raise ValueError(f"Unknown unit {unit!r}; use 'cm' or 'in'.")
    inches = physical / CM_PER_INCH if unit == "cm" else physical
    return max(1, round(inches * dpi))


def physical_length(pixels: int, unit: str, dpi: int) -> float:
    inches = pixels / dpi
    return inches * CM_PER_INCH if unit == "cm" else inches


def resize_tile(tile: Image.Image, size: tuple[int, int], repeat: str) -> Image.Image:
    """Resample a tile to `size` and keep it seamless: the filter reads across the edges into the neighbours.

    Only a margin as wide as Lanczos' reach (3 source pixels, times the reduction when shrinking) is laid around
    the tile, not whole neighbour tiles: a 3,072 px tile costs a few percent more memory, not nine times."""
    if tile.size == size:
        return tile.copy()
    reach = max(tile.width / size[0], tile.height / size[1], 1.0)
    around, top, left = pad_wrapped(np.asarray(tile.convert("RGB")), int(np.ceil(3 * reach)) + 2, repeat)
    box = (left, top, left + tile.width, top + tile.height)
    return Image.fromarray(around).resize(size, Image.Resampling.LANCZOS, box=box)


# ---- download names -------------------------------------------------------------------------------------------------
REPEAT_SLUGS = {"full": "fulldrop", "half_drop": "halfdrop", "brick": "brick", "x": "border-x", "y": "border-y"}
SLUG_WORDS, SLUG_CHARS = 3, 32
SLUG_SKIPS = frozenset({"a", "an", "and", "the", "of", "with", "in", "on", "for", "to", "seamless"})


def slug(text: str, words: int = SLUG_WORDS, limit: int = SLUG_CHARS, fallback: str = "print") -> str:
    """The first words of `text` as [a-z0-9-] (accents folded, everything else a separator), at most `limit`
    characters: part of a file's download name, never a path."""
    import unicodedata

    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").lower()
    parts = [part for part in re.split(r"[^a-z0-9]+", folded) if part and part not in SLUG_SKIPS][:words]
    return "-".join(parts)[:limit].strip("-") or fallback


def print_name(prompt: str, repeat: str, physical: tuple[float, float], unit: str, dpi: int) -> str:
    """`florals-halfdrop-30x30cm-300dpi`: what a print file is, from the prompt's first words, the repeat, the
    tile's physical size and the DPI."""
    size = "x".join(f"{round(length, 1):g}".replace(".", "p") for length in physical)
    return f"{slug(prompt)}-{REPEAT_SLUGS[repeat]}-{size}{unit}-{dpi}dpi"


# ---- colourways ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Colourway:
    image: Image.Image  # RGB, every pixel one of `palette`
    palette: list[tuple[int, int, int]]  # most used first

    @property
    def hex(self) -> list[str]:
        return [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in self.palette]


def colourway(tile: Image.Image, colors: int) -> Colourway:
    """Reduce to `colors` spot colours (PIL median cut refined by k-means, no dithering, so seams stay seamless).

    The palette has exactly `colors` entries whenever the tile holds at least that many distinct colours.
    """
    rgb = tile.convert("RGB")
    reduced = rgb.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, kmeans=4, dither=Image.Dither.NONE)
    raw = reduced.getpalette() or []
    counts = sorted(reduced.getcolors(colors) or [], reverse=True)  # (count, palette index), most used first
    # A "P" image's colours are palette indices (ints); PIL types getcolors for every mode at once.
    palette = [(raw[3 * i], raw[3 * i + 1], raw[3 * i + 2]) for _, i in counts if isinstance(i, int)]
    return Colourway(image=reduced.convert("RGB"), palette=palette)


def swatches(palette: list[tuple[int, int, int]], size: int = 64, per_row: int = 8) -> Image.Image:
    """The palette as a strip of square swatches (wrapping after `per_row`)."""
    rows = max(1, -(-len(palette) // per_row))
    cols = min(per_row, max(1, len(palette)))
    sheet = Image.new("RGB", (cols * size, rows * size), (255, 255, 255))
    for index, colour in enumerate(palette):
        row, col = divmod(index, per_row)
        sheet.paste(colour, (col * size, row * size, (col + 1) * size, (row + 1) * size))
    return sheet
