"""A1111-style `Model hash`: the first 10 hex digits of a checkpoint file's SHA-256.

For a single-file checkpoint this is exactly what A1111 computes. A diffusers folder has no single file, so the
UNet's weights file stands for the model (the part that differs between SD1.5 fine-tunes).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from studio.registry import Checkpoint

_UNET_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
)


def checkpoint_hash(ckpt: Checkpoint) -> str:
    path = weights_file(ckpt)
    if path is None:
        return ""
    stat = path.stat()
    return _sha256_prefix(str(path), stat.st_size, stat.st_mtime_ns)


def weights_file(ckpt: Checkpoint) -> Path | None:
    if ckpt.kind == "file":
        return Path(ckpt.source)
    if ckpt.kind == "folder":
        candidates = [Path(ckpt.source) / "unet" / name for name in _UNET_FILES]
        return next((p for p in candidates if p.is_file()), None)
    from huggingface_hub import try_to_load_from_cache

    for name in _UNET_FILES:
        found = try_to_load_from_cache(ckpt.source, f"unet/{name}")
        if isinstance(found, str):
            return Path(found)
    return None


def file_sha256(path: Path) -> str:
    """Full SHA-256 hex of a file, re-computed only when its size or mtime changes."""
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    return _sha256(path, size, mtime_ns)[:10]


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size/mtime: re-hash when the file changes
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
