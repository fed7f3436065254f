"""Inpainting masks, pure PIL: editor values, invert, feather, the "only masked" crop, fill, paste-back.

Masks are mode "L" images the size of the photo, 255 = repaint. The paste-back is the one place the result is
composed: `Image.composite(generated, original, alpha)` returns the original byte for byte wherever the feathered
alpha is 0, so everything outside the mask and its feather band is kept exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageChops, ImageFilter

Box = tuple[int, int, int, int]  # left, top, right, bottom (right/bottom exclusive), as PIL uses them


@dataclass(frozen=True)
class EditorValue:
    """What an image editor hands over: the photo and the brush layers (each layer's alpha is the mask)."""

    background: Any
    layers: list[Any]


def editor_value(value: Any) -> EditorValue | None:
    """Recognise an image-editor value ({"background", "layers", "composite"}); None for a plain image value."""
    if not isinstance(value, dict) or not ({"background", "layers"} & value.keys()):
        return None
    background = value.get("background")
    if background is None:
        background = value.get("composite")
    return EditorValue(
        background=background, layers=[layer for layer in value.get("layers") or [] if layer is not None]
    )


def combine(masks: list[Image.Image]) -> Image.Image:
    """The union of several masks (per-pixel maximum): every brush layer counts."""
    combined = masks[0]
    for mask in masks[1:]:
        combined = ImageChops.lighter(combined, mask)
    return combined


def invert(mask: Image.Image) -> Image.Image:
    """Repaint everything except what was brushed."""
    return ImageChops.invert(mask.convert("L"))


def is_empty(mask: Image.Image) -> bool:
    return mask.getbbox() is None


def feather(mask: Image.Image, blur: float) -> Image.Image:
    """Gaussian-feathered mask (the paste-back alpha). The band it adds is finite: beyond about 3·blur pixels
    from the mask the alpha is exactly 0, so those pixels stay the input's."""
    mask = mask.convert("L")
    return mask.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else mask.copy()


def crop_box(mask: Image.Image, padding: int) -> Box:
    """Bounding box of the mask's non-zero pixels, grown by `padding` on every side and clamped to the image."""
    bbox = mask.getbbox()
    if bbox is None:
        raise ValueError("The mask is empty.")
    left, top, right, bottom = bbox
    return (
        max(0, left - padding),
        max(0, top - padding),
        min(mask.width, right + padding),
        min(mask.height, bottom + padding),
    )


def processing_size(width: int, height: int, native: int, max_side: int) -> tuple[int, int]:
    """A size with the box's aspect, about native² pixels, each side a multiple of 8 (64 … max_side)."""
    scale = native / math.sqrt(width * height)

    def side(value: int) -> int:
        return int(min(max_side, max(64, round(value * scale / 8) * 8)))

    return side(width), side(height)


def fill(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's "fill": the masked area is painted with colours diffused in from around it (blurs of the unmasked
    pixels at shrinking radii, premultiplied so masked pixels carry no weight)."""
    keep = invert(mask.convert("L")).point(lambda v: 255 if v >= 128 else 0)
    known = image.convert("RGBA")
    known.putalpha(keep)
    premultiplied = known.convert("RGBa")
    filled = Image.new("RGBA", image.size, (0, 0, 0, 0))
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = premultiplied.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA") if radius else known
        for _ in range(repeats):
            filled.alpha_composite(blurred)
    opaque = Image.new("RGBA", image.size, (127, 127, 127, 255))  # where nothing is known at all
    opaque.alpha_composite(filled)
    return Image.composite(image.convert("RGB"), opaque.convert("RGB"), keep)


def paste_back(
    original: Image.Image, generated: Image.Image, alpha: Image.Image, box: Box | None = None
) -> Image.Image:
    """Compose the result: `generated` (covering `box`, scaled to it if needed) over `original` through `alpha`."""
    box = box or (0, 0, *original.size)
    size = (box[2] - box[0], box[3] - box[1])
    if generated.size != size:
        generated = generated.resize(size, Image.Resampling.LANCZOS)
    canvas = original.copy()
    canvas.paste(generated.convert("RGB"), box[:2])
    return Image.composite(canvas, original, alpha)
