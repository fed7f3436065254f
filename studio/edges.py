"""Control maps for Restyle: HED soft edges (plain or "safe"), line art (fine or coarse), canny edges and an
open-pose skeleton through controlnet_aux, or the designer's own sketch.

Pure PIL/numpy around the annotator objects (controlnet_aux's `HEDdetector`, `LineartDetector`,
`OpenposeDetector`; canny is OpenCV and needs none); no model loading happens here.

Two sizes are easy to confuse, so they are kept apart:
- the *output size* (width x height of the generated image): every edge map is finally resized to exactly that,
  because the ControlNet reads its condition at the output's resolution;
- the *preprocessor resolution*: the short side at which HED looks at the picture. Lower sees only the big
  shapes, higher sees fine detail. "Pixel perfect" (the default) sets it to the output's short side, so HED sees
  exactly as many pixels as the ControlNet will.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageOps

PREPROCESSORS = ("hed", "hed_safe", "lineart", "lineart_coarse", "canny", "openpose", "none")
# The names sd-webui-controlnet writes in its infotext, so A1111 reads our PNGs back.
A1111_MODULES = {
    "hed": "softedge_hed",
    "hed_safe": "softedge_hedsafe",
    "lineart": "lineart_realistic",
    "lineart_coarse": "lineart_coarse",
    "canny": "canny",
    "openpose": "openpose",
    "none": "none",
}
CANNY_THRESHOLDS = (100, 200)  # sd-webui-controlnet's and controlnet_aux's defaults (low, high)
BLACK, WHITE = (0, 0, 0), (255, 255, 255)


def transparent_fill(preprocessor: str, invert: bool) -> tuple[int, int, int]:
    """What a transparent pixel means: "no line". On a photo or a dark-on-light sketch that is white paper;
    on an edge map that is already light-on-dark it is black."""
    return BLACK if preprocessor == "none" and not invert else WHITE


def auto_size(image_size: tuple[int, int], native: int, multiple: tuple[int, int] = (8, 8)) -> tuple[int, int]:
    """The input's aspect ratio at the model's native scale (about native x native pixels), each side rounded to
    its `multiple` (width, height)."""
    width, height = image_size
    aspect = width / height
    out_w, out_h = native * aspect**0.5, native / aspect**0.5
    mult_w, mult_h = multiple
    return max(mult_w, round(out_w / mult_w) * mult_w), max(mult_h, round(out_h / mult_h) * mult_h)


def pixel_perfect(width: int, height: int) -> int:
    """The preprocessor resolution that matches the output: its short side (sd-webui-controlnet's pixel perfect
    for crop-and-resize)."""
    return min(width, height)


def fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Crop-and-resize to `size`: scale to cover, cut the overflow evenly (the input's centre is kept)."""
    if image.size == size:
        return image
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def crop_to_aspect(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Cut the input to the output's aspect ratio without resampling it (HED does its own resizing)."""
    width, height = image.size
    target = size[0] / size[1]
    if abs(width / height - target) < 1e-3:
        return image
    if width / height > target:
        new_w = max(1, round(height * target))
        left = (width - new_w) // 2
        return image.crop((left, 0, left + new_w, height))
    new_h = max(1, round(width / target))
    top = (height - new_h) // 2
    return image.crop((0, top, width, top + new_h))


def hed(annotator: Any, image: Image.Image, resolution: int, safe: bool) -> Image.Image:
    """HED soft edges exactly as controlnet_aux computes them (white lines on black, RGB). `safe` quantises the
    edge strengths into a few levels (controlnet_aux's `safe_step`), which drops faint texture lines."""
    return annotator(image, detect_resolution=resolution, image_resolution=resolution, safe=safe, output_type="pil")


def lineart(annotator: Any, image: Image.Image, resolution: int, coarse: bool) -> Image.Image:
    """Line art as controlnet_aux computes it (white lines on black): the fine model, or the coarse one that keeps
    only the main strokes."""
    return annotator(image, coarse=coarse, detect_resolution=resolution, image_resolution=resolution, output_type="pil")


def canny(image: Image.Image, resolution: int, thresholds: tuple[int, int]) -> Image.Image:
    """OpenCV's canny edges exactly as controlnet_aux's `CannyDetector` makes them (no network)."""
    from controlnet_aux import CannyDetector

    low, high = thresholds
    return CannyDetector()(
        image, low_threshold=low, high_threshold=high, detect_resolution=resolution, image_resolution=resolution,
        output_type="pil",
    )  # fmt: skip


def openpose(annotator: Any, image: Image.Image, resolution: int) -> Image.Image:
    """The body's pose skeleton (sd-webui-controlnet's "openpose": body only, no hands or face)."""
    return annotator(
        image, detect_resolution=resolution, image_resolution=resolution, include_body=True, include_hand=False,
        include_face=False, output_type="pil",
    )  # fmt: skip


def sketch(image: Image.Image, invert: bool) -> Image.Image:
    """The designer's own edge map or line sketch: luminance only; `invert` turns dark-on-light into the
    light-on-dark lines the ControlNet was trained on."""
    gray = image.convert("L")
    if invert:
        gray = ImageOps.invert(gray)
    return gray.convert("RGB")


def edge_map(
    annotator: Any,
    image: Image.Image,
    preprocessor: str,
    size: tuple[int, int],
    resolution: int,
    invert: bool,
    thresholds: tuple[int, int] = CANNY_THRESHOLDS,
) -> Image.Image:
    """The ControlNet's condition at exactly the output `size`."""
    if preprocessor == "none":
        return fit(sketch(image, invert), size)
    picture = crop_to_aspect(image, size)
    if preprocessor in ("lineart", "lineart_coarse"):
        return fit(lineart(annotator, picture, resolution, coarse=preprocessor == "lineart_coarse"), size)
    if preprocessor == "canny":
        return fit(canny(picture, resolution, thresholds), size)
    if preprocessor == "openpose":
        return fit(openpose(annotator, picture, resolution), size)
    return fit(hed(annotator, picture, resolution, safe=preprocessor == "hed_safe"), size)


def coverage(edge: Image.Image) -> float:
    """Share of pixels that carry a line (brightness over a quarter): a quick sanity figure for the preview."""
    return float((np.asarray(edge.convert("L")) > 64).mean())
