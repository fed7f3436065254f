"""The outputs folder: every image is written here, atomically and with metadata, before anything shows it."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from studio.metadata import pnginfo


class Outputs:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def save(self, image: Image.Image, infotext: str, mode: str, dpi: tuple[int, int] | None = None) -> Path:
        """Write a PNG with `parameters`; the name is unguessable (128 random bits) and never collides."""
        folder = self.root / _dt.date.today().isoformat()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{mode}-{secrets.token_hex(16)}.png"
        kwargs = {"dpi": dpi} if dpi else {}
        return atomic_write(path, lambda handle: image.save(handle, format="PNG", pnginfo=pnginfo(infotext), **kwargs))

    def write_text(self, path: Path, text: str) -> Path:
        """A text file beside the results (e.g. a palette listing), written the same atomic way."""
        if not self.owns(path):
            raise ValueError(f"{path} is outside the outputs folder")
        return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))

    def owns(self, path: Path) -> bool:
        """True when `path` lies inside the outputs folder (used before serving or zipping a file)."""
        try:
            Path(path).resolve().relative_to(self.root)
        except ValueError:
            return False
        return True


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Write through a temporary file beside `path`, fsync, then rename: a reader sees the whole file or none."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
