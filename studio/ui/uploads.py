"""Image inputs whose uploads reach the studio unopened, so `studio.images` alone decodes them.

`gr.Image` and `gr.ImageEditor` open every upload with PIL in their own preprocessing, before the handler runs
(EXIF, mode conversion, full decode): a 0-byte file, a text file named `.png` or a decompression bomb then fails
inside Gradio with a message no one can act on, a 121-megapixel PNG of 470 KB is decoded in full before any size
check, and the default `image_mode="RGB"` clips 16-bit images and drops alpha. The inputs made here keep Gradio's
front end and API (the same component and the same `FileData` payload) and only change the server-side
preprocessing: the handler receives the uploaded file's path, capped in bytes however it arrived
(multipart upload or a `data:` URL inside the queue's JSON), and `studio.images` checks, decodes and normalises
it with errors in words.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.data_classes import FileData, ImageData

DEFAULT_MAX_BYTES = 25 * 2**20


def _too_large(size: int, limit: int) -> gr.Error:
    return gr.Error(
        f"The image file is {size / 2**20:.1f} MB; this studio takes files up to {limit / 2**20:.0f} MB. "
        "Export it smaller (PNG or JPEG) and upload again."
    )


def uploaded_path(file: FileData | ImageData | bytes | None, cache_dir: str, limit: int) -> str | None:
    """The path of an uploaded image, checked for size only (never decoded here).

    `bytes` (the image editor's canvas layers) and `data:` URLs are written as they are to Gradio's cache."""
    if file is None:
        return None
    if isinstance(file, bytes | bytearray | memoryview):
        return _write_bytes(bytes(file), cache_dir, limit)
    if file.url and file.url.startswith("data:"):
        return _write_bytes(_decode_data_url(file.url, limit), cache_dir, limit)
    if file.path is None:
        raise gr.Error("The image did not arrive as a file: upload it again.")
    path = Path(file.path)
    try:
        size = path.stat().st_size
    except OSError:
        raise gr.Error("The uploaded image file could not be read: upload it again.") from None
    if size > limit:
        raise _too_large(size, limit)
    return str(path)


def _decode_data_url(url: str, limit: int) -> bytes:
    header, _, encoded = url.partition(",")
    if len(encoded) * 3 // 4 > limit:  # refused before decoding: the cap holds however the image arrives
        raise _too_large(len(encoded) * 3 // 4, limit)
    if not header.endswith(";base64"):
        raise gr.Error("A data: URL image must be base64-encoded; better, upload the image as a file.")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise gr.Error("The image's data: URL is not valid base64; upload the image as a file.") from None


def _write_bytes(data: bytes, cache_dir: str, limit: int) -> str:
    if len(data) > limit:
        raise _too_large(len(data), limit)
    folder = Path(cache_dir) / "atelier-uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{hashlib.sha256(data).hexdigest()[:32]}.upload"  # named by content: no user string
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def image_upload(max_upload_mb: int, **kwargs: Any) -> gr.Image:
    """An image input (file path, unopened) capped at `max_upload_mb`."""
    component = gr.Image(type="filepath", image_mode=None, **kwargs)
    limit = max_upload_mb * 2**20
    # Gradio's extension point for server-side processing is `preprocess`. It is set on this instance rather than
    # in a subclass: Gradio's component metaclass writes a `.pyi` stub beside the module of every Component
    # subclass (its custom-component tooling), which would shadow this module for mypy and litter the tree.
    component.preprocess = lambda payload: uploaded_path(payload, component.GRADIO_CACHE, limit)  # type: ignore[method-assign]
    return component


def editor_upload(max_upload_mb: int, **kwargs: Any) -> gr.ImageEditor:
    """An image editor (file paths, unopened) capped at `max_upload_mb`: its background and each brush layer go
    through `uploaded_path` where `gr.ImageEditor.preprocess` would open them (the rest of its preprocessing, such
    as collecting canvas blobs, is Gradio's own)."""
    component = gr.ImageEditor(type="filepath", **kwargs)
    limit = max_upload_mb * 2**20
    component.convert_and_format_image = (  # type: ignore[method-assign]
        lambda file, flatten_on_white=False: uploaded_path(file, component.GRADIO_CACHE, limit)
    )
    return component


def image_files_upload(
    max_upload_mb: int, max_files: int | None = None, what: str = "pictures", **kwargs: Any
) -> gr.File:
    """Several image files in order (file paths, unopened), each capped at `max_upload_mb` however it arrived (a
    list of `handle_file`s from gradio_client, a multipart upload or `data:` URLs); more than `max_files` of them
    (`what`, in the refusal's words) are refused."""
    component = gr.File(file_count="multiple", file_types=["image"], type="filepath", **kwargs)
    limit = max_upload_mb * 2**20

    def preprocess(payload: Any) -> list[str] | None:
        if payload is None:
            return None
        files = payload.root if hasattr(payload, "root") else [payload]
        if max_files is not None and len(files) > max_files:
            raise gr.Error(f"{len(files)} {what}; at most {max_files}. Drop the extra ones.")
        paths = [uploaded_path(file, component.GRADIO_CACHE, limit) for file in files]
        return [path for path in paths if path is not None]

    component.preprocess = preprocess  # type: ignore[method-assign]
    return component
