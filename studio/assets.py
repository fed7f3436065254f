"""Example inputs drawn by the project itself (no third-party photos), for `gr.Examples` and tests.

`python -m studio.assets [folder]` (re)writes them into `assets/`. Every image is 512x512 and deterministic: PIL
shapes drawn at twice the size and box-reduced (integer averaging), numpy textures in integer arithmetic, no random
numbers and no transcendental functions, so the files come out byte-identical on every machine with the same Pillow.

- `dress_sketch.png`       a technical flat of a sleeveless A-line dress: dark lines on white paper (Restyle).
- `twill_swatch.png`       a 2/2 twill weave in navy and cream with a printed dot motif (Textile swatch, Refine).
- `tshirt_flatlay.png`     a teal T-shirt laid flat on a neutral ground with shading and a soft shadow (Inpaint).
- `tshirt_sleeve_mask.png` white over the T-shirt's left sleeve, black elsewhere (Inpaint's mask).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

SIZE = 512
UP = 2  # drawn at UP x SIZE, then box-reduced: anti-aliased edges without floating-point resampling
FOLDER = Path(__file__).resolve().parent.parent / "assets"
FILES = {
    "sketch": "dress_sketch.png",
    "swatch": "twill_swatch.png",
    "flatlay": "tshirt_flatlay.png",
    "mask": "tshirt_sleeve_mask.png",
}

INK, PAPER = (34, 34, 38), (255, 255, 255)
GROUND, SHADOW = (233, 229, 222), (196, 191, 183)
TEE, TEE_INSIDE = (38, 112, 138), (24, 78, 98)
Point = tuple[int, int]


def path(name: str) -> Path:
    """The committed file of an asset: "sketch", "swatch", "flatlay" or "mask"."""
    return FOLDER / FILES[name]


def _scaled(points: list[Point]) -> list[Point]:
    """Coordinates given on the 512 grid, on the drawing canvas."""
    return [(x * UP, y * UP) for x, y in points]


def _curve(start: Point, control: Point, end: Point, steps: int = 24) -> list[Point]:
    """A quadratic Bezier as integer points on the 512 grid (rational arithmetic only)."""
    return [
        (
            (start[0] * (steps - t) ** 2 + 2 * control[0] * (steps - t) * t + end[0] * t * t) // steps**2,
            (start[1] * (steps - t) ** 2 + 2 * control[1] * (steps - t) * t + end[1] * t * t) // steps**2,
        )
        for t in range(steps + 1)
    ]


def _dashed(draw: ImageDraw.ImageDraw, points: list[Point], fill: tuple[int, ...], width: int, every: int = 2) -> None:
    for k in range(0, len(points) - 1, every):
        draw.line(_scaled(points[k : k + 2]), fill=fill, width=width)


# ---- the dress sketch ---------------------------------------------------------------------------------------------
def sketch() -> Image.Image:
    """A technical flat of a sleeveless A-line dress: bodice, princess seams, waist seam, flared skirt, folds."""
    canvas = Image.new("RGB", (SIZE * UP, SIZE * UP), PAPER)
    draw = ImageDraw.Draw(canvas)
    w = 3 * UP
    left = (
        [(226, 34), (206, 34)]
        + _curve((206, 34), (212, 112), (184, 126))
        + _curve((184, 126), (196, 180), (204, 236))
        + _curve((204, 236), (150, 360), (96, 452))
    )
    right = [(SIZE - x, y) for x, y in left]
    hem = _curve((96, 452), (256, 482), (SIZE - 96, 452))
    neck = [(226, 34)] + _curve((226, 34), (232, 110), (256, 142)) + _curve((256, 142), (280, 110), (286, 34))
    for line in (left, right, hem, neck):
        draw.line(_scaled(line), fill=INK, width=w, joint="curve")
    draw.line(_scaled(_curve((206, 236), (256, 246), (306, 236))), fill=INK, width=w)  # waist seam
    for x in (224, 288):  # princess seams
        draw.line(_scaled(_curve((x - (14 if x < 256 else -14), 118), (x, 170), (x, 240))), fill=INK, width=2 * UP)
    for x0, x1 in ((226, 196), (256, 256), (286, 316)):  # skirt folds
        draw.line(_scaled(_curve((x0, 250), ((x0 + x1) // 2, 360), (x1, 462))), fill=INK, width=UP)
    _dashed(draw, _curve((104, 440), (256, 468), (SIZE - 104, 440)), INK, UP)  # hem topstitch
    return canvas.reduce(UP)


# ---- the twill swatch ---------------------------------------------------------------------------------------------
def swatch() -> Image.Image:
    """A 2/2 twill in navy warp and cream weft, each thread shaded across its width, with printed dots."""
    thread = 8
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.int64)
    warp_on_top = ((x // thread + y // thread) % 4) < 2
    across = np.where(warp_on_top, x % thread, y % thread)
    d = 2 * across - (thread - 1)  # -(t-1) .. t-1 across the thread
    shade = 1000 - (d * d * 380) // ((thread - 1) ** 2)  # per mille: rounded threads, darker at their edges
    index = np.where(warp_on_top, x // thread, y // thread)
    shade -= (index * 7919) % 11 * 9  # thread-to-thread irregularity, as yarn has
    warp, weft = np.array([44, 58, 104]), np.array([226, 216, 194])
    colour = np.where(warp_on_top[..., None], warp, weft)
    # A printed dot on a half-drop lattice: the ink dyes the threads it covers, keeping their shading.
    cell = 64
    cx, cy = x % cell - cell // 2, (y + (x // cell % 2) * cell // 2) % cell - cell // 2
    dot = cx * cx + cy * cy <= 11 * 11
    colour = np.where(dot[..., None], np.array([214, 96, 110]), colour)
    pixels = colour * shade[..., None] // 1000
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


# ---- the flat-lay T-shirt and its sleeve mask -------------------------------------------------------------------
TEE_OUTLINE = [
    (214, 98),
    (164, 114),
    (84, 190),
    (118, 236),
    (166, 212),
    (168, 442),
    (344, 442),
    (346, 212),
    (394, 236),
    (428, 190),
    (348, 114),
    (298, 98),
]
LEFT_SLEEVE = [(164, 114), (84, 190), (118, 236), (166, 212)]  # the sleeve, up to the armhole seam


def silhouette(scale: int = 1) -> Image.Image:
    """The T-shirt's outline filled white on black (mode L), at `scale` x 512."""
    mask = Image.new("L", (SIZE * scale, SIZE * scale), 0)
    ImageDraw.Draw(mask).polygon([(x * scale, y * scale) for x, y in TEE_OUTLINE], fill=255)
    return mask


