"""The Colourways tab: one print, recoloured into several palettes at once, each exported for the mill."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import gradio as gr

from studio.engine.colourways import (
    AUTO,
    MAX_COLORS,
    MIN_COLORS,
    NO_REPEAT,
    ColourwaysRequest,
    ColourwaysResult,
    swatches,
)
from studio.engine.contract import Result
from studio.errors import StudioError
from studio.palettes import PALETTES_DIR, Palette, library, parse_hex, to_hex
from studio.patterns import UNITS
from studio.tiling import REPEAT_LABELS
from studio.ui.running import cancel_button, finished, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import image_upload
from studio.ui.widgets import UIContext, form_request

REPEAT_CHOICES = [
    ("Auto (the tile's own; none when it records none)", AUTO),
    *[(label.capitalize(), repeat) for repeat, label in REPEAT_LABELS.items()],
    ("None (not a repeat)", NO_REPEAT),
]
PICKERS = MAX_COLORS  # one colour picker per spot colour
_RGB = re.compile(r"rgba?\(\s*([\d.]+)\s*,\s*([\d.]+)\s*,\s*([\d.]+)")


def create(ctx: UIContext, calls: ModeCalls, palettes_dir: Path = PALETTES_DIR) -> Tab:
    offered = library(palettes_dir)  # a broken palette file stops the studio here, naming file and key
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            image = image_upload(
                ctx.limits.max_upload_mb,
                label="Print tile image (send a Textile result here, or upload any print)",
                sources=["upload", "clipboard"],
            )
            colors = gr.Slider(MIN_COLORS, MAX_COLORS, value=6, step=1, label="Spot colours (N)")
            show_spots = gr.Button("Show the spot colours", size="sm")
            spot_swatches = gr.Image(label="Spot colours", format="png", interactive=False, height=60, visible=False)
            spot_table = gr.JSON(visible=False)  # the shown spots: what picked colours map from
            chosen = gr.Dropdown(
                list(offered), value=[], multiselect=True, label="Palettes (one colourway each)", min_width=200
            )
            chosen_info = gr.Markdown()
            with gr.Group():  # one per line: side by side they squeeze into narrow columns on a phone
                keep_order = gr.Checkbox(False, label="Keep light/dark order")
                merge = gr.Checkbox(False, label="Merge spot colours when a palette has fewer colours")
                include_original = gr.Checkbox(True, label="Include the original")
            with gr.Row():  # the main action under what it needs (Ctrl+Enter in a text field does the same)
                run = gr.Button("Make colourways", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            with gr.Accordion("Pick colours by hand, or write your own palettes", open=False):
                gr.Markdown("Show the spot colours, pick a new colour for each, then add them as a colourway.")
                with gr.Row():
                    pickers = [
                        gr.ColorPicker(label=f"Spot {i + 1}", visible=False, min_width=90) for i in range(PICKERS)
                    ]
                with gr.Row():
                    picked_name = gr.Textbox(value="Picked", label="Name of the picked colourway", min_width=160)
                    add_picked = gr.Button("Add the picked colours as a colourway", size="sm", min_width=160)
                mappings = gr.Textbox(
                    "",
                    label="Picked colourways (one per line: Name: #spot>#new, …)",
                    lines=2,
                    placeholder="Night: #1f3b2d>#0e2a47, #e6dcc8>#fbfaf5",
                )
                custom_palettes = gr.Textbox(
                    "",
                    label="Your palettes (one per line: Name: #hex #hex …)",
                    lines=2,
                    placeholder="Mill inks: #1D5C8C #E9D8B4 #F26B5B #FBFAF5 #0E2A47 #9C8C78",
                )
            with gr.Accordion("A palette from a mood photo", open=False):
                mood_image = image_upload(ctx.limits.max_upload_mb, label="Mood photo", sources=["upload", "clipboard"])
                mood_colors = gr.Slider(MIN_COLORS, MAX_COLORS, value=6, step=1, label="Mood photo colours (k)")
                mood_swatches = gr.Image(label="Mood photo palette", format="png", interactive=False, height=60)
            repeat = gr.Radio(REPEAT_CHOICES, value=AUTO, label="Repeat")
            with gr.Accordion("Print size", open=False):
                with gr.Row():
                    physical_width = gr.Number(0, minimum=0, label="Tile width (0 = tile px at the DPI)")
                    physical_height = gr.Number(0, minimum=0, label="Tile height (0 = follow width)")
                with gr.Row():
                    unit = gr.Radio(list(UNITS), value="cm", label="Unit")
                    dpi = gr.Number(300, precision=0, minimum=36, maximum=2400, label="DPI")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):  # stays in view (app.CSS)
            sheet = gr.Image(label="Colourway sheet", format="png", type="filepath", interactive=False)
            notes = gr.Markdown()
            # interactive=False: a static Gallery fires .change when filled (the shell's session results listen)
            gallery = gr.Gallery(
                label="Colourways", format="png", type="filepath", columns=3, height="auto", object_fit="contain",
                interactive=False,
            )  # fmt: skip
            listing = gr.Textbox(label="Palette listing", lines=8, interactive=False, buttons=["copy"])
            files = gr.File(label="Downloads", file_count="multiple", interactive=False)
            infotext = gr.Textbox(label="Parameters", lines=3, interactive=False, buttons=["copy"])

    fields = {
        "image": image,
        "colors": colors,
        "palettes": chosen,
        "custom_palettes": custom_palettes,
        "mappings": mappings,
        "mood_image": mood_image,
        "mood_colors": mood_colors,
        "keep_order": keep_order,
        "merge": merge,
        "include_original": include_original,
        "repeat": repeat,
        "physical_width": physical_width,
        "physical_height": physical_height,
        "unit": unit,
        "dpi": dpi,
    }

    def colourways(
        image: str | None,
        colors: float,
        palettes: list[str] | None,
        custom_palettes: str,
        mappings: str,
        mood_colors: float,
        keep_order: bool,
        merge: bool,
        include_original: bool,
        repeat: str,
        physical_width: float,
        physical_height: float,
        unit: str,
        dpi: float,
        mood_image: str | None = None,  # optional in the API
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(ColourwaysRequest, {**locals(), "palettes": tuple(palettes or ())})
        stream = run_events(
            ctx.board, request, progress, lambda job: calls.run(req, job), desc="Recolouring", what="Colourways"
        )
        result = yield from finished(stream, lambda: (gr.skip(),) * 6)
        if result is not None:  # None: cancelled, what was shown before stays
            yield result_outputs(result)

    def colourways_spots(image: str | None, colors: float) -> tuple[Any, dict[str, Any]]:
        """The tile's spot colours for N: a swatch strip and {"colors": [hex], "pixels": [count]}."""
        try:
            spots = calls.actions["spots"](image, int(colors))
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        table = {"colors": spots.hex, "pixels": list(spots.counts)}
        return gr.update(value=swatches(spots.colors), visible=True), table

    outputs = [gallery, sheet, listing, notes, files, infotext]
    run.click(colourways, inputs=inputs_for(colourways, fields), outputs=outputs, api_name=calls.name,
              show_progress_on=outputs[0])  # fmt: skip
    show_spots.click(
        colourways_spots,
        inputs=inputs_for(colourways_spots, fields),
        outputs=[spot_swatches, spot_table],
        api_name="colourways_spots",
    ).then(fill_pickers, inputs=spot_table, outputs=pickers, queue=False, api_visibility="private")
    add_picked.click(
        add_picked_colourway,
        inputs=[spot_table, mappings, picked_name, *pickers],
        outputs=mappings,
        queue=False,
        api_visibility="private",
    )
    chosen.change(
        lambda names: describe_palettes(offered, names),
        inputs=chosen,
        outputs=chosen_info,
        queue=False,
        api_visibility="private",
    )

    def preview_mood(mood_image: str | None, mood_colors: float) -> Any:
        if not mood_image:
            return None
        try:
            return swatches(calls.actions["mood"](mood_image, int(mood_colors)).colors)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None

    for event in (mood_image.change, mood_colors.release):
        event(preview_mood, inputs=[mood_image, mood_colors], outputs=mood_swatches, api_visibility="private")
    return Tab(colourways, fields, gallery, input_image=image, extras={"sheet": sheet, "listing": listing})


