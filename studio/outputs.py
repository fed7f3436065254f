"""The outputs folder: every image is written here, atomically and with metadata, before anything shows it.

A file is written whole in a private folder first and then renamed into place, so a reader of the outputs folder
(Gradio serves it) sees a finished file or none. The private folder is `<outputs>/.atelier-tmp`: inside the
outputs folder so the rename never crosses filesystems (the outputs folder is often a mount of its own: a Docker
volume, a Space's /data), and never served: `app.launch` lists it in Gradio's `blocked_paths`, which win over
`allowed_paths`. Startup (`clean_leftovers`) removes what a killed write left behind.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from PIL import Image

from studio.metadata import pnginfo
from studio.settings import DEFAULT_PNG_LEVEL

log = logging.getLogger(__name__)

TEMP_DIR = ".atelier-tmp"
PART = ".part"
# A file in the private folder older than this is a killed write (a print export takes seconds); a younger one
# may belong to another server sharing the outputs folder, and is left alone.
STALE_AFTER_S = 3600
# A download name (`florals-halfdrop-30x30cm-300dpi`): built by the studio from a slug, never a user's path.
DOWNLOAD_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,95}")


def temp_folder(root: Path) -> Path:
    """Where writes into the outputs folder `root` happen before their rename; never served."""
    return Path(root).resolve() / TEMP_DIR


class Outputs:
    def __init__(self, root: Path, durable: bool = True) -> None:
        self.root = Path(root).resolve()
        self.temp = temp_folder(self.root)
        # fsync each file before it is renamed into place; False only for a scratch folder whose files are read
        # back at once and written durably elsewhere (a Ray replica's: the front writes the served copy)
        self.durable = durable

    def save(
        self,
        image: Image.Image,
        infotext: str,
        mode: str,
        dpi: tuple[int, int] | None = None,
        compress_level: int = DEFAULT_PNG_LEVEL,
        name: str | None = None,
    ) -> Path:
        """Write a PNG with `parameters` at zlib level `compress_level` (settings' `png_level`); the name is
        unguessable (128 random bits) and never collides. With `name` ([a-z0-9-], at most 96 characters: a name
        for downloads, such as `florals-halfdrop-30x30cm-300dpi`) the file is `<name>.png` inside a folder of its
        own with the unguessable name, so a download keeps the human name."""
        folder = self.root / _dt.date.today().isoformat()
        if name is not None:
            if not DOWNLOAD_NAME.fullmatch(name):
                raise ValueError(f"Not a download name: {name!r} (use a-z, 0-9 and -)")
            folder = folder / secrets.token_hex(16)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / (f"{name}.png" if name is not None else f"{mode}-{secrets.token_hex(16)}.png")
        kwargs: dict[str, object] = {"compress_level": compress_level, **({"dpi": dpi} if dpi else {})}
        return atomic_write(
            path,
            lambda handle: image.save(handle, format="PNG", pnginfo=pnginfo(infotext), **kwargs),
            self.temp,
            durable=self.durable,
        )

    def write_text(self, path: Path, text: str) -> Path:
        """A text file beside the results (e.g. a palette listing), written the same atomic way."""
        if not self.owns(path):
            raise ValueError(f"{path} is outside the outputs folder")
        return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), self.temp, durable=self.durable)

    def owns(self, path: Path) -> bool:
        """True when `path` lies inside the outputs folder and is a result, not a write in progress (used before
        serving or zipping a file)."""
        resolved = Path(path).resolve()
        return resolved.is_relative_to(self.root) and not resolved.is_relative_to(self.temp)


def atomic_write(path: Path, write: Callable[[BinaryIO], object], temp: Path, durable: bool = True) -> Path:
    """Write into a temporary file in the private folder `temp` (same filesystem as `path`), fsync (unless not
    `durable`), then rename: a reader sees the whole file or none, and a half-written file is never where anything
    serves it."""
    temp.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=temp, suffix=PART)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def clean_leftovers(root: Path, stale_after_s: float = STALE_AFTER_S) -> int:
    """Remove what killed writes left: every `*.part` among the results (where writes used to happen, in a
    served folder) and stale files in the private folder. Returns how many files went."""
    root, temp = Path(root).resolve(), temp_folder(root)
    removed = 0
    for folder, subfolders, names in os.walk(root):
        if Path(folder) == root and TEMP_DIR in subfolders:
            subfolders.remove(TEMP_DIR)  # handled below, by age
        for name in names:
            if name.endswith(PART):
                removed += _unlink(Path(folder) / name)
    if temp.is_dir():
        cutoff = time.time() - stale_after_s
        for entry in temp.iterdir():
            if entry.is_file() and entry.stat().st_mtime < cutoff:
                removed += _unlink(entry)
    if removed:
        log.info("Removed %d half-written file(s) left in %s by an interrupted run", removed, root)
    return removed


def _unlink(path: Path) -> int:
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:  # the studio still starts; the operator learns which file to remove
        log.warning("Could not remove the half-written file %s: %s", path, exc)
        return 0
    return 1
