"""Atelier — a diffusion design studio for fashion. `python app.py --model tiny` runs it offline.

A Hugging Face Space imports `demo` from here. Building the UI loads no weights: the model loads on the first
request (or in the background right after launch, for a workstation).
"""

from __future__ import annotations

import os

# Idle OpenMP threads spin by default and starve the working thread on small CPU machines (many handler threads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from studio.zerogpu import gpu_section, preload_everything, spaces_module

spaces_module()  # `spaces` (when installed) must be imported before anything touches CUDA

import gradio as gr

from studio.batching import Txt2ImgBatcher
from studio.cache import ModelCache
from studio.engine.common import Studio
from studio.engine.draft import draft, render_draft
from studio.engine.inpaint import inpaint
from studio.engine.refine import refine
from studio.engine.restyle import detect_edges, restyle
from studio.engine.textile import textile
from studio.jobs import JobBoard
from studio.outputs import Outputs
from studio.presets import load_presets
from studio.prompts import TokenCounter
from studio.registry import resolve
from studio.restore import restore_from_png
from studio.settings import Settings, parse_args
from studio.ui import inpaint_tab, refine_tab, restyle_tab, shell, textile_tab, txt2img_tab
from studio.ui.widgets import UIContext

log = logging.getLogger("atelier")
REPO = Path(__file__).resolve().parent
CSS = ".token-count p {font-size: 0.8em; opacity: 0.7; margin: 0} footer {display: none !important}" + (
    # header: the "Load model" button at its own height, not stretched to the dropdown's; on a phone the title
    # takes its own line above the model switcher instead of a four-line column beside it
    " #header button {align-self: center}"
    # and the preset picker takes the whole width, its description (when one is chosen) the line below
    " @media (max-width: 640px) {#header > *, .preset-row > * {flex: 1 1 100% !important}}"
)


def create_studio(settings: Settings) -> Studio:
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def native_size_hint(settings: Settings) -> int:
    """The startup model's native size for the form defaults, read from config files only."""
    from studio.registry import native_size

    return native_size(resolve(settings.model, settings.tiny_dir))


def build_demo(studio: Studio) -> gr.Blocks:
    settings = studio.cache.settings
    presets = load_presets(REPO / "presets", settings.limits)  # a broken preset stops startup, naming file and key
    ctx = UIContext(
        native_size=native_size_hint(settings),
        limits=settings.limits,
        count_tokens=TokenCounter(settings.tiny_dir.parent / "clip-tokenizer"),
        default_negative_prompt=settings.default_negative_prompt,
        preview_every=settings.preview_every,
        gpu=gpu_section(settings),
        board=JobBoard(shared=settings.zero_gpu),
    )  # on ZeroGPU, Cancel reaches the forked worker
    batcher = Txt2ImgBatcher(studio)  # concurrent txt2img requests share a UNet batch (settings.batch_window_ms)
    drafts = txt2img_tab.DraftActions(
        lambda req, job: draft(studio, req, job), lambda choice, req, job: render_draft(studio, choice, req, job)
    )
    modes = {
        "txt2img": (
            "txt2img",
            lambda: txt2img_tab.create(ctx, batcher, concurrency=batcher.concurrency, drafts=drafts),
        ),
        "refine": ("Refine", lambda: refine_tab.create(ctx, lambda req, job: refine(studio, req, job), studio.outputs)),
        "textile": ("Textile", lambda: textile_tab.create(ctx, lambda req, job: textile(studio, req, job))),
        "inpaint": ("Inpaint", lambda: inpaint_tab.create(ctx, lambda req, job: inpaint(studio, req, job))),
        "restyle": (
            "Restyle",
            lambda: restyle_tab.create(
                ctx, lambda req, job: restyle(studio, req, job), lambda *args: detect_edges(studio, *args)
            ),
        ),
    }
    with gr.Blocks(title="Atelier") as demo:
        with gr.Row(equal_height=True, elem_id="header"):
            gr.Markdown("## Atelier — diffusion design studio")
            shell.model_switcher(studio)
        handles: list[shell.TabHandle] = []
        tab_blocks: list[gr.Tab] = []
        with gr.Tabs() as tabs:
            for mode, (label, create) in modes.items():
                with gr.Tab(label, id=mode, elem_id=f"tab-{mode}") as tab:
                    picker = shell.preset_picker(presets.get(mode, []))
                    handle = shell.TabHandle(mode, label, create())
                    shell.wire_presets(picker, presets.get(mode, []), handle)
                    shell.examples_for(handle)
                handles.append(handle)
                tab_blocks.append(tab)
        for tab, handle in zip(tab_blocks, handles, strict=True):
            with tab:  # "Send to" rows under each tab's results, once every target exists
                shell.send_row(handle.parts["gallery"], handles, tabs, exclude=handle.mode)
        shell.session_results(handles, tabs)
        shell.restorer(handles, tabs, lambda path: restore_from_png(path, settings.limits))
        refine_handle = next(h for h in handles if h.mode == "refine")
        refine_tab.persist(demo, refine_handle.parts["tree"], studio.outputs.root)  # the Refine tree survives a reload
    return demo


def launch(demo: gr.Blocks, settings: Settings, **kwargs: object) -> object:
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=1, api_open=False)
    # On a Space, the platform fronts the public address; elsewhere settings refuse 0.0.0.0 without --auth.
    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=settings.auth,
        share=settings.share,
        max_file_size=f"{settings.limits.max_upload_mb}mb",
        allowed_paths=[str(settings.outputs.resolve())],
        css=CSS,
        **kwargs,
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_args(argv)
    studio = create_studio(settings)
    demo = build_demo(studio)
    start_preload(studio)
    launch(demo, settings, inbrowser=settings.open_browser)


def start_preload(studio: Studio) -> None:
    """On ZeroGPU, load every model now, before serving: forked GPU workers inherit only what this process loaded.
    Elsewhere, with preload on, load the base in the background while the UI is already served."""
    settings = studio.cache.settings
    if settings.zero_gpu:
        log.info("ZeroGPU: resident before serving: %s", ", ".join(preload_everything(studio)))
    elif settings.preload:
        threading.Thread(target=_preload, args=(studio,), daemon=True).start()


def _preload(studio: Studio) -> None:
    try:
        studio.cache.base()
    except Exception as exc:  # the UI keeps serving; the first request reports the problem in words
        log.error("%s", exc)


def __getattr__(name: str) -> gr.Blocks:
    """`from app import demo` (a Hugging Face Space) builds the studio from the environment on first access, so
    importing this module stays cheap."""
    if name == "demo":
        global demo
        studio = create_studio(Settings.from_env())
        demo = build_demo(studio)
        if studio.cache.settings.zero_gpu:  # forked GPU workers need every model loaded before serving
            start_preload(studio)
        return demo
    raise AttributeError(name)


if __name__ == "__main__":
    main()
