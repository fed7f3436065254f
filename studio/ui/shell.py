"""The studio around the tabs: "Send to" between modes, this session's results, model switcher, PNG restore.

Tabs stay independent: each `create()` returns its handler, its inputs and its gallery (and `input_image` when it
takes one); the shell maps a handler's parameter names (diffusers names) to its input components, so PNG restore
and presets fill forms by field name without knowing any tab's layout.
"""

from __future__ import annotations

import inspect
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.cache import ModelLoadError
from studio.engine.common import Studio
from studio.zerogpu import preload_everything

NON_API = ("request", "progress")
MAX_SESSION_RESULTS = 200


@dataclass
class TabHandle:
    mode: str
    label: str
    parts: dict[str, Any]

    @property
    def fields(self) -> dict[str, gr.components.Component]:
        """Handler parameter name → input component (the API's own names)."""
        names = [p for p in inspect.signature(self.parts["handler"]).parameters if p not in NON_API]
        return dict(zip(names, self.parts["inputs"], strict=True))

    @property
    def input_image(self) -> gr.components.Component | None:
        return self.parts.get("input_image")


def gallery_paths(value: Any) -> list[str]:
    """Paths out of a Gallery input value (tuples of (path, caption), dicts or plain paths)."""
    paths = []
    for item in value or []:
        if isinstance(item, tuple | list):
            item = item[0]
        if isinstance(item, dict):
            item = (item.get("image") or {}).get("path") if "image" in item else item.get("path")
        if isinstance(item, str):
            paths.append(item)
    return paths


def image_value_for(target: TabHandle, path: str) -> Any:
    if isinstance(target.input_image, gr.ImageEditor):
        return {"background": path, "layers": [], "composite": path}
    return path


def send_row(source: gr.Gallery, targets: list[TabHandle], tabs: gr.Tabs, exclude: str = "") -> None:
    """'Send to <mode>' buttons acting on the selected (or else the first) image of `source`."""
    receivers = [t for t in targets if t.input_image is not None and t.mode != exclude]
    if not receivers:
        return
    selected = gr.State(None)
    with gr.Row():
        buttons = [(t, gr.Button(f"Send to {t.label}", size="sm", min_width=80)) for t in receivers]

    def remember(value: Any, evt: gr.SelectData) -> str | None:
        paths = gallery_paths(value)
        return paths[evt.index] if isinstance(evt.index, int) and evt.index < len(paths) else None

    source.select(remember, inputs=source, outputs=selected, queue=False, api_visibility="private")
    source.change(lambda: None, outputs=selected, queue=False, api_visibility="private")
    for target, button in buttons:
        prompt_fields = [target.fields[name] for name in ("prompt", "negative_prompt") if name in target.fields]

        def send(chosen: str | None, value: Any, target: TabHandle = target) -> dict[Any, Any]:
            paths = gallery_paths(value)
            path = chosen if chosen in paths else (paths[0] if paths else None)
            if path is None:
                raise gr.Error("Nothing to send yet: generate an image first (or select one in the gallery).")
            updates = fill(target, prompts_of(path))  # the look travels with the image
            updates[target.input_image] = image_value_for(target, path)
            updates[tabs] = gr.Tabs(selected=target.mode)
            return updates

        button.click(
            send,
            inputs=[selected, source],
            outputs=[target.input_image, tabs, *prompt_fields],
            queue=False,
            api_visibility="private",
        )


def prompts_of(path: str) -> dict[str, str]:
    """The prompt and negative prompt recorded in a result PNG (empty when it has none)."""
    from PIL import Image

    from studio.metadata import parse_infotext, read_parameters

    with Image.open(path) as image:
        text = read_parameters(image)
    if not text:
        return {}
    info = parse_infotext(text)
    return {"prompt": info.prompt, "negative_prompt": info.negative_prompt}


def session_results(handles: list[TabHandle], tabs: gr.Tabs) -> None:
    """This browser session's results from every tab, newest first, with parameters, Send to and a zip download."""
    history = gr.State([])  # paths only (per-session, deep-copied by Gradio: keep it small)
    with gr.Accordion("This session's results", open=False):
        gallery = gr.Gallery(
            label="Newest first",
            format="png",
            type="filepath",
            columns=6,
            height=260,
            object_fit="contain",
            interactive=False,
        )
        params = gr.Textbox(label="Parameters of the selected result", lines=3, interactive=False)
        send_row(gallery, handles, tabs)
        with gr.Row():
            zip_button = gr.Button("Download this session (zip)", size="sm")
            zip_file = gr.File(label="Session zip", interactive=False)

    def add(value: Any, paths: list[str]) -> tuple[list[str], list[str]]:
        new = [p for p in gallery_paths(value) if p not in paths]
        paths = (new[::-1] + paths)[:MAX_SESSION_RESULTS]
        return paths, paths

    for handle in handles:
        handle.parts["gallery"].change(
            add,
            inputs=[handle.parts["gallery"], history],
            outputs=[history, gallery],
            queue=False,
            api_visibility="private",
        )
    gallery.select(show_parameters, inputs=gallery, outputs=params, queue=False, api_visibility="private")
    zip_button.click(zip_session, inputs=history, outputs=zip_file, queue=False, api_visibility="private")


def show_parameters(value: Any, evt: gr.SelectData) -> str:
    from PIL import Image

    from studio.metadata import read_parameters

    paths = gallery_paths(value)
    if not isinstance(evt.index, int) or evt.index >= len(paths):
        return ""
    with Image.open(paths[evt.index]) as image:
        return read_parameters(image) or "(no parameters stored)"