def flatlay() -> Image.Image:
    """A teal T-shirt laid flat: light from the top left, soft folds, back neck, seams and hem stitching."""
    big = SIZE * UP
    shape = silhouette(UP)
    shadow = Image.new("L", (big, big), 0)
    shadow.paste(shape, (6 * UP, 8 * UP))
    canvas = Image.composite(
        Image.new("RGB", (big, big), SHADOW),
        Image.new("RGB", (big, big), GROUND),
        shadow.filter(ImageFilter.GaussianBlur(9 * UP)),
    )
    y, x = np.mgrid[0:big, 0:big].astype(np.int64)
    light = 1080 - (180 * y) // big - (90 * x) // big  # per mille
    folds = Image.new("L", (big, big), 0)
    fold_draw = ImageDraw.Draw(folds)
    for line in (
        [(200, 250), (236, 430)],
        [(320, 240), (292, 420)],
        [(120, 200), (160, 180)],
        [(256, 300), (262, 410)],
    ):
        fold_draw.line(_scaled(line), fill=150, width=10 * UP)
    shading = light - np.asarray(folds.filter(ImageFilter.GaussianBlur(6 * UP)), dtype=np.int64) * 2
    cloth = np.clip(np.array(TEE) * shading[..., None] // 1000, 0, 255).astype(np.uint8)
    canvas = Image.composite(Image.fromarray(cloth, "RGB"), canvas, shape)
    draw = ImageDraw.Draw(canvas)
    draw.chord(_scaled([(214, 70), (298, 128)]), 0, 180, fill=TEE_INSIDE)  # the back neck, seen inside
    draw.arc(_scaled([(214, 70), (298, 128)]), 0, 180, fill=(30, 92, 114), width=5 * UP)  # rib collar
    seam = (30, 96, 120)
    for a, b in (((164, 114), (166, 212)), ((348, 114), (346, 212))):  # armhole seams
        draw.line(_scaled([a, b]), fill=seam, width=UP)
    _dashed(draw, [(x, 432) for x in range(172, 342, 12)], (118, 178, 196), UP)  # hem topstitch
    for sleeve in (((93, 186), (124, 228)), ((419, 186), (388, 228))):  # sleeve hem stitching
        draw.line(_scaled(list(sleeve)), fill=(118, 178, 196), width=UP)
    return canvas.reduce(UP)


def flatlay_mask() -> Image.Image:
    """White (255) over the T-shirt's left sleeve, black (0) elsewhere; kept 2 px inside the garment's edge."""
    sleeve = Image.new("L", (SIZE, SIZE), 0)
    ImageDraw.Draw(sleeve).polygon(LEFT_SLEEVE, fill=255)
    inside = silhouette().filter(ImageFilter.MinFilter(5))
    return ImageChops.multiply(sleeve, inside).point(lambda v: 255 if v >= 128 else 0)


# ---- writing ------------------------------------------------------------------------------------------------------
def render() -> dict[str, Image.Image]:
    return {"sketch": sketch(), "swatch": swatch(), "flatlay": flatlay(), "mask": flatlay_mask()}


def write_all(folder: Path = FOLDER) -> list[Path]:
    """Write every asset as PNG (no metadata, maximum compression) into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in render().items():
        target = folder / FILES[name]
        image.save(target, format="PNG", compress_level=9)
        written.append(target)
    return written


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for written_path in write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        log.info("wrote %s (%d bytes)", written_path, written_path.stat().st_size)
