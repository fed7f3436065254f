"""Super-resolution upscalers: ESRGAN-family model files through spandrel, run in tiles, seamless for repeats.

- **Files**: the operator puts model files (`.pth` / `.safetensors`) in the upscalers folder
  (`STUDIO_UPSCALERS_DIR`); requests name one by its file name, looked up in that folder's listing (a request's
  string is never a path). spandrel (MIT) reads the architecture from the state dict; only its main registry is
  used (its `spandrel_extra_arches` package carries non-commercial licences and is never imported), and only
  super-resolution models with RGB in and out are accepted.
- **Tiles**: the model sees at most `tile` + 2 x `overlap` input pixels a side at once: each tile is run with
  `overlap` pixels of real context around it and only its centre is kept, so GPU memory is bounded at any image
  size and, with the overlap at least the model's reach, tiled equals whole.
- **Repeats**: a repeating tile is padded with `overlap` pixels of its wrapped neighbourhood (as the repeat lays
  the print out: `patterns.pad_wrapped`) and the centre of the result is cropped, so the upscaled tile repeats
  with no seam; half-drop and brick offsets are half the new size, exact when it is even.
- **Size**: the model runs (at most `MAX_PASSES` times) until the rest of the way is at most `RESAMPLE_UP` x;
  the last step to the exact size is seamless Lanczos (`patterns.resize_tile`).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from studio import patterns
from studio.errors import Cancelled, ModelLoadError, RequestError
from studio.hashing import file_sha256

log = logging.getLogger(__name__)

SUFFIXES = (".pth", ".safetensors")
LANCZOS = "Lanczos"  # no model: resampling only
DEFAULT_FILE = "RealESRGAN_x4plus.pth"  # Real-ESRGAN's 4x model, BSD-3-Clause (xinntao/Real-ESRGAN)
DEFAULT_URL = "https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth"
TILE = 256  # input px per model tile
OVERLAP = 32  # input px of context around each tile, and of wrapped neighbourhood around a repeat tile
MAX_PASSES = 3
RESAMPLE_UP = 1.25  # the most the final Lanczos step may enlarge: beyond it the model runs once more


@dataclass(frozen=True)
class Upscaler:
    """A loaded model file: spandrel's descriptor, the file's name and A1111's short hash of it."""

    model: Any  # spandrel.ImageModelDescriptor
    name: str
    hash: str

    @property
    def scale(self) -> int:
        return int(self.model.scale)


def available(folder: Path) -> list[str]:
    """The model files in the upscalers folder, by name."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def missing_message(folder: Path) -> str:
    return (
        f"No upscaler model file in the upscalers folder ({folder.name}/, STUDIO_UPSCALERS_DIR). To get one: "
        f"download {DEFAULT_FILE} (Real-ESRGAN, BSD-3-Clause) from {DEFAULT_URL} into that folder. Meanwhile "
        f"choose {LANCZOS} (plain resampling, no model)."
    )


def resolve(folder: Path, name: str) -> Path:
    """The file a request names ("" = the default: RealESRGAN_x4plus.pth when present, else the first file),
    found in the folder's own listing."""
    files = available(folder)
    if not files:
        raise RequestError(missing_message(folder))
    if not name:
        return folder / (DEFAULT_FILE if DEFAULT_FILE in files else files[0])
    if name not in files:
        raise RequestError(f"No upscaler named {name!r}. Choose one of: {', '.join([LANCZOS, *files])}.")
    return folder / name


def load_model(path: str, device: torch.device, dtype: torch.dtype) -> Any:
    """spandrel's descriptor of a model file, on `device`, in eval mode; refused in words when it is not an RGB
    super-resolution model of spandrel's main (permissively licensed) architectures."""
    from spandrel import ImageModelDescriptor, ModelLoader  # type: ignore[import-untyped]  # no py.typed

    try:
        model = ModelLoader().load_from_file(path)
    except Exception as exc:  # unreadable, unknown architecture: one clear message
        raise ModelLoadError(f"Could not load the upscaler {Path(path).name}: {exc}".strip()) from exc
    if not isinstance(model, ImageModelDescriptor) or model.purpose != "SR" or model.input_channels != 3:
        raise ModelLoadError(
            f"{Path(path).name} is a {model.architecture.name} model for {model.purpose}, not an RGB upscaler; "
            "use a super-resolution model such as RealESRGAN_x4plus.pth."
        )
    half = dtype == torch.float16 and model.supports_half or dtype == torch.bfloat16 and model.supports_bfloat16
    model.to(device).eval()
    if half and device.type != "cpu":
        model.to(dtype)
    return model


