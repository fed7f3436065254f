"""The Upscale tab: any result (Send to Upscale) or upload enlarged by a super-resolution model, then detailed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import gradio as gr

from studio.engine.upscale import AUTO, DETAIL_OVERLAP, MAX_SCALE, MAX_SIDE, MAX_TILE, UpscaleRequest
from studio.schedulers import DEFAULT_SAMPLER, SAMPLERS
from studio.tiling import REPEAT_LABELS
from studio.ui.running import cancel_button, finished, results_of, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import image_upload
from studio.ui.widgets import UIContext, form_request, results_block

LANCZOS = "Lanczos"  # studio.upscale.LANCZOS: the UI never imports the model side
REPEAT_CHOICES = [
    ("Auto (the image's own repeat; none when it records none)", AUTO),
    *[(label.capitalize(), repeat) for repeat, label in REPEAT_LABELS.items()],
    ("None (not a repeat)", "none"),
]


FOLDER_DEFAULT = ("The folder's default (RealESRGAN_x4plus.pth, else its first file)", "")


def upscaler_choices(listing: Callable[[], Any] | None) -> tuple[list[Any], str]:
    """The upscalers folder's files (and Lanczos), and the default: the first file, or Lanczos without one."""
    files = list((listing() if listing is not None else None) or [])
    return [*files, LANCZOS], (files[0] if files else LANCZOS)


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    listed, _ = upscaler_choices(calls.actions.get("upscalers"))
    # The folder's default file, looked up at each run (a file added later is used; none: the run says how to get
    # one). Textile's print export defaults to what is there when the page is built, Lanczos without a file.
    choices, default = [FOLDER_DEFAULT, *listed], ""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            image = image_upload(
                ctx.limits.max_upload_mb,
                label="Image to upscale (send any result here)",
                sources=["upload", "clipboard"],
            )
            with gr.Row():  # the main action under what it needs
                run = gr.Button("Upscale", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            upscaler = gr.Dropdown(
                choices, value=default, allow_custom_value=True, label="Upscaler (model file, or Lanczos)",
                info="Model files live in the upscalers folder (STUDIO_UPSCALERS_DIR); see the README.",
            )  # fmt: skip
            scale = gr.Slider(1, MAX_SCALE, value=4, step=0.5, label="Upscale by (x)")
            with gr.Row():
                width = gr.Number(
                    0, precision=0, minimum=0, maximum=MAX_SIDE, label="Or a target width (px, 0 = by scale)"
                )
                height = gr.Number(0, precision=0, minimum=0, maximum=MAX_SIDE, label="Target height (px, 0 = follow)")
            repeat = gr.Radio(REPEAT_CHOICES, value=AUTO, label="Repeat (seamless tiles stay seamless)")
            with gr.Accordion("Detail pass (img2img in tiles, like A1111's SD upscale)", open=False):
                detail_strength = gr.Slider(0, 1, value=0, step=0.05, label="Detail strength (0 = no detail pass)")
                prompt = gr.Textbox("", label="Detail prompt (empty: the image's own prompt)", lines=2)
                negative_prompt = gr.Textbox("", label="Negative prompt (empty: the image's own)", lines=1)
                with gr.Row():
                    steps = gr.Slider(1, ctx.limits.max_steps, value=20, step=1, label="Detail steps")
                    guidance = gr.Slider(0, 30, value=5, step=0.5, label="Detail CFG scale")
                with gr.Row():
                    scheduler = gr.Dropdown(
                        list(SAMPLERS), value=DEFAULT_SAMPLER, label="Detail sampler", min_width=200
                    )
                    seed = gr.Number(-1, precision=0, label="Detail seed (-1 = random)", min_width=160)
                with gr.Row():
                    tile_size = gr.Slider(0, MAX_TILE, value=0, step=64, label="Tile size (px, 0 = model's native)")
                    tile_overlap = gr.Slider(0, 256, value=DETAIL_OVERLAP, step=8, label="Tile overlap (px)")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            gallery, seed_used, infotext = results_block("Upscaled")
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)

    fields = {
        "image": image,
        "upscaler": upscaler,
        "scale": scale,
        "width": width,
        "height": height,
        "repeat": repeat,
        "detail_strength": detail_strength,
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "scheduler": scheduler,
        "seed": seed,
        "tile_size": tile_size,
        "tile_overlap": tile_overlap,
    }

    def upscale(
        image: str | None,
        upscaler: str,
        scale: float,
        width: float,
        height: float,
        repeat: str,
        detail_strength: float,
        prompt: str,
        negative_prompt: str,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        seed: float,
        tile_size: float,
        tile_overlap: float,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(UpscaleRequest, locals())
        stream = run_events(ctx.board, request, progress, lambda job: calls.run(req, job), desc="Upscaling",
                            what="Upscale")  # fmt: skip
        result = yield from finished(stream, lambda: (gr.skip(),) * 4)
        shown = results_of(result, [])
        if shown is None:  # cancelled: what was shown before stays
            return
        paths, seed_value, parameters = shown
        yield paths, paths, seed_value, parameters

    outputs = [gallery, files, seed_used, infotext]
    run.click(ctx.gpu(upscale), inputs=inputs_for(upscale, fields), outputs=outputs, api_name=calls.name,
              concurrency_id="gpu")  # fmt: skip
    return Tab(upscale, fields, gallery, input_image=image)