def zip_session(paths: list[str]) -> str:
    existing = [Path(p) for p in paths if Path(p).is_file()]
    if not existing:
        raise gr.Error("No results in this session yet.")
    folder = Path(tempfile.mkdtemp(prefix="atelier-session-"))
    target = folder / "atelier-session.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for index, path in enumerate(reversed(existing)):
            archive.write(path, f"{index:03d}-{path.name}")
    return str(target)


def model_switcher(studio: Studio) -> None:
    """Choose the checkpoint among the operator's configured choices; a failed switch keeps the previous one.

    The status line follows loads as they happen (a background preload, a first request's lazy load, a switch):
    a timer refreshes it every second while something loads or nothing is resident yet, and stops after."""
    settings = studio.cache.settings
    choices = list(dict.fromkeys([settings.model, *settings.model_choices]))
    with gr.Row(equal_height=True):
        choice = gr.Dropdown(choices, value=settings.model, label="Model", scale=3, min_width=200)
        load = gr.Button("Load model", size="sm", scale=1, min_width=100)
        status = gr.Markdown(lambda: status_line(studio)[0], every=None, elem_id="model-status")
    timer = gr.Timer(1.0)

    def refresh() -> tuple[str, gr.Timer]:
        text, watching = status_line(studio)
        return text, gr.Timer(active=watching)

    def switch(model: str) -> Iterator[tuple[str, gr.Timer]]:
        if model not in choices:
            raise gr.Error("Choose one of the listed models.")
        yield f"Loading **{model}**…", gr.Timer(active=True)
        try:
            studio.cache.switch(model)
            if settings.zero_gpu:  # forked GPU workers inherit only what this process loaded
                preload_everything(studio)
        except ModelLoadError as exc:
            raise gr.Error(f"{exc} Still using {studio.cache.current}.") from None
        yield refresh()

    timer.tick(refresh, outputs=[status, timer], queue=False, api_visibility="private")
    load.click(switch, inputs=choice, outputs=[status, timer], concurrency_id="gpu", api_visibility="private")


def status_line(studio: Studio) -> tuple[str, bool]:
    """The switcher's status text, and whether to keep watching (a load under way, or nothing resident yet).

    `loading` is read before `resident()`: a load holds the cache lock, and `resident()` would wait for the whole
    load to finish before the line could say that it is loading."""
    loading = studio.cache.loading
    if loading:
        return f"Loading {loading}…", True
    rows = studio.cache.resident()
    if not rows:
        return f"Model **{studio.cache.current}** loads on first use.", True
    parts = [f"{r.name} ({r.param_bytes / 2**20:,.0f} MiB)" for r in rows]
    return f"Current: **{studio.cache.current}** · resident: {', '.join(parts)}", False


def fill(handle: TabHandle, values: dict[str, Any]) -> dict[gr.components.Component, Any]:
    """Component updates that set a tab's fields by name; unknown names are left alone."""
    fields = handle.fields
    return {fields[name]: value for name, value in values.items() if name in fields}


def restorer(handles: list[TabHandle], tabs: gr.Tabs, restore: Callable[[str], Any]) -> None:
    """Drop an Atelier or A1111 PNG: the right tab's form is filled from its metadata."""
    by_mode = {h.mode: h for h in handles}
    with gr.Accordion("Restore parameters from a PNG", open=False):
        upload = gr.File(label="Atelier or A1111 PNG", file_types=[".png"], type="filepath")
        note = gr.Markdown()
    outputs: list[Any] = [tabs, note, *{c for h in handles for c in h.fields.values()}]

    def apply(path: str | None) -> dict[Any, Any]:
        if not path:
            return {}
        try:
            restored = restore(path)
        except ValueError as exc:
            raise gr.Error(str(exc)) from None
        handle = by_mode.get(restored.mode) or by_mode["txt2img"]
        updates = fill(handle, restored.values)
        updates[tabs] = gr.Tabs(selected=handle.mode)
        updates[note] = restored.note
        return updates

    upload.upload(apply, inputs=upload, outputs=outputs, queue=False, api_visibility="private")


def preset_picker(presets: list[Any]) -> tuple[gr.Dropdown, gr.Markdown] | None:
    if not presets:
        return None
    with gr.Row(equal_height=True, elem_classes="preset-row"):  # app.CSS: on a phone, one item per line
        dropdown = gr.Dropdown([p.name for p in presets], value=None, label="Preset", scale=2, min_width=200)
        description = gr.Markdown(scale=3)
    return dropdown, description


def wire_presets(picker: tuple[gr.Dropdown, gr.Markdown] | None, presets: list[Any], handle: TabHandle) -> None:
    """Choosing a preset fills only the fields it names; everything stays editable."""
    if picker is None:
        return
    dropdown, description = picker
    by_name = {p.name: p for p in presets}
    outputs = [description, *handle.fields.values()]

    def apply(name: str | None) -> dict[Any, Any]:
        preset = by_name.get(name or "")
        if preset is None:
            return {}
        updates = fill(handle, preset.values)
        updates[description] = preset.description
        return updates

    dropdown.change(apply, inputs=dropdown, outputs=outputs, queue=False, api_visibility="private")


EXAMPLE_ASSETS = {"refine": "flatlay", "restyle": "sketch", "textile": "swatch"}


def examples_for(handle: TabHandle) -> None:
    """Example inputs drawn by the project itself (assets/), for the tabs that take an image."""
    from studio import assets

    name = EXAMPLE_ASSETS.get(handle.mode)
    if name is None or handle.input_image is None:
        return
    gr.Examples([[str(assets.path(name))]], inputs=[handle.input_image], label="Example input")
