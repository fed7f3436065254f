"""The Textile tab: seamless repeat prints, previewed as a repeat and exported for print."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from studio import tiling
from studio.engine.contract import Result
from studio.engine.textile import DEFAULT_NEGATIVE, MAX_COLORS, TextileRequest, TextileResult, print_size
from studio.errors import StudioError
from studio.patterns import UNITS, physical_length
from studio.tiling import REPEAT_LABELS
from studio.ui.image_prompt_box import image_prompt_box
from studio.ui.running import cancel_button, finished, results_of, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import image_upload
from studio.ui.upscale_tab import upscaler_choices
from studio.ui.widgets import (
    UIContext,
    field_components,
    form_request,
    link_seed,
    prompt_block,
    results_block,
    sampling_block,
)

DEFAULT_PRINT_CM = 30.0  # a realistic repeat on fabric: a 30 cm tile at 300 DPI is a 3,543 px print file
SWATCH_CLOSED = "Make an existing swatch seamless"
SWATCH_SET = "Make an existing swatch seamless — a swatch is set: Generate reworks it (clear it with ×)"
REPEAT_CHOICES = [(label.capitalize(), repeat) for repeat, label in REPEAT_LABELS.items()]


def describe_print(
    width: float, height: float, physical_width: float, physical_height: float, unit: str, dpi: float
) -> str:
    """One line for the designer: the tile's physical size and the print file's pixels."""
    try:
        req = TextileRequest(
            "",
            physical_width=float(physical_width or 0),
            physical_height=float(physical_height or 0),
            unit=unit,
            dpi=int(dpi or 300),
        )
        out_w, out_h = print_size(req, int(width), int(height))
    except (StudioError, ValueError, TypeError, ZeroDivisionError) as exc:
        return f"⚠ {exc}"
    size = " x ".join(f"{physical_length(px, unit, req.dpi):.2f}" for px in (out_w, out_h))
    return f"One tile prints at **{size} {unit}**: print file {out_w} x {out_h} px at {req.dpi} DPI."


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            prompts = prompt_block(ctx, "e.g. seamless floral print, roses and leaves, flat colours", DEFAULT_NEGATIVE)
            with gr.Row():  # the main action right under the prompt (Ctrl+Enter in a prompt does the same)
                run = gr.Button("Generate print", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            repeat = gr.Radio(REPEAT_CHOICES, value="full", label="Repeat")
            step_w, step_h = repeat_steps("full")
            with gr.Row():
                width = gr.Slider(
                    64, ctx.limits.max_side, value=max(ctx.native_size, 128), step=step_w, label="Tile width (px)"
                )
                height = gr.Slider(
                    64, ctx.limits.max_side, value=max(ctx.native_size, 128), step=step_h, label="Tile height (px)"
                )
            with gr.Accordion("Print size", open=False):
                with gr.Row():
                    physical_width = gr.Number(DEFAULT_PRINT_CM, minimum=0, label="Tile width (0 = tile px at the DPI)")
                    physical_height = gr.Number(0, minimum=0, label="Tile height (0 = follow width)")
                with gr.Row():
                    unit = gr.Radio(list(UNITS), value="cm", label="Unit")
                    dpi = gr.Number(300, precision=0, minimum=36, maximum=2400, label="DPI")
                print_info = gr.Markdown(
                    describe_print(max(ctx.native_size, 128), max(ctx.native_size, 128), DEFAULT_PRINT_CM, 0, "cm", 300)
                )
                choices, default = upscaler_choices(calls.actions.get("upscalers"))
                upscaler = gr.Dropdown(
                    choices, value=default, allow_custom_value=True, label="Print upscaler (model file, or Lanczos)",
                    info="How the tile is enlarged to the print file: a super-resolution model from the upscalers "
                    "folder (seamless), or Lanczos resampling.",
                )  # fmt: skip
                detail_strength = gr.Slider(
                    0, 1, value=0, step=0.05, label="Print detail strength (0 = none; ~0.3 adds real texture)"
                )
                colors = gr.Slider(0, MAX_COLORS, value=0, step=1, label="Colourway: spot colours (0 = off)")
            with gr.Accordion(SWATCH_CLOSED, open=False) as swatch_box:
                image = image_upload(
                    ctx.limits.max_upload_mb, label="Swatch (fabric photo)", sources=["upload", "clipboard"]
                )
                strength = gr.Slider(0.05, 1.0, value=0.6, step=0.05, label="Denoising strength")
            sampling = sampling_block(ctx)
            image_prompt = image_prompt_box(ctx)
            batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Tiles per run")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            preview = gr.Image(label="Repeat preview", format="png", type="filepath", interactive=False)
            gallery, seed_used, infotext = results_block("Tiles")
            link_seed(sampling, seed_used, gallery)
            with gr.Row():
                palette_image = gr.Image(label="Palette", format="png", type="filepath", interactive=False, height=80)
                palette_hex = gr.Textbox(label="Palette (hex)", interactive=False, buttons=["copy"])
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)

    fields = {
        **image_prompt,
        **field_components(prompts),
        **field_components(sampling),
        "repeat": repeat,
        "width": width,
        "height": height,
        "batch_size": batch_size,
        "image": image,
        "strength": strength,
        "physical_width": physical_width,
        "physical_height": physical_height,
        "unit": unit,
        "dpi": dpi,
        "colors": colors,
        "upscaler": upscaler,
        "detail_strength": detail_strength,
    }

    def textile(
        prompt: str,
        negative_prompt: str,
        repeat: str,
        width: float,
        height: float,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        seed: float,
        batch_size: float,
        image: str | None,
        strength: float,
        physical_width: float,
        physical_height: float,
        unit: str,
        dpi: float,
        colors: float,
        upscaler: str,
        detail_strength: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        ip_adapter_image: list[str] | None = None,  # the image prompt: optional, for API clients and callers too
        ip_adapter_scale: str = "0.6",
        ip_adapter_model: str = "ip-adapter_sd15",
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(TextileRequest, locals())
        stream = run_events(ctx.board, request, progress, lambda job: calls.run(req, job))
        result = yield from finished(stream, lambda: (gr.skip(),) * 7)
        shown = results_of(result, [])
        if result is None or shown is None:  # cancelled (or nothing made): what was shown before stays
            return
        tiles, seed_used, infotext = shown
        yield (tiles, *export_outputs(result), seed_used, infotext)

    outputs = [gallery, preview, palette_image, palette_hex, files, seed_used, infotext]
    size_inputs: list[gr.Slider | gr.Number | gr.Radio] = [width, height, physical_width, physical_height, unit, dpi]
    repeat.change(fit_to_repeat, inputs=[repeat, width, height], outputs=[width, height], queue=False,
                  api_visibility="private")  # fmt: skip
    # A swatch changes what Generate does: whenever one is set, its section opens and says so.
    image.change(lambda value: gr.Accordion(open=bool(value), label=SWATCH_SET if value else SWATCH_CLOSED),
                 inputs=image, outputs=swatch_box, queue=False, api_visibility="private")  # fmt: skip
    for component in size_inputs:
        component.change(describe_print, inputs=size_inputs, outputs=print_info, queue=False, api_visibility="private")
    run.click(ctx.gpu(textile), inputs=inputs_for(textile, fields), outputs=outputs, api_name=calls.name,
              concurrency_id="gpu")  # fmt: skip
    return Tab(textile, fields, gallery, prompt=prompts.prompt, input_image=image)


def repeat_steps(repeat: str) -> tuple[int, int]:
    """Slider steps that give only tile sizes the repeat can wrap exactly on an SD1.5-family model (3 downsamplings,
    VAE factor 8: multiples of 64, or 128 along a half-drop's height and a brick's width)."""
    step_w, step_h = tiling.granule(3, 8, repeat)
    return max(step_w, 64), max(step_h, 64)


def fit_to_repeat(repeat: str, width: float, height: float) -> tuple[gr.Slider, gr.Slider]:
    """The size sliders for a repeat: their steps, and the current sizes rounded up to them."""
    step_w, step_h = repeat_steps(repeat)
    return (gr.Slider(step=step_w, value=-(-int(width) // step_w) * step_w),
            gr.Slider(step=step_h, value=-(-int(height) // step_h) * step_h))  # fmt: skip


def export_outputs(result: Result | None) -> tuple[str | None, str | None, str, list[str]]:
    """Repeat preview, palette swatches and hex list of the first tile; every file of every tile to download."""
    exports = result.exports if isinstance(result, TextileResult) else []
    if not exports:
        return None, None, "", []
    first = exports[0]
    files = [
        str(p)
        for e in exports
        for p in (e.tile.path, e.print_file, e.preview, e.colourway, e.palette_image, e.palette_text)
        if p is not None
    ]
    palette = str(first.palette_image) if first.palette_image else None
    return str(first.preview), palette, " ".join(first.palette), list(dict.fromkeys(files))
