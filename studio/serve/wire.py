"""What crosses between the studio's front and an Engine replica: requests with their uploads as bytes, and a run's
events with the files they name. No Ray here (it is plain data), so both ends and their tests share it.

- **Inputs travel as bytes.** A Gradio upload is a file path on the front's disk; a replica (on another machine)
  cannot open it. `inputs_as_bytes` turns the request's image fields into `FileBytes`, which the replica decodes with
  the very checks a path gets (`studio.images.load_image`), so pixels and error messages are the local engine's.
- **Outputs travel as files.** A replica writes its results into a private scratch folder, never the served one.
  `Packer` turns every path of an event under that folder into a relative path and ships each file's bytes once;
  the front's `unpack` writes those bytes, unchanged, into its own outputs folder (atomically, as `Outputs.save`
  does) and makes the paths absolute there, before the event reaches the tab: written before shown, as locally.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from studio.images import FileBytes
from studio.outputs import Outputs, atomic_write

# request fields (and action parameters) that hold uploaded pictures: one, or a list (image prompt, further units)
IMAGE_FIELDS = ("image", "mask_image", "ip_adapter_image", "control_image")


@dataclasses.dataclass(frozen=True)
class Shipped:
    """One event of a run as it travels: paths in the replica's scratch folder made relative, and the bytes of the
    files among them not shipped before (relative path -> bytes)."""

    event: Any
    files: dict[str, bytes]


@dataclasses.dataclass(frozen=True)
class Failed:
    """The run raised `error` in the replica (a `StudioError`, `Cancelled`, out of memory, ...): the front raises it
    again, so the designer reads the same words as with the local engine."""

    error: BaseException


# ---- inputs ---------------------------------------------------------------------------------------------------------
def as_bytes(value: Any) -> Any:
    """An upload value with every file it names read into `FileBytes`: a path, Gradio's `{"path": ...}`, and the
    image editor's `{"background", "layers", "composite"}`. Anything else (a PIL image, an array, a link the engine
    refuses in words) travels as it is."""
    if isinstance(value, str | Path) and "://" not in str(value) and Path(value).is_file():
        return FileBytes(Path(value).read_bytes())
    if isinstance(value, dict) and "path" in value and not {"background", "layers"} & value.keys():
        return as_bytes(value["path"])  # Gradio's FileData
    if isinstance(value, dict):
        return {key: as_bytes(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(as_bytes(item) for item in value)
    return value


def inputs_as_bytes(request: Any) -> Any:
    """The request (a frozen dataclass) with its image fields as bytes; any other value is returned as it is."""
    if not dataclasses.is_dataclass(request) or isinstance(request, type):
        return request
    changes = {name: as_bytes(getattr(request, name)) for name in IMAGE_FIELDS if hasattr(request, name)}
    return dataclasses.replace(request, **changes) if changes else request


# ---- outputs --------------------------------------------------------------------------------------------------------
def map_paths(value: Any, change: Callable[[Path], Path]) -> Any:
    """`value` with `change` applied to every `Path` inside it (dataclasses, lists, tuples, dict values), copied
    where something changed; images and other objects are shared, not copied."""
    if isinstance(value, Path):
        return change(value)
    if isinstance(value, list):
        return [map_paths(item, change) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(map_paths(item, change) for item in value)
    if isinstance(value, dict):
        return {key: map_paths(item, change) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        copied = copy.copy(value)
        for field in dataclasses.fields(value):
            object.__setattr__(copied, field.name, map_paths(getattr(value, field.name), change))  # frozen too
        return copied
    return value


class Packer:
    """One run's shipping on the replica: each file under `scratch` is sent once, and removed when the run ends."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch.resolve()
        self.sent: set[Path] = set()

    def ship(self, event: Any) -> Shipped:
        files: dict[str, bytes] = {}

        def relative(path: Path) -> Path:
            resolved = path.resolve()
            if not resolved.is_relative_to(self.scratch):
                return path
            rel = resolved.relative_to(self.scratch)
            if resolved not in self.sent and resolved.is_file():
                files[rel.as_posix()] = resolved.read_bytes()
                self.sent.add(resolved)
            return rel

        return Shipped(map_paths(event, relative), files)

    def clean(self) -> None:
        """Remove what this run wrote: the front holds the only copy that matters."""
        for path in self.sent:
            path.unlink(missing_ok=True)


def unpack(shipped: Shipped, outputs: Outputs) -> Any:
    """The event as the front's tab sees it: its files written into the outputs folder first (each under the same
    relative name the replica chose: a date folder and an unguessable name), its relative paths made absolute."""
    root = outputs.root
    for rel, data in shipped.files.items():
        target = (root / rel).resolve()
        if not outputs.owns(target) or target == root:
            raise ValueError(f"A replica sent a file outside the outputs folder: {rel!r}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, functools.partial(_write, data=data), outputs.temp)
    return map_paths(shipped.event, lambda path: path if path.is_absolute() else root / path)


def _write(handle: BinaryIO, data: bytes) -> None:
    handle.write(data)
