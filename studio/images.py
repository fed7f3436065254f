"""Input images, hardened in one place: every mode passes uploads through `load_image` / `load_mask`.

Pure PIL/numpy, no torch. Handles EXIF orientation, every PIL mode (RGBA/LA/P/CMYK/I;16/I/F/1/L) with correct
values, decompression bombs and pixel caps, zero-byte/truncated/non-image files, and refuses strings that look
like URLs (no user string is ever fetched or opened as a path: uploads arrive as files Gradio wrote itself).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Refuse decoding anything bigger than this many pixels (PIL raises DecompressionBombError past 2x its limit).
Image.MAX_IMAGE_PIXELS = 64_000_000
MAX_SIDE = 16_384  # absurd sizes: no garment photo or print is longer than this
MAX_ASPECT = 16


@dataclass(frozen=True)
class FileBytes:
    """An uploaded file's bytes, read where the upload landed (the front of a Ray Serve studio) and decoded where
    the work runs, by the same checks as a file path (`load_image`)."""

    data: bytes


class ImageInputError(ValueError):
    """An input image the studio cannot use; the message says what to do."""


def load_image(
    value: Any,
    max_pixels: int,
    what: str = "image",
    background: tuple[int, int, int] = (255, 255, 255),
    allowed_root: Path | None = None,
) -> Image.Image:
    """Any uploaded value (PIL image, numpy array, or a file path Gradio wrote) → an upright RGB PIL image.

    Transparent pixels are composited over `background` (white: sketches and cut-outs on paper). Images over
    `max_pixels` are refused with the size to aim for.
    """
    image = _open(value, what, allowed_root, max_pixels)
    image = _upright(image)
    image = to_rgb(image, background)
    check_dimensions(image.size, max_pixels, what)
    return image


def check_dimensions(size: tuple[int, int], max_pixels: int, what: str = "image") -> None:
    """Sides, aspect and pixel count within the studio's limits; a file's header alone is enough to check."""
    width, height = size
    if max(size) > MAX_SIDE or max(size) > MAX_ASPECT * max(1, min(size)):
        raise ImageInputError(
            f"The {what} is {width}x{height}: sides up to {MAX_SIDE} px and an aspect of at most "
            f"{MAX_ASPECT}:1 are accepted. Crop it closer to the garment and upload again."
        )
    if width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        raise ImageInputError(
            f"The {what} is {width}x{height} ({width * height:,} pixels); the limit is {max_pixels:,}. Resize it "
            f"to about {int(width * scale)}x{int(height * scale)} and upload again."
        )
    if min(size) < 8:
        raise ImageInputError(f"The {what} is only {width}x{height} pixels; upload a larger one.")


def _open(value: Any, what: str, allowed_root: Path | None, max_pixels: int = Image.MAX_IMAGE_PIXELS) -> Image.Image:
    if value is None:
        raise ImageInputError(f"No {what} given: upload one, or send a result here from another tab.")
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, np.ndarray):
        return Image.fromarray(_array_to_uint8(value))
    if isinstance(value, FileBytes):
        return _decode(value.data, what, max_pixels)
    if isinstance(value, dict) and "path" in value:  # a Gradio FileData-like dict
        value = value["path"]
    if isinstance(value, str | Path):
        text = str(value)
        if "://" in text or text.startswith(("data:", "//")):
            raise ImageInputError(f"The {what} must be an uploaded file; links are not fetched.")
        path = Path(text)
        if allowed_root is not None and not path.resolve().is_relative_to(allowed_root.resolve()):
            raise ImageInputError(f"The {what} must be an uploaded file.")
        try:
            data = path.read_bytes()
        except OSError:
            raise ImageInputError(f"The {what} file could not be read; upload it again.") from None
        return _decode(data, what, max_pixels)
    raise ImageInputError(f"Unsupported {what} value ({type(value).__name__}); upload a PNG, JPEG or WebP file.")


def open_upload(value: Any, what: str = "image") -> Image.Image:
    """An upload as PIL decoded it, unconverted: its `info` (PNG text chunks such as `parameters`) intact."""
    return _open(value, what, None)


def _decode(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Decode an uploaded file; its dimensions are checked from the header first, so a small file that would
    decode to a huge image (a 470 KB PNG of 121 megapixels) is refused before any pixel is allocated."""
    if not data:
        raise ImageInputError(f"The {what} file is empty (0 bytes); upload the image again.")
    try:
        image = Image.open(io.BytesIO(data))  # reads the header only
        check_dimensions(image.size, max_pixels, what)
        image.load()
    except ImageInputError:
        raise
    except Image.DecompressionBombError:
        raise ImageInputError(f"The {what} is far too large to open safely; use one under 64 megapixels.") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"The {what} file is not an image PIL can read; upload a PNG, JPEG or WebP.") from None
    except (OSError, SyntaxError, ValueError):
        raise ImageInputError(f"The {what} file is damaged or truncated; export it again and re-upload.") from None
    return image


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image) or image
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return image


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array / 257).round().astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if array.max(initial=0) <= 1.0 else 1.0
        return np.clip(array * scale, 0, 255).round().astype(np.uint8)
    return np.clip(array, 0, 255).astype(np.uint8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """Convert any PIL mode to RGB with correct values (16-bit scaled, not clipped; alpha composited)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image)
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array.astype(np.float64) / (65535.0 if array.max(initial=0) > 255 else 255.0)
        image = Image.fromarray(_array_to_uint8(np.asarray(array)))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        canvas.alpha_composite(rgba)
        return canvas.convert("RGB")
    return image.convert("RGB")


def load_mask(value: Any, size: tuple[int, int], max_pixels: int) -> Image.Image:
    """A mask as mode "L" (255 = repaint), resized with nearest-neighbour to the image size when they differ."""
    image = _upright(_open(value, "mask", None))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        alpha = image.convert("RGBA").getchannel("A")
        lowest = alpha.getextrema()[0]  # one band, so (min, max) numbers rather than a tuple per band
        # A brush layer: its alpha is the mask, whatever the brush colour. An opaque RGBA mask: its luminance.
        mask = alpha if isinstance(lowest, int | float) and lowest < 255 else to_rgb(image).convert("L")
    else:
        mask = to_rgb(image).convert("L")
    if mask.width * mask.height > max_pixels * 4:
        raise ImageInputError("The mask is far larger than the studio's size limit; upload a smaller one.")
    if mask.size != size:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return mask


def load_alpha(value: Any, size: tuple[int, int], max_pixels: int, what: str = "mask layer") -> Image.Image:
    """A brush layer's alpha as mode "L" (255 = painted, whatever the brush colour; an image without alpha counts
    as painted everywhere), resized with nearest-neighbour to the image size when they differ."""
    image = _upright(_open(value, what, None))
    if image.width * image.height > max_pixels * 4:
        raise ImageInputError(f"The {what} is far larger than the studio's size limit; upload a smaller one.")
    alpha = image.convert("RGBA").getchannel("A")
    if alpha.size != size:
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
    return alpha
