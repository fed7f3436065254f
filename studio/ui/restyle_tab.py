"""The Restyle tab: keep a look's lines (a photo's edges, line art, outlines or pose, or a sketch) and change the
style with a prompt; up to two more pictures steer it too ("More control")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeVar

import gradio as gr
from PIL import Image

from studio import control_units, edges
from studio.engine.restyle import RestyleRequest
from studio.errors import StudioError
from studio.tiling import REPEAT_LABELS
from studio.ui.image_prompt_box import image_prompt_box
from studio.ui.running import cancel_button, gallery_outputs, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import image_files_upload, image_upload
from studio.ui.widgets import (
    UIContext,
    as_int,
    field_components,
    form_request,
    link_seed,
    prompt_block,
    results_block,
    sampling_block,
)

PREPROCESSOR_CHOICES = [
    ("Soft lines of a photo (HED)", "hed"),
    ("Clean lines, fewer texture lines (HED safe)", "hed_safe"),
    ("Line art: every seam and fold (lineart)", "lineart"),
    ("Line art: main strokes only (lineart coarse)", "lineart_coarse"),
    ("Sharp outlines (canny)", "canny"),
    ("The model's pose (openpose)", "openpose"),
    ("My image already is a line sketch / edge map", "none"),
]
MODEL_CHOICES = [
    ("Matches the lines (automatic)", "auto"),
    ("Soft edges (HED)", "hed"),
    ("Line art", "lineart"),
    ("Outlines (canny)", "canny"),
    ("Pose (openpose)", "openpose"),
]
EXTRA_UNITS = (2, 3)
UNIT_WIDGETS = ("preprocessor", "controlnet_conditioning_scale", "control_guidance_start", "control_guidance_end")
LINES_NAMES = {"hed": "HED", "hed_safe": "HED safe", "lineart": "line art", "lineart_coarse": "coarse line art",
               "canny": "canny", "openpose": "open pose"}  # fmt: skip
REPEAT_CHOICES = [("Off", "off"), *((label.capitalize(), repeat) for repeat, label in REPEAT_LABELS.items())]
SIZE_NOTE = (
    "**Output size** is what you get; 0 = auto (your image's aspect ratio at the model's native size). "
    "**Line detail** (under *Line settings*) only sets how closely the lines are traced from your image."
)


def _optional_size(value: Any, name: str) -> int | None:
    return as_int(value, name) or None


def _resolution(pixel_perfect: bool, preprocessor_resolution: Any) -> int | None:
    return None if pixel_perfect else as_int(preprocessor_resolution, "Preprocessor resolution")


def _repeat(value: str | None) -> str | None:
    return None if value in (None, "", "off") else value


ComponentT = TypeVar("ComponentT", bound=gr.components.Component)


def _as(kind: type[ComponentT], component: gr.components.Component) -> ComponentT:
    """A `control_panel` component as the class it was built as (the dict holds them by their common base)."""
    if not isinstance(component, kind):
        raise TypeError(f"expected a {kind.__name__}, got a {type(component).__name__}")
    return component


def _use_as_sketch(edge: str | None, preprocessor: str, model: str) -> tuple[str, str, bool, str]:
    """Put the previewed map (or one edited outside and re-uploaded) in as the input, used as drawn, followed by
    the ControlNet it was made for."""
    if edge is None:
        raise gr.Error("Preview the lines first (Preview the lines), then use them as your sketch.")
    kind = model if model not in (None, "auto") else control_units.PREPROCESSOR_MODELS.get(preprocessor, "hed")
    return edge, "none", False, kind


def units_from_widgets(current: Any, *values: Any) -> list[dict[str, Any]]:
    """`controlnet_units` from the "More control" widgets (four per unit, UNIT_WIDGETS); keys the widgets do not
    show (a restored unit's invert or model) are kept. A unit set to Off is left out."""
    previous = [dict(unit) for unit in current] if isinstance(current, list) else []
    units = []
    for index in range(len(EXTRA_UNITS)):
        row = dict(zip(UNIT_WIDGETS, values[index * len(UNIT_WIDGETS) : (index + 1) * len(UNIT_WIDGETS)], strict=True))
        if row["preprocessor"] in (None, "off"):
            continue
        unit = previous[index] if index < len(previous) and isinstance(previous[index], dict) else {}
        if unit.get("preprocessor") != row["preprocessor"]:  # another kind of lines: its own defaults
            unit = {}
        units.append({**unit, **{key: value for key, value in row.items() if value is not None}})
    return units


def widgets_from_units(units: Any) -> list[Any]:
    """The "More control" widgets' values for a `controlnet_units` list (a restored PNG, a preset)."""
    units = units if isinstance(units, list) else []
    values: list[Any] = []
    for index in range(len(EXTRA_UNITS)):
        unit = units[index] if index < len(units) and isinstance(units[index], dict) else None
        if unit is None:
            values += ["off", 1.0, 0.0, 1.0]
            continue
        values += [
            unit.get("preprocessor", "hed"),
            unit.get("controlnet_conditioning_scale", 1.0),
            unit.get("control_guidance_start", 0.0),
            unit.get("control_guidance_end", 1.0),
        ]
    return values


def more_control(ctx: UIContext) -> dict[str, gr.components.Component]:
    """Units 2 and 3: their pictures (`control_image`), their widgets, and the list sent (`controlnet_units`)."""
    widgets: list[gr.Dropdown | gr.Slider] = []
    with gr.Accordion("More control (up to 3)", open=False):
        gr.Markdown(
            "Steer with up to two more pictures, e.g. the pose of one photo and the line art of a sketch. "
            "Add the pictures in order: the first follows unit 2, the second unit 3."
        )
        pictures = image_files_upload(
            ctx.limits.max_upload_mb, value=[], label="Pictures for units 2 and 3"
        )  # an initial value: API callers may leave it out
        for number in EXTRA_UNITS:
            with gr.Row():
                widgets += [
                    gr.Dropdown([("Off", "off"), *PREPROCESSOR_CHOICES], value="off", label=f"Unit {number}: lines"),
                    gr.Slider(0, 2, value=1.0, step=0.05, label=f"Unit {number}: strength"),
                    gr.Slider(0, 1, value=0.0, step=0.05, label="Guidance start"),
                    gr.Slider(0, 1, value=1.0, step=0.05, label="Guidance end"),
                ]
        units = gr.JSON([], label="Units 2 and 3 as sent (controlnet_units)")
    for widget in widgets:  # a designer's change rewrites the list; a restored list resets the widgets
        widget.input(units_from_widgets, inputs=[units, *widgets], outputs=units, queue=False,
                     api_visibility="private")  # fmt: skip
    units.change(widgets_from_units, inputs=units, outputs=widgets, queue=False, api_visibility="private")
    return {"control_image": pictures, "controlnet_units": units}


def control_panel(ctx: UIContext) -> dict[str, gr.components.Component]:
    """Input, preprocessing and ControlNet settings (the left half of the form)."""
    c: dict[str, gr.components.Component] = {}
    c["image"] = image_upload(
        ctx.limits.max_upload_mb, label="Photo or sketch", sources=["upload", "clipboard"], height=320
    )
    c["preprocessor"] = gr.Radio(PREPROCESSOR_CHOICES, value="hed", label="Lines taken from (preprocessor)")
    c["invert"] = gr.Checkbox(False, label="Invert (dark lines on light paper)", visible=False)
    c["model"] = gr.Dropdown(
        MODEL_CHOICES, value="auto", label="Lines followed as (ControlNet)",
        info="Automatic follows the choice above; for your own map, say what it shows.",
    )  # fmt: skip
    with gr.Row():
        c["preview"] = gr.Button("Preview the lines", size="sm")
        c["use_edges"] = gr.Button("Use these lines as my sketch", size="sm")
    c["edge_map"] = image_upload(
        ctx.limits.max_upload_mb, label="Lines the studio follows (edge map)", format="png", interactive=False,
        height=256, visible=False,  # shown once previewed: no empty box before
    )  # fmt: skip
    c["edge_note"] = gr.Markdown("")
    c["controlnet_conditioning_scale"] = gr.Slider(
        0, 2, value=1.0, step=0.05, label="Edge strength (control weight)",
        info="How firmly the result keeps your lines: 0 ignores them, 1 follows them, 2 insists.",
    )  # fmt: skip
    with gr.Accordion("Line settings (advanced)", open=False):
        with gr.Row():
            c["pixel_perfect"] = gr.Checkbox(
                True, label="Pixel perfect", info="Trace the lines at the output's own size (recommended)."
            )
            c["preprocessor_resolution"] = gr.Slider(
                64, 2048, value=ctx.native_size, step=64, interactive=False,
                label="Line detail (preprocessor resolution, px)",
                info="How closely the lines are traced when Pixel perfect is off: higher = finer lines.",
            )  # fmt: skip
        c["guess_mode"] = gr.Checkbox(
            False, label="Guess mode",
            info="Let the lines lead even when the prompt is short or vague (the prompt then guides less).",
        )  # fmt: skip
        with gr.Row():
            c["low_threshold"] = gr.Slider(1, 255, value=100, step=1, label="Outline low threshold (canny)")
            c["high_threshold"] = gr.Slider(1, 255, value=200, step=1, label="Outline high threshold (canny)",
                                            info="Lower thresholds keep fainter outlines.")  # fmt: skip
        with gr.Row():
            c["control_guidance_start"] = gr.Slider(
                0, 1, value=0.0, step=0.05, label="Guidance start", info="When the lines start to guide (0 = at once)."
            )
            c["control_guidance_end"] = gr.Slider(
                0, 1, value=1.0, step=0.05, label="Guidance end", info="When they let go (1 = to the last step)."
            )
    return c


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            c = control_panel(ctx)
            c.update(more_control(ctx))
            prompts = prompt_block(ctx, "e.g. fashion illustration, silk evening gown, gouache, runway light")
            with gr.Row():  # the main action right under the prompt (Ctrl+Enter in a prompt does the same)
                run = gr.Button("Restyle", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            sampling = sampling_block(ctx)
            image_prompt = image_prompt_box(ctx, "fabric")
            gr.Markdown(SIZE_NOTE)
            with gr.Row():
                width = gr.Slider(0, ctx.limits.max_side, value=0, step=8, label="Width (0 = auto)")
                height = gr.Slider(0, ctx.limits.max_side, value=0, step=8, label="Height (0 = auto)")
            with gr.Row():
                batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Batch size")
                batch_count = gr.Slider(1, ctx.limits.max_batch_count, value=1, step=1, label="Batch count")
            repeat = gr.Dropdown(REPEAT_CHOICES, value="off", label="Repeat (seamless print, as in Textile)")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            gallery, seed_used, infotext = results_block()
            link_seed(sampling, seed_used, gallery)

    controls = {name: c[name] for name in c if name not in ("preview", "use_edges", "edge_map", "edge_note")}
    fields = {**controls, **field_components(prompts), **field_components(sampling), "batch_size": batch_size,
              "batch_count": batch_count, "width": width, "height": height, "repeat": repeat,
              **image_prompt}  # fmt: skip

    def restyle(
        image: Any,
        preprocessor: str,
        invert: bool,
        pixel_perfect: bool,
        preprocessor_resolution: float,
        controlnet_conditioning_scale: float,
        control_guidance_start: float,
        control_guidance_end: float,
        guess_mode: bool,
        prompt: str,
        negative_prompt: str,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        seed: float,
        batch_size: float,
        batch_count: float,
        width: float,
        height: float,
        repeat: str,
        # added with "More control": after the first unit's fields, so positional API calls keep working
        model: str,
        low_threshold: float,
        high_threshold: float,
        controlnet_units: Any,
        control_image: list[str] | None,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        ip_adapter_image: list[str] | None = None,  # the image prompt: optional, for API clients and callers too
        ip_adapter_scale: str = "0.6",
        ip_adapter_model: str = "ip-adapter_sd15",
    ) -> Iterator[tuple[Any, ...]]:
        if image is None:
            raise gr.Error("Upload a photo or a sketch first (or send a result here from another tab).")
        form = {
            **locals(),
            "invert": bool(invert) and preprocessor == "none",
            "preprocessor_resolution": _resolution(pixel_perfect, preprocessor_resolution),
            "repeat": _repeat(repeat),
            "controlnet_units": controlnet_units or [],
            "control_image": control_image or [],
        }
        try:
            req = form_request(RestyleRequest, form)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        yield from gallery_outputs(run_events(ctx.board, request, progress, lambda job: calls.run(req, job)))

    def preview_edges(
        image: Any,
        preprocessor: str,
        invert: bool,
        pixel_perfect: bool,
        preprocessor_resolution: float,
        width: float,
        height: float,
        repeat: str,
        low_threshold: float = 100,
        high_threshold: float = 200,
    ) -> tuple[Image.Image, str]:
        if image is None:
            raise gr.Error("Upload a photo or a sketch first, then preview its edges.")
        resolution = _resolution(pixel_perfect, preprocessor_resolution)
        invert = bool(invert) and preprocessor == "none"
        try:
            edge = calls.actions["detect_edges"](
                image,
                preprocessor,
                resolution,
                invert,
                _optional_size(width, "Width"),
                _optional_size(height, "Height"),
                _repeat(repeat),
                as_int(low_threshold, "Outline low threshold"),
                as_int(high_threshold, "Outline high threshold"),
            )
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        if preprocessor == "none" and not invert and edges.coverage(edge) > 0.5:
            gr.Info("Most of this map is bright. If your sketch is dark lines on light paper, tick Invert.")
        how = (
            "your own lines"
            if preprocessor == "none"
            else f"{LINES_NAMES[preprocessor]} at {resolution or edges.pixel_perfect(*edge.size)} px"
            + (" (pixel perfect)" if pixel_perfect else "")
        )
        return edge, f"Output {edge.width}x{edge.height}, edges from {how}."

    inputs = inputs_for(restyle, fields)
    preview_inputs = inputs_for(preview_edges, fields)
    run.click(
        ctx.gpu(restyle),
        inputs=inputs,
        outputs=[gallery, seed_used, infotext],
        api_name=calls.name,
        concurrency_id="gpu",
        show_progress_on=gallery,  # steps and time left once, on the results
    )
    prompts.prompt.submit(
        ctx.gpu(restyle),
        inputs=inputs,
        outputs=[gallery, seed_used, infotext],
        api_visibility="private",
        concurrency_id="gpu",
        show_progress_on=gallery,
    )
    _as(gr.Button, c["preview"]).click(
        ctx.gpu(preview_edges),
        inputs=preview_inputs,
        outputs=[c["edge_map"], c["edge_note"]],
        api_name="restyle_edges",
        concurrency_id="gpu",
    ).success(lambda: gr.Image(visible=True), outputs=c["edge_map"], queue=False, api_visibility="private")
    _as(gr.Button, c["use_edges"]).click(
        _use_as_sketch,
        inputs=[c["edge_map"], c["preprocessor"], c["model"]],
        outputs=[c["image"], c["preprocessor"], c["invert"], c["model"]],
        api_visibility="private",
    )
    _as(gr.Radio, c["preprocessor"]).change(
        lambda p: gr.Checkbox(visible=p == "none"),
        inputs=c["preprocessor"],
        outputs=c["invert"],
        queue=False,
        api_visibility="private",
    )
    _as(gr.Checkbox, c["pixel_perfect"]).change(
        lambda on: gr.Slider(interactive=not on),
        inputs=c["pixel_perfect"],
        outputs=c["preprocessor_resolution"],
        queue=False,
        api_visibility="private",
    )
    return Tab(restyle, fields, gallery, prompt=prompts.prompt, input_image=c["image"],
               extras={"preview_handler": preview_edges, "edge_map": c["edge_map"]})  # fmt: skip
