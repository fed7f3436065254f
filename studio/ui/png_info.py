"""The PNG Info tab: drop an Atelier or A1111 PNG, see it with its parameters, then use its settings in the tab it
belongs to or send the picture on to any tab that takes an image.

The reading is the studio's `Restorer` (the same as the public `/restore` endpoint, kept here with its name and
behaviour): a PNG in; the mode, its request fields and a note out. The file reaches it unopened (a `gr.File`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.images import ImageInputError, open_upload
from studio.ui.shell import TabHandle, fill, send_row

TAB_ID = "png-info"
NOTHING_YET = "Drop a PNG made by Atelier or AUTOMATIC1111 to see its parameters."


def create(handles: list[TabHandle], tabs: gr.Tabs, restore: Callable[[str], Any]) -> None:
    """The tab's content (call it inside its `gr.Tab`, once every mode's tab exists)."""
    by_mode = {h.mode: h for h in handles}
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=300):
            upload = gr.File(label="Atelier or A1111 PNG", file_types=[".png"], type="filepath", height=120)
            shown = gr.Gallery(
                label="The dropped PNG",
                format="png",
                type="filepath",
                columns=1,
                height=320,
                object_fit="contain",
                interactive=False,
                visible=False,  # no empty box before there is a picture
            )
        with gr.Column(scale=6, min_width=300):
            note = gr.Markdown(NOTHING_YET)
            parameters = gr.Textbox(label="Parameters stored in the PNG", lines=6, interactive=False,
                                    buttons=["copy"])  # fmt: skip
            use = gr.Button("Use these settings", variant="primary", visible=False)
            with gr.Column(visible=False) as sends:  # shown with a picture to send
                send_row(shown, handles, tabs)  # the picture itself (with its prompt) to each tab that takes an image
    restored_mode = gr.Textbox(label="Mode", visible=False)
    restored_values = gr.JSON(label="Request fields", visible=False)
    form = [tabs, *{c for h in handles for c in h.fields.values()}]

    def read(path: str | None) -> tuple[Any, ...]:
        """Show a dropped PNG and what it records; the button names the tab its settings go to."""
        hide = gr.Column(visible=False)
        if not path:
            return gr.Gallery(value=None, visible=False), "", NOTHING_YET, gr.Button(visible=False), "", None, hide
        hidden = gr.Gallery(value=None, visible=False)
        try:
            text = stored_parameters(path)
        except ImageInputError as exc:  # not a picture at all: nothing to show
            gr.Warning(str(exc))
            return hidden, "", str(exc), gr.Button(visible=False), "", None, hide
        picture, show = gr.Gallery(value=[path], visible=True), gr.Column(visible=True)
        try:
            restored = restore(path)
        except StudioError as exc:
            gr.Warning(str(exc))
            return picture, text, str(exc), gr.Button(visible=False), "", None, show
        handle = by_mode.get(restored.mode) or handles[0]
        button = gr.Button(f"Use these settings in {handle.label}", visible=True)
        return picture, text, found(handle.label, restored), button, handle.mode, restored.values, show

    def apply(mode: str, values: dict[str, Any] | None) -> dict[Any, Any]:
        handle = by_mode.get(mode or "")
        if handle is None or values is None:
            raise gr.Error("Drop a PNG with parameters first.")
        updates = fill(handle, values)
        updates[tabs] = gr.Tabs(selected=handle.mode)
        gr.Info(f"{handle.label}'s form now holds the PNG's settings; press its main button to make it again.")
        return updates

    def read_png(png: str | None) -> tuple[str, dict[str, Any], str]:
        """The tab (mode name) and request fields a PNG's `parameters` metadata restores, with the note."""
        if not png:
            raise gr.Error("Send a PNG file (Atelier or AUTOMATIC1111) as `png`.")
        try:
            restored = restore(png)
        except StudioError as exc:
            raise gr.Error(str(exc)) from None
        return restored.mode, restored.values, restored.note

    upload.change(read, inputs=upload, outputs=[shown, parameters, note, use, restored_mode, restored_values, sends],
                  concurrency_limit=None, api_visibility="private")  # fmt: skip
    use.click(apply, inputs=[restored_mode, restored_values], outputs=form, concurrency_limit=None,
              api_visibility="private")  # fmt: skip
    gr.on([], read_png, inputs=upload, outputs=[restored_mode, restored_values, note], api_name="restore")


def found(label: str, restored: Any) -> str:
    """What the PNG holds, before anything is filled: the tab, how many settings, what is left out, the model."""
    parts = [f"Settings for **{label}**: {len(restored.values)} field(s) can be filled."]
    if restored.ignored:
        parts.append(f"Not used here: {', '.join(restored.ignored)}.")
    if restored.model:
        parts.append(f"Made with model {restored.model}; the studio keeps its current model.")
    return " ".join(parts)


def stored_parameters(path: str) -> str:
    """The PNG's `parameters` text as stored ("" when it has none), read through the studio's checked opener
    (a hostile file raises ImageInputError in words)."""
    from studio.metadata import read_parameters

    return read_parameters(open_upload(path, "PNG")) or ""
