"""The "Image prompt" accordion every generating tab shares: pictures to look like, a weight per picture and the
IP-Adapter model. Its components are named as the request fields (`ip_adapter_image`, `ip_adapter_scale`,
`ip_adapter_model`), so a tab adds `**image_prompt_box(ctx)` to its form and the three parameters to its handler.

API: `ip_adapter_image` is a list of files (gradio_client: `[handle_file(a), handle_file(b)]`), each capped like
every other upload (studio.ui.uploads: never opened by Gradio, decoded by the studio); `ip_adapter_scale` is text,
one weight per picture separated by commas ("0.7, 0.3"), or one weight for all; `ip_adapter_model` a model name.
"""

from __future__ import annotations

import gradio as gr

from studio.ui.uploads import image_files_upload
from studio.ui.widgets import UIContext

MODEL_CHOICES = [
    ("Standard: the picture's look and feel", "ip-adapter_sd15"),
    ("Plus: closer to the picture's details", "ip-adapter-plus_sd15"),
]
MAX_PICTURES = 4  # studio.ip_adapter.MAX_IMAGES (the UI imports no torch code)
HINTS = {
    "plain": "Drop one picture for **variations** (a short prompt or none), two or more to **mix** them "
    '(a weight each), or add a prompt to **change** it ("this coat, in red wool").',
    "fabric": "**Fabric from a swatch:** drop a fabric photo here; the garment's lines (Restyle) or your mask "
    "(Inpaint) keep the shape, the swatch gives the fabric. Weight 0.6–0.9 is a good start.",
}


def pictures_input(max_upload_mb: int) -> gr.File:
    """Several pictures as files, each checked for size only (never decoded by Gradio)."""
    return image_files_upload(
        max_upload_mb,
        max_files=MAX_PICTURES,
        what="pictures in the image prompt",
        label="Pictures to look like (image prompt)",
        height=140,
    )


def describe(pictures: list[str] | None, weights: str) -> str:
    """What the next run will do with the image prompt, in words."""
    count = len(pictures or [])
    if not count:
        return "No picture: the prompt alone decides."
    parts = [part for part in (weights or "").replace(";", ",").split(",") if part.strip()]
    if len(parts) not in (0, 1, count):
        return f"{count} pictures but {len(parts)} weights: give one weight per picture, or one for all."
    shown = ", ".join(p.strip() for p in parts) if parts else "0.6 each"
    return f"{count} picture{'s' * (count > 1)} will guide the look (weights: {shown})."


def image_prompt_box(ctx: UIContext, hint: str = "plain") -> dict[str, gr.components.Component]:
    """The accordion; returns its form components by request field name."""
    with gr.Accordion("Image prompt: look like this picture", open=False):
        gr.Markdown(HINTS[hint])
        pictures = pictures_input(ctx.limits.max_upload_mb)
        with gr.Row():
            weights = gr.Textbox(
                "0.6",
                label="Weight per picture (image prompt)",
                info="0 = ignore, 0.6 = a good mix with the prompt, 1 = follow the picture. "
                "Several pictures: 0.7, 0.3.",
            )
            model = gr.Radio(MODEL_CHOICES, value="ip-adapter_sd15", label="Image prompt model")
        status = gr.Markdown(describe(None, "0.6"))
    for event in (pictures.change, weights.change):
        event(describe, inputs=[pictures, weights], outputs=status, queue=False, api_visibility="private")
    return {"ip_adapter_image": pictures, "ip_adapter_scale": weights, "ip_adapter_model": model}
