"""The studio around the tabs: "Send to" between modes, this session's results, the model switcher, page scripts.

Tabs stay independent: each builds a `Tab` (its handler, its form components by field name, its gallery and the
image input it takes, if any); the shell fills forms by field name, so PNG restore, presets and Send to need no
tab's layout. Which modes exist comes from the mode records (`studio.modes`), never from a list here.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from studio.errors import StudioError
from studio.ui.running import RUNNING_JS
from studio.ui.tab import Tab
from studio.ui.widgets import gallery_paths

MAX_SESSION_RESULTS = 200


@dataclass(frozen=True)
class TabHandle:
    mode: str  # the mode's name (tab id)
    label: str
    tab: Tab

    @property
    def fields(self) -> dict[str, gr.components.Component]:
        """Handler parameter name → input component (the API's own names)."""
        return self.tab.fields

    @property
    def input_image(self) -> gr.components.Component | None:
        return self.tab.input_image


@dataclass(frozen=True)
class ModelSwitch:
    """What the model switcher calls: the engine side of switching models, bound to the studio."""

    choices: Sequence[str]  # the operator's configured checkpoints; the browser picks among them only
    current: Callable[[], str]
    load: Callable[[str], None]  # raises StudioError (e.g. ModelLoadError) and keeps the previous model
    status: Callable[[], tuple[str, bool]]  # (status line, keep watching: something loads or nothing is resident)


def image_value_for(target: TabHandle, path: str) -> Any:
    if isinstance(target.input_image, gr.ImageEditor):
        return {"background": path, "layers": [], "composite": path}
    return path


def send_row(source: gr.Gallery, targets: list[TabHandle], tabs: gr.Tabs, exclude: str = "") -> None:
    """'Send to <mode>' buttons acting on the selected (or else the first) image of `source`."""
    receivers = [(t, t.input_image) for t in targets if t.input_image is not None and t.mode != exclude]
    if not receivers:
        return
    selected = gr.State(None)
    with gr.Row():
        buttons = [(t, image, gr.Button(f"Send to {t.label}", size="sm", min_width=80)) for t, image in receivers]

    def remember(value: Any, evt: gr.SelectData) -> str | None:
        paths = gallery_paths(value)
        return paths[evt.index] if isinstance(evt.index, int) and evt.index < len(paths) else None

    source.select(remember, inputs=source, outputs=selected, queue=False, api_visibility="private")
    source.change(lambda: None, outputs=selected, queue=False, api_visibility="private")
    nothing = gr.State("")  # the "negative prompt" of a tab that has none
    for target, input_image, button in buttons:
        prompt_fields = [target.fields[name] for name in ("prompt", "negative_prompt") if name in target.fields]

        def send(
            chosen: str | None,
            value: Any,
            their_negative: str | None,
            target: TabHandle = target,
            input_image: gr.components.Component = input_image,
        ) -> dict[Any, Any]:
            paths = gallery_paths(value)
            path = chosen if chosen in paths else (paths[0] if paths else None)
            if path is None:
                raise gr.Error("Nothing to send yet: generate an image first (or select one in the gallery).")
            updates = fill(target, carried_prompts(prompts_of(path), their_negative or ""))
            updates[input_image] = image_value_for(target, path)
            updates[tabs] = gr.Tabs(selected=target.mode)
            gr.Info(sent_note(target))
            return updates

        button.click(
            send,
            inputs=[selected, source, target.fields.get("negative_prompt", nothing)],
            outputs=[input_image, tabs, *prompt_fields],
            concurrency_limit=None,  # queued so its toast and errors show; never waits behind generation
            api_visibility="private",
        )


def sent_note(target: TabHandle) -> str:
    if "prompt" not in target.fields:
        return f"Sent to {target.label}."
    kept = f"; {target.label}'s negative prompt is kept" if "negative_prompt" in target.fields else ""
    return f"Sent to {target.label} with its prompt{kept}."


def carried_prompts(sent: dict[str, str], their_negative: str) -> dict[str, str]:
    """What Send to carries: the image's prompt (the look travels with it); the target's own negative prompt is
    kept, with the image's negative terms it lacks added after it (never replaced by an empty one)."""
    carried: dict[str, str] = {}
    if sent.get("prompt"):
        carried["prompt"] = sent["prompt"]
    missing = [term for term in split_terms(sent.get("negative_prompt", "")) if term not in split_terms(their_negative)]
    if missing:
        carried["negative_prompt"] = ", ".join(part for part in (their_negative.strip(), *missing) if part)
    return carried


def split_terms(text: str) -> list[str]:
    return [term.strip() for term in text.split(",") if term.strip()]


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
        handle.tab.gallery.change(
            add,
            inputs=[handle.tab.gallery, history],
            outputs=[history, gallery],
            queue=False,
            api_visibility="private",
        )
    gallery.select(show_parameters, inputs=gallery, outputs=params, queue=False, api_visibility="private")
    zip_button.click(zip_session, inputs=history, outputs=zip_file, concurrency_limit=None, api_visibility="private")


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
    gr.Info(f"This session's {len(existing)} result(s) are zipped, with their parameters: download below.")
    return str(target)


def model_switcher(models: ModelSwitch) -> None:
    """Choose the checkpoint among the operator's configured choices; a failed switch keeps the previous one.

    The status line follows loads as they happen (a background preload, a first request's lazy load, a switch):
    a timer refreshes it every second while something loads or nothing is resident yet, and stops after."""
    choices = list(models.choices)
    with gr.Row(equal_height=True):
        choice = gr.Dropdown(choices, value=models.current(), label="Model", scale=3, min_width=200)
        load = gr.Button("Load model", size="sm", scale=1, min_width=100)
        # one line (app.CSS: the rest of a long status shows on hover); the timer keeps it current
        status = gr.Markdown(models.status()[0], elem_id="model-status")
    timer = gr.Timer(1.0)

    def refresh() -> tuple[str, gr.Timer]:
        text, watching = models.status()
        return text, gr.Timer(active=watching)

    def switch(model: str) -> Iterator[tuple[str, gr.Timer]]:
        if model not in choices:
            raise gr.Error("Choose one of the listed models.")
        yield f"Loading **{model}**…", gr.Timer(active=True)
        try:
            models.load(model)
        except StudioError as exc:
            raise gr.Error(f"{exc} Still using {models.current()}.") from None
        yield refresh()

    timer.tick(refresh, outputs=[status, timer], queue=False, api_visibility="private")
    load.click(switch, inputs=choice, outputs=[status, timer], concurrency_id="gpu", api_visibility="private")


def fill(handle: TabHandle, values: dict[str, Any]) -> dict[gr.blocks.Block, Any]:
    """Component updates that set a tab's fields by name; unknown names are left alone. Keyed by `Block`, so callers
    can add updates for layout blocks too (the `gr.Tabs` to switch to)."""
    fields = handle.fields
    return {fields[name]: value for name, value in values.items() if name in fields}


def preset_picker(presets: list[Any]) -> tuple[gr.Dropdown, gr.Markdown] | None:
    if not presets:
        return None
    with gr.Row(equal_height=True, elem_classes="preset-row"):  # app.CSS: on a phone, one item per line
        dropdown = gr.Dropdown([p.name for p in presets], value=None, label="Preset", scale=2, min_width=200)
        description = gr.Markdown(scale=3)
    return dropdown, description


def wire_presets(picker: tuple[gr.Dropdown, gr.Markdown] | None, presets: list[Any], handle: TabHandle) -> None:
    """Choosing a preset fills only the fields it names; everything stays editable. The designer's own text is
    never dropped: a preset's prompt goes before the one typed (as A1111's styles do), its negative terms are added
    to the typed negative prompt, and a toast says what changed."""
    if picker is None:
        return
    dropdown, description = picker
    by_name = {p.name: p for p in presets}
    outputs = [description, *handle.fields.values()]
    nothing = gr.State("")

    def apply(name: str | None, prompt: str | None = "", negative_prompt: str | None = "") -> dict[Any, Any]:
        preset = by_name.get(name or "")
        if preset is None:
            return {}
        values, kept = merged_with_typed(preset.values, prompt or "", negative_prompt or "")
        updates = fill(handle, values)
        updates[description] = preset.description
        gr.Info(f"Preset “{preset.name}” applied{kept}.")
        return updates

    typed = [handle.fields.get(name, nothing) for name in ("prompt", "negative_prompt")]
    dropdown.change(apply, inputs=[dropdown, *typed], outputs=outputs, concurrency_limit=None,
                    api_visibility="private")  # fmt: skip


def merged_with_typed(values: dict[str, Any], prompt: str, negative_prompt: str) -> tuple[dict[str, Any], str]:
    """A preset's values laid over a form, keeping what the designer typed; and a note saying how."""
    values = dict(values)
    notes = []
    theirs = values.get("prompt")
    if theirs and prompt.strip() and theirs.strip() not in prompt:
        values["prompt"] = f"{theirs.strip()}, {prompt.strip()}"
        notes.append("its prompt goes before yours")
    if "negative_prompt" in values and negative_prompt.strip():
        missing = [t for t in split_terms(values["negative_prompt"]) if t not in split_terms(negative_prompt)]
        values["negative_prompt"] = ", ".join([negative_prompt.strip(), *missing])
        notes.append("its negative terms were added to yours")
    return values, (": " + "; ".join(notes)) if notes else ""


def examples_for(handle: TabHandle, example: str | None) -> None:
    """An example input drawn by the project itself (`assets/`), for a tab that takes an image."""
    from studio import assets

    if example is None or handle.input_image is None:
        return
    gr.Examples([[str(assets.path(example))]], inputs=[handle.input_image], label="Example input")


# Ctrl+Enter (⌘+Enter) in any text field of a tab presses that tab's main button (`elem_classes="primary-action"`).
CTRL_ENTER_JS = """() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const field = event.target;
    if (!(field instanceof HTMLTextAreaElement || field instanceof HTMLInputElement)) return;
    const tab = field.closest("[id^='tab-']");
    const button = tab && tab.querySelector("button.primary-action");
    if (button) { event.preventDefault(); button.click(); }
  });
}"""


def page_scripts(demo: gr.Blocks) -> None:
    """Page-wide behaviour, installed once when the page loads (client-side only: no server call): Ctrl+Enter, and
    Cancel shown only in a tab that runs something."""
    demo.load(None, js=CTRL_ENTER_JS, api_visibility="private")
    demo.load(None, js=RUNNING_JS, api_visibility="private")