def result_outputs(result: Result) -> tuple[Any, ...]:
    """(gallery, sheet, listing, notes, downloads, parameters) of a finished run."""
    tiles = [str(g.path) for g in result.images]
    infotext = result.images[0].infotext if result.images else ""
    if not isinstance(result, ColourwaysResult):
        return tiles, None, "", "", [], infotext
    files = [
        str(p)
        for p in (
            result.sheet,
            result.listing_file,
            *[q for e in result.exports for q in (e.print_file, e.listing, e.tile.path)],
        )
        if p is not None
    ]
    sheet = str(result.sheet) if result.sheet else None
    return tiles, sheet, result.listing, " ".join(result.notes), list(dict.fromkeys(files)), infotext


def fill_pickers(table: Mapping[str, Any] | None) -> list[Any]:
    colours = list((table or {}).get("colors", []))
    return [
        gr.update(value=colours[i], label=f"Spot {i + 1}: {colours[i]}", visible=True)
        if i < len(colours)
        else gr.update(visible=False)
        for i in range(PICKERS)
    ]


def picked_colour(value: Any) -> str | None:
    """A colour picker's value (`#rrggbb`, `#rgb`, or `rgb(a)(r, g, b, a)`) as `#rrggbb`."""
    text = str(value or "").strip()
    if re.fullmatch(r"#[0-9A-Fa-f]{3}", text):
        text = "#" + "".join(char * 2 for char in text[1:])
    if (color := parse_hex(text)) is not None:
        return to_hex(color)
    match = _RGB.match(text)
    if match:
        r, g, b = (max(0, min(255, round(float(part)))) for part in match.groups())
        return to_hex((r, g, b))
    return None


def add_picked_colourway(table: Mapping[str, Any] | None, text: str, name: str, *colours: Any) -> str:
    """Append `Name: #spot>#new, ...` for the picked colours to the picked colourways."""
    spots = list((table or {}).get("colors", []))
    if not spots:
        raise gr.Error("Show the spot colours first, then pick a new colour for each.")
    pairs = []
    for spot, value in zip(spots, colours, strict=False):
        new = picked_colour(value)
        if new is None:
            raise gr.Error(f"The colour picked for {spot} ({value!r}) is not a colour.")
        pairs.append(f"{spot}>{new}")
    name = re.sub(r"[:;\r\n]", " ", name or "").strip() or "Picked"
    line = f"{name}: {', '.join(pairs)}"
    return f"{text.rstrip()}\n{line}" if text and text.strip() else line


def describe_palettes(offered: Mapping[str, Palette], names: list[str] | None) -> str:
    """The chosen palettes' colours and names, in words."""
    lines = []
    for name in names or []:
        palette = offered.get(name)
        if palette is None:
            continue
        colours = ", ".join(
            f"`{code}` {palette.name_of(i)}".strip() for i, code in enumerate(palette.hex)
        )  # fmt: skip
        lines.append(f"**{palette.name}** ({len(palette.colors)} colours): {colours}")
    return "\n\n".join(lines)