def open_upscaler(cache: Any, folder: Path, name: str) -> Upscaler:
    """The named file's model from the cache's upscaler slot."""
    path = resolve(folder, name)
    return Upscaler(cache.upscaler(str(path)), path.name, file_sha256(path)[:10])


# ---- running the model ------------------------------------------------------------------------------------------
def run_tiled(
    model: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, scale: int, tile: int = TILE,
    overlap: int = OVERLAP, stop: Callable[[], bool] | None = None,
) -> torch.Tensor:  # fmt: skip
    """`model` over a (1, C, H, W) image in tiles of `tile` px, each with `overlap` px of context (clipped at the
    image's edges) of which only the centre is kept. Returns (1, C, scale*H, scale*W) float32 on the CPU.
    `stop()` is asked before each tile: True raises `Cancelled`."""
    _, channels, height, width = image.shape
    out = torch.empty(1, channels, scale * height, scale * width, dtype=torch.float32)
    for y0 in range(0, height, tile):
        for x0 in range(0, width, tile):
            if stop is not None and stop():
                raise Cancelled("Cancelled.")
            y1, x1 = min(y0 + tile, height), min(x0 + tile, width)
            cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
            cy1, cx1 = min(height, y1 + overlap), min(width, x1 + overlap)
            result = model(image[..., cy0:cy1, cx0:cx1])
            keep = result[..., scale * (y0 - cy0) : scale * (y1 - cy0), scale * (x0 - cx0) : scale * (x1 - cx0)]
            out[..., scale * y0 : scale * y1, scale * x0 : scale * x1] = keep.float().cpu()
    return out


def model_pass(
    upscaler: Upscaler, pixels: np.ndarray, repeat: str | None, tile: int = TILE, overlap: int = OVERLAP,
    stop: Callable[[], bool] | None = None,
) -> np.ndarray:  # fmt: skip
    """One run of the model over an (H, W, 3) float image in [0, 1]; a repeat tile with its wrapped neighbourhood
    around it, then cropped. Returns (scale*H, scale*W, 3) float32 in [0, 1]. Run under the GPU lock."""
    padded, top, left = patterns.pad_wrapped(pixels, overlap, repeat)
    device, dtype = _placement(upscaler.model)
    tensor = torch.from_numpy(np.ascontiguousarray(padded)).permute(2, 0, 1)[None]

    def run(part: torch.Tensor) -> torch.Tensor:
        return upscaler.model(part.to(device=device, dtype=dtype))

    out = run_tiled(run, tensor, upscaler.scale, tile, overlap, stop)[0].permute(1, 2, 0).numpy()
    s, (height, width) = upscaler.scale, pixels.shape[:2]
    return out[s * top : s * (top + height), s * left : s * (left + width)]


def _placement(model: Any) -> tuple[torch.device, torch.dtype]:
    weight = next(model.model.parameters())
    return weight.device, weight.dtype


def passes_needed(size: tuple[int, int], target: tuple[int, int], scale: int) -> int:
    """How often the model runs: until the rest of the way is at most RESAMPLE_UP x (at most MAX_PASSES)."""
    factor = max(target[0] / size[0], target[1] / size[1])
    passes = 0
    while factor > RESAMPLE_UP and passes < MAX_PASSES and scale > 1:
        factor /= scale
        passes += 1
    return passes


def enlarge(
    upscaler: Upscaler | None, image: Image.Image, size: tuple[int, int], repeat: str | None, tile: int = TILE,
    overlap: int = OVERLAP, lock: Callable[[], Any] | None = None, stop: Callable[[], bool] | None = None,
) -> tuple[Image.Image, int]:  # fmt: skip
    """`image` at `size`: the model's passes (under `lock`, the GPU lock), then seamless Lanczos to the exact size.
    Without an upscaler, Lanczos alone. Returns the picture and how many model passes ran."""
    passes = 0 if upscaler is None else passes_needed(image.size, size, upscaler.scale)
    if passes:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
        with lock() if lock is not None else contextlib.nullcontext():
            for _ in range(passes):
                pixels = model_pass(upscaler, pixels, repeat, tile, overlap, stop)  # type: ignore[arg-type]
        image = Image.fromarray(np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8))
    if image.size == size:
        return image, passes
    if repeat is None:
        return image.convert("RGB").resize(size, Image.Resampling.LANCZOS), passes
    return patterns.resize_tile(image, size, repeat), passes
