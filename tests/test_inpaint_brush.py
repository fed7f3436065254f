"""The Inpaint tab's brush is translucent (the garment shows through the mask), and a translucent stroke still
repaints fully: every painted pixel of a brush layer counts, whatever its colour and opacity. Checked on the
helper and through the real door (/inpaint with gradio_client against the launched studio)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from studio.ui.inpaint_tab import BRUSH_COLOURS, any_paint, image_value
from tests.conftest import pixels

BOX = (10, 12, 40, 36)


def stroke(size: tuple[int, int], colour: tuple[int, int, int], alpha: int) -> Image.Image:
    layer = Image.new("RGBA", size, (0, 0, 0, 0))
    layer.paste((*colour, alpha), BOX)
    return layer


def test_the_brushes_are_translucent() -> None:
    assert BRUSH_COLOURS and all(isinstance(c, tuple) and 0 < c[1] < 1 for c in BRUSH_COLOURS)


@pytest.mark.parametrize("alpha", [1, 64, 127, 255])
def test_any_paint_makes_every_painted_pixel_opaque_and_leaves_the_rest_clear(alpha: int) -> None:
    mask = np.asarray(any_paint(stroke((64, 48), (255, 59, 107), alpha)).getchannel("A"))
    inside = np.zeros(mask.shape, dtype=bool)
    inside[BOX[1] : BOX[3], BOX[0] : BOX[2]] = True
    assert (mask[inside] == 255).all() and (mask[~inside] == 0).all()


def test_a_hostile_layer_is_refused_in_words(tmp_path) -> None:
    import gradio as gr

    (tmp_path / "layer.png").write_bytes(b"not a png")
    with pytest.raises(gr.Error, match="mask layer"):
        image_value({"background": None, "layers": [str(tmp_path / "layer.png")]}, None)


def test_a_half_transparent_stroke_repaints_exactly_like_an_opaque_one(running_app, tmp_path) -> None:
    from gradio_client import Client, handle_file

    url, _ = running_app
    client = Client(url, verbose=False)
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "photo.png")
    results = []
    for alpha in (127, 255):  # Gradio stores a 50 % stroke with alpha 127
        stroke((64, 64), (255, 59, 107), alpha).save(tmp_path / f"layer-{alpha}.png")
        editor = {
            "background": handle_file(str(tmp_path / "photo.png")),
            "layers": [handle_file(str(tmp_path / f"layer-{alpha}.png"))],
            "composite": None,
        }
        gallery, _, _ = client.predict(
            editor=editor,
            image=None,
            mask_image=None,
            prompt="a puffed sleeve",
            mask_blur=0,
            inpaint_area="whole",
            strength=1.0,
            num_inference_steps=2,
            seed=11,
            api_name="/inpaint",
        )
        results.append(pixels(gallery[0]["image"]))
    photo = pixels(tmp_path / "photo.png")
    assert np.array_equal(results[0], results[1])  # the same mask, so the same picture
    changed = np.any(results[1] != photo, axis=-1)
    assert changed[BOX[1] : BOX[3], BOX[0] : BOX[2]].mean() > 0.9 and not changed[50:, 50:].any()
