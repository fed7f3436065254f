"""Repeat prints as pictures: laying tiles out by repeat, seams, print size at a DPI, colourways. Pure PIL/numpy.

The repeat names and their geometry are those of `studio.tiling` (full, half_drop, brick, x, y); arrays here are
(H, W, ...) unless `axes` says where the height and width axes are.
"""

from __future__ import annotations

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
    """Resample a tile to `size` and keep it seamless: the filter reads across the edges into the neighbours."""
    if tile.size == size:
        return tile.copy()
    around = Image.fromarray(surroundings(np.asarray(tile.convert("RGB")), repeat))
    wrap_x, wrap_y = wraps(repeat)
    left, top = (tile.width if wrap_x else 0), (tile.height if wrap_y else 0)
    return around.resize(size, Image.Resampling.LANCZOS, box=(left, top, left + tile.width, top + tile.height))


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
