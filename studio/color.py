"""Colour that holds over img2img loops: palette matching in CIELAB and ΔE measurement, both via scikit-image.

Loopback's best-known failure is drift: every pass through the VAE and the sampler nudges the colours (towards
magenta, cyan or red), and the nudges add up. `match_palette` matches each Lab channel's histogram of a loop's
output to that of the loop's source (what A1111's colour correction does, in a perceptual space), so lightness and
the two chroma axes keep their original distributions while the structure the model added stays.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image
from skimage.color import deltaE_ciede2000, lab2rgb, rgb2lab
from skimage.exposure import match_histograms


def to_lab(image: Image.Image) -> np.ndarray:
    """An RGB PIL image as a float (H, W, 3) CIELAB array (D65)."""
    return rgb2lab(np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0)


def from_lab(lab: np.ndarray) -> Image.Image:
    with warnings.catch_warnings():  # out-of-gamut Lab values are clipped; that is expected here
        warnings.simplefilter("ignore")
        rgb = lab2rgb(lab)
    return Image.fromarray(np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8), "RGB")


def match_palette(image: Image.Image, reference: Image.Image) -> Image.Image:
    """`image` with each Lab channel's histogram matched to `reference`'s (sizes may differ)."""
    matched = match_histograms(to_lab(image), to_lab(reference), channel_axis=-1)
    return from_lab(matched)


def mean_delta_e(image: Image.Image, reference: Image.Image) -> float:
    """Mean CIEDE2000 colour difference, pixel by pixel, between two images of the same size."""
    if image.size != reference.size:
        raise ValueError(f"Sizes differ: {image.size} vs {reference.size}.")
    return float(np.mean(deltaE_ciede2000(to_lab(image), to_lab(reference))))


def palette_delta_e(image: Image.Image, reference: Image.Image) -> float:
    """CIEDE2000 distance between the two images' mean Lab colours: the overall cast, whatever the layout."""
    mean, ref_mean = to_lab(image).reshape(-1, 3).mean(0), to_lab(reference).reshape(-1, 3).mean(0)
    return float(deltaE_ciede2000(mean, ref_mean))
