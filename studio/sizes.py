"""Output sizes a fashion designer picks by shape: each shape snapped to the model's native area (so a portrait on
a 768 px model has about as many pixels as 768x768) and to multiples of 8."""

from __future__ import annotations

import math

# key -> (label, width ratio, height ratio); a garment on a body is a tall picture, so portrait comes first
SHAPES: dict[str, tuple[str, int, int]] = {
    "portrait_2_3": ("Portrait 2:3 (full body)", 2, 3),
    "portrait_3_4": ("Portrait 3:4", 3, 4),
    "square": ("Square 1:1", 1, 1),
    "landscape_4_3": ("Landscape 4:3", 4, 3),
    "landscape_3_2": ("Landscape 3:2", 3, 2),
}
DEFAULT_SHAPE = "portrait_2_3"


def snapped(native: int, shape: str, minimum: int = 64, multiple: int = 8) -> tuple[int, int]:
    """(width, height) of `shape` with about native x native pixels, each side a multiple of `multiple`."""
    _, across, up = SHAPES[shape]
    width = math.sqrt(native * native * across / up)
    height = width * up / across
    return (max(minimum, round(width / multiple) * multiple), max(minimum, round(height / multiple) * multiple))
