"""The Styles picker under a prompt: the operator's LoRAs and embeddings, each with its preview, name and trigger
words, and one button that writes its tag (`<lora:NAME:WEIGHT>`) or its word into the prompt.

It receives a callable that lists the style folders (`UIContext.styles`), never the model cache: the list is read
again on Refresh (files added while serving appear), and a file that cannot be used is shown with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import gradio as gr
from PIL import Image

from studio.styles import LORA, StyleFile

THUMBNAIL = 160  # px: the preview is read by the studio and shown small; never served from the style folder
ListStyles = Callable[[], list[StyleFile]]


def label(entry: StyleFile) -> str:
    kind = "LoRA" if entry.kind == LORA else f"embedding, {entry.vectors} vector{'s' * (entry.vectors > 1)}"
    return f"{entry.name} ({kind})"


def insert(prompt: str, entry: StyleFile, weight: float) -> str:
    """The prompt with the style added at its end: a LoRA's tag (its weight replaced if it is there already), or
    an embedding's word."""
    if entry.kind == LORA:
        tag = f"<lora:{entry.name}:{weight:g}>"
        existing = re.compile(r"<lora:" + re.escape(entry.name) + r"(:[^>]*)?>")
        if existing.search(prompt):
            return existing.sub(lambda _m: tag, prompt, count=1)
        return f"{prompt.rstrip()} {tag}".lstrip()
    return f"{prompt.rstrip()}, {entry.name}" if prompt.strip() else entry.name


def describe(entry: StyleFile | None) -> str:
    if entry is None:
        return ""
    words = f"Trigger words: {', '.join(entry.triggers)}." if entry.triggers else "No trigger words in its file."
    how = "Inserted as a tag; its weight is the slider's." if entry.kind == LORA else "Used by writing its name."
    return f"**{entry.name}** — {words} {how} Hash {entry.short_hash}."


def unusable_note(entries: list[StyleFile]) -> str:
    broken = [f"{e.path.name}: {e.problem}" for e in entries if not e.usable]
    return ("Not usable here: " + "; ".join(broken) + ".") if broken else ""


def thumbnail(entry: StyleFile | None) -> Image.Image | None:
    if entry is None or entry.preview is None:
        return None
    try:
        with Image.open(entry.preview) as image:
            image.thumbnail((THUMBNAIL, THUMBNAIL))
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError):  # an unreadable preview is left out
        return None


def styles_picker(list_styles: ListStyles | None, prompt: gr.Textbox) -> None:
    """The picker for one prompt box; nothing when the studio has no style folders."""
    if list_styles is None:
        return
    with gr.Accordion("Styles: LoRAs and embeddings", open=False) as accordion:
        with gr.Row(equal_height=True):
            choice = gr.Dropdown([], label="Style", scale=3, min_width=200)
            weight = gr.Slider(-1, 2, value=0.8, step=0.05, label="LoRA weight", scale=2, min_width=160)
        with gr.Row(equal_height=True):
            preview = gr.Image(label="Preview", interactive=False, height=THUMBNAIL, width=THUMBNAIL, scale=0)
            about = gr.Markdown()
        with gr.Row():
            add = gr.Button("Insert into prompt", size="sm")
            refresh = gr.Button("Refresh", size="sm")
        problems = gr.Markdown()

    def find(name: str | None) -> StyleFile | None:
        return next((e for e in list_styles() if e.usable and e.name == name), None) if name else None

    def listing() -> tuple[Any, str]:
        entries = list_styles()
        choices = [(label(e), e.name) for e in entries if e.usable]
        return gr.update(choices=choices, value=None), unusable_note(entries) or "No style folders' files found."

    def show(name: str | None) -> tuple[Image.Image | None, str]:
        entry = find(name)
        return thumbnail(entry), describe(entry)

    def put(text: str, name: str | None, value: float) -> str:
        entry = find(name)
        if entry is None:
            raise gr.Error("Pick a style first (press Refresh if a new file is missing from the list).")
        return insert(text or "", entry, value)

    private: dict[str, Any] = {"queue": False, "api_visibility": "private"}
    refresh.click(listing, outputs=[choice, problems], **private)
    accordion.expand(listing, outputs=[choice, problems], **private)  # read again each time it is opened
    choice.change(show, inputs=choice, outputs=[preview, about], **private)
    add.click(put, inputs=[prompt, choice, weight], outputs=prompt, **private)
