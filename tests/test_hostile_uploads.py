"""Hostile and careless files sent to every image slot of every mode through gradio_client: each is refused in the
studio's own words (never Gradio's "upstream app has raised an exception") or used, and the studio keeps serving."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from tests.conftest import free_port, make_settings


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_header_png(width: int, height: int) -> bytes:
    """A PNG whose header claims a vast image over a few bytes of data: only a decoder would pay for it."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))


def write(folder: Path) -> dict[str, Path]:
    """name -> file; names starting with "ok" are images the studio takes."""
    files: dict[str, Callable[[Path], object]] = {
        "empty": lambda p: p.write_bytes(b""),
        "text": lambda p: p.write_text("this is not a picture\n" * 40),
        "truncated": lambda p: p.write_bytes(_png_bytes()[:200]),
        "bomb_1bit_20000": lambda p: Image.new("1", (20000, 20000)).save(p),
        "claims_11000": lambda p: p.write_bytes(huge_header_png(11000, 11000)),
        "strip_16000x8": lambda p: Image.new("RGB", (16000, 8)).save(p),
        "svg": lambda p: p.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9e9" height="9e9"/>'),
        "html": lambda p: p.write_text("<html><script>alert(1)</script></html>"),
        "tiny_2x2": lambda p: Image.new("RGB", (2, 2)).save(p),
        "ok_16bit": lambda p: Image.fromarray((np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)).save(p),
        "ok_rgba": lambda p: Image.fromarray(  # half-transparent, red to blue
            np.dstack(
                [
                    np.tile(np.linspace(0, 255, 64), (64, 1))[..., None] * [1, 0, -1] + [0, 0, 255],
                    np.full((64, 64), 128),
                ]
            ).astype(np.uint8),
            "RGBA",
        ).save(p),
    }
    paths = {}
    for name, make in files.items():
        path = folder / f"{name}.png"
        make(path)
        paths[name] = path
    return paths


def _png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, format="PNG")  # ~12 KB: the first 200 bytes cut it short
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, dict[str, Path]]]:
    folder = tmp_path_factory.mktemp("hostile")
    settings = make_settings(tiny_dir, folder / "outputs", port=free_port())
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False), write(folder)
    finally:
        demo.close()


FAST = {"prompt": "coat", "num_inference_steps": 1, "guidance_scale": 1.0, "seed": 1}


def slot_calls(image: Any) -> dict[str, tuple[str, dict[str, Any]]]:
    """Every image slot, with a request that sends `image` there and is otherwise valid."""
    mask = handle_file(str(Path(__file__).parent.parent / "assets" / "tshirt_sleeve_mask.png"))
    photo = handle_file(str(Path(__file__).parent.parent / "assets" / "tshirt_flatlay.png"))
    return {
        "refine image": ("/refine", {"image": image, "strength": 1.0, "loops": 1, **FAST}),
        "textile swatch": ("/textile", {"image": image, "strength": 1.0, "width": 64,
                                        "height": 64, **FAST}),
        "inpaint image": ("/inpaint", {"editor": None, "image": image, "mask_image": mask, "strength": 1.0, **FAST}),
        "inpaint mask": ("/inpaint", {"editor": None, "image": photo, "mask_image": image, "strength": 1.0, **FAST}),
        "inpaint editor": ("/inpaint", {"editor": {"background": image, "layers": [], "composite": None},
                                        "image": None, "mask_image": mask, "strength": 1.0, **FAST}),
        "restyle image": ("/restyle", {"image": image, **FAST}),
        "restyle unit 2 picture": ("/restyle", {"image": photo, "controlnet_units": [{"preprocessor": "none"}],
                                                "control_image": [image], **FAST}),
        "restyle edges": ("/restyle_edges", {"image": image, "preprocessor": "none"}),
        "colourways tile": ("/colourways", {"image": image, "palettes": ["SS26 Citrus Grove"], "colors": 2}),
        "colourways mood photo": ("/colourways", {"image": photo, "mood_image": image, "colors": 2}),
    }  # fmt: skip


REFUSALS = {  # the studio's own words for each hostile file
    "empty": "empty \\(0 bytes\\)",
    "text": "not an image PIL can read",
    "truncated": "damaged or truncated",
    "bomb_1bit_20000": "sides up to|far too large",
    "claims_11000": "limit is|sides up to",
    "strip_16000x8": "aspect of at most",
    "svg": "not an image PIL can read",
    "html": "not an image PIL can read",
    "tiny_2x2": "only 2x2 pixels|at least",
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_a_hostile_file_in_any_image_slot_is_refused_in_the_studios_words(served, name: str) -> None:
    client, files = served
    for slot, (endpoint, args) in slot_calls(handle_file(str(files[name]))).items():
        with pytest.raises(Exception) as error:
            client.predict(**args, api_name=endpoint)
        message = str(error.value)
        assert "upstream Gradio app" not in message, (slot, name, message)
        assert re.search(REFUSALS[name], message), (slot, name, message)


@pytest.mark.parametrize("name", ["ok_16bit", "ok_rgba"])
def test_unusual_but_valid_files_are_used_in_every_slot(served, name: str) -> None:
    client, files = served
    for slot, (endpoint, args) in slot_calls(handle_file(str(files[name]))).items():
        if slot == "inpaint mask":
            continue  # a mask of any mode is valid; it is covered by the inpaint tests
        result = client.predict(**args, api_name=endpoint)
        assert result, (slot, name)
    gallery, seed, _ = client.predict(**FAST, api_name="/txt2img")  # and the studio keeps serving
    assert gallery and seed == 1
