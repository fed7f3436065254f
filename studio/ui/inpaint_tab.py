"""The Inpaint tab: brush over a sleeve, a collar or a fabric area, describe what goes there; the rest is kept.

Two ways in, both on the one `/inpaint` endpoint:
- the editor: the photo is the background, the brush layers' alpha is the mask (any brush colour);
- uploads `image` + `mask_image` (white = repaint), as diffusers names them: what API callers send
  (`editor=None`); in the UI they sit in the "Upload a mask instead" accordion. An uploaded mask wins over brush
  strokes, an uploaded photo over the editor's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr
from PIL import Image

from studio.engine.inpaint import MAX_MASK_BLUR, MAX_PADDING, InpaintRequest
from studio.images import ImageInputError, open_upload
from studio.ui.image_prompt_box import image_prompt_box
from studio.ui.running import cancel_button, gallery_outputs, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import editor_upload, image_upload
from studio.ui.widgets import (
    UIContext,
    field_components,
    form_request,
    link_seed,
    prompt_block,
    results_block,
    sampling_block,
)

MASKED_CONTENT_CHOICES = [
    ("Original (keep the shape, change the look)", "original"),
    ("Fill (paint out, then repaint from the surroundings)", "fill"),
    ("Latent noise (something new)", "latent_noise"),
]
# Translucent brushes, so the garment stays visible under the mask. Gradio paints a stroke's opacity into the
# layer's alpha; the mask is "any paint" (`any_paint`), so a half-transparent stroke still repaints fully.
BRUSH_OPACITY = 0.5
BRUSH_COLOURS: list[str | tuple[str, float]] = [("#ff3b6b", BRUSH_OPACITY), ("#ffffff", BRUSH_OPACITY),
                                                ("#000000", BRUSH_OPACITY)]  # fmt: skip
STRENGTH_INFO = "How much the brushed area changes: 0.3 keeps its shape and colour, 0.75 reworks it, 1 starts afresh."
INPAINT_AREA_CHOICES = [("Whole picture", "whole"), ("Only masked (more detail for small areas)", "only_masked")]


def image_value(editor: dict[str, Any] | None, image: str | None) -> Any:
    """What the engine gets as `image`: the uploaded photo (with the editor's strokes, if any), else the editor.
    Every painted pixel of a brush layer counts fully (`any_paint`), however translucent the brush."""
    layers = [any_paint(layer) for layer in (editor or {}).get("layers") or [] if layer is not None]
    if image is None:
        return None if editor is None else {**editor, "layers": layers}
    return {"background": image, "layers": layers} if layers else image


def any_paint(layer: Any) -> Image.Image:
    """A brush layer whose painted pixels are opaque. The brushes are translucent (BRUSH_OPACITY) so the garment
    shows through, and Gradio stores a stroke's opacity in the layer's alpha (a 50 % stroke: alpha 127); the
    engine reads a layer's alpha as the mask, where 127 would repaint only half. Feathering is Mask blur's job."""
    try:
        image = open_upload(layer, "mask layer").convert("RGBA")
    except ImageInputError as exc:
        raise gr.Error(str(exc)) from None
    image.putalpha(image.getchannel("A").point(lambda alpha: 255 if alpha else 0))
    return image


def mask_panel(ctx: UIContext) -> dict[str, gr.components.Component]:
    c: dict[str, gr.components.Component] = {}
    c["editor"] = editor_upload(
        ctx.limits.max_upload_mb,
        label="Photo: brush over what to repaint",
        format="png",
        sources=["upload", "clipboard"],
        layers=True,
        transforms=(),
        height=420,
        brush=gr.Brush(colors=BRUSH_COLOURS, default_color=BRUSH_COLOURS[0], color_mode="defaults"),
        elem_classes="brush-editor",  # app.CSS: the photo starts right of the tool bar, below the label
    )
    with gr.Accordion("Upload a mask instead (white = repaint)", open=False):
        with gr.Row():
            c["image"] = image_upload(
                ctx.limits.max_upload_mb,
                label="Photo (optional: else the editor's)",
                sources=["upload", "clipboard"],
                height=200,
            )
            c["mask_image"] = image_upload(
                ctx.limits.max_upload_mb, label="Mask", sources=["upload", "clipboard"], height=200
            )
    return c


def mask_options() -> dict[str, gr.components.Component]:
    c: dict[str, gr.components.Component] = {}
    with gr.Row():
        c["invert_mask"] = gr.Checkbox(False, label="Invert mask (repaint everything but the brushed area)")
        c["mask_blur"] = gr.Slider(0, MAX_MASK_BLUR, value=4, step=1, label="Mask blur (feather, px)")
    c["masked_content"] = gr.Radio(MASKED_CONTENT_CHOICES, value="original", label="Masked content")
    with gr.Row():
        c["inpaint_area"] = gr.Radio(INPAINT_AREA_CHOICES, value="whole", label="Inpaint area")
        c["padding"] = gr.Slider(0, MAX_PADDING, value=32, step=4, label="Only masked padding (px)")
    c["strength"] = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength", info=STRENGTH_INFO)
    return c


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c = mask_panel(ctx)
            prompts = prompt_block(ctx, "e.g. puffed sleeve in ivory silk organza, photo")
            with gr.Row():  # the main action right under the prompt (Ctrl+Enter in a prompt does the same)
                run = gr.Button("Inpaint", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            c.update(mask_options())
            sampling = sampling_block(ctx)
            image_prompt = image_prompt_box(ctx, "fabric")
            with gr.Row():
                batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Batch size")
                batch_count = gr.Slider(1, ctx.limits.max_batch_count, value=1, step=1, label="Batch count")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            gallery, seed_used, infotext = results_block()
            link_seed(sampling, seed_used, gallery)

    fields = {**c, **field_components(prompts), **field_components(sampling), "batch_size": batch_size,
              "batch_count": batch_count, **image_prompt}  # fmt: skip

    def inpaint(
        editor: dict[str, Any] | None,
        image: str | None,
        mask_image: str | None,
        prompt: str,
        negative_prompt: str,
        invert_mask: bool,
        mask_blur: float,
        masked_content: str,
        inpaint_area: str,
        padding: float,
        strength: float,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        seed: float,
        batch_size: float,
        batch_count: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        ip_adapter_image: list[str] | None = None,  # the image prompt: optional, for API clients and callers too
        ip_adapter_scale: str = "0.6",
        ip_adapter_model: str = "ip-adapter_sd15",
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(InpaintRequest, {**locals(), "image": image_value(editor, image)})
        yield from gallery_outputs(run_events(ctx.board, request, progress, lambda job: calls.run(req, job)))

    run.click(
        ctx.gpu(inpaint),
        inputs=inputs_for(inpaint, fields),
        outputs=[gallery, seed_used, infotext],
        api_name=calls.name,
        concurrency_id="gpu",
        show_progress_on=gallery,  # steps and time left once, on the results
    )
    return Tab(inpaint, fields, gallery, prompt=prompts.prompt, input_image=c["editor"])
