"""The outputs folder: every image is written here, atomically and with metadata, before anything shows it."""

from __future__ import annotations

import datetime as _dt
import os
import secrets
import tempfile
from pathlib import Path

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
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                kwargs = {"dpi": dpi} if dpi else {}
                image.save(handle, format="PNG", pnginfo=pnginfo(infotext), **kwargs)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def owns(self, path: Path) -> bool:
        """True when `path` lies inside the outputs folder (used before serving or zipping a file)."""
        try:
            Path(path).resolve().relative_to(self.root)
        except ValueError:
            return False
        return True
