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
from typing import Any

from studio.zerogpu import gpu_section, preload_everything, spaces_module

spaces_module()  # `spaces` (when installed) must be imported before anything touches CUDA

import gradio as gr

from studio.cache import ModelCache
from studio.engine.contract import Studio
from studio.engine.models import model_status, switch_model
from studio.jobs import JobBoard
from studio.modes import BUILTIN, Mode, bind, by_name
from studio.outputs import Outputs, clean_leftovers, temp_folder
from studio.presets import load_presets
from studio.prompts import TokenCounter
from studio.registry import resolve
from studio.restore import Restorer
from studio.server import body_limit
from studio.settings import Settings, parse_args
from studio.ui import png_info, shell
from studio.ui.widgets import UIContext

log = logging.getLogger("atelier")
REPO = Path(__file__).resolve().parent
CSS = ".token-count p {font-size: 0.8em; opacity: 0.7; margin: 0} footer {display: none !important}" + (
    # header: the "Load model" button at its own height, not stretched to the dropdown's; on a phone the title
    # takes its own line above the model switcher instead of a four-line column beside it
    " #header button {align-self: center}"
    # and the preset picker takes the whole width, its description (when one is chosen) the line below
    " @media (max-width: 640px) {#header > *, .preset-row > * {flex: 1 1 100% !important}}"
    # the model status stays one line (the resident models and their sizes are cache internals): the rest shows on
    # hover or tap, over the page, never pushing the tabs down
    " #model-status {flex: 2 1 200px !important; min-width: 160px !important; align-self: center;"
    " position: relative; overflow: visible !important}"
    " #model-status p {margin: 0; white-space: nowrap; overflow: hidden; text-overflow: ellipsis}"
    " #model-status:hover p {position: absolute; z-index: 20; top: 0; right: 0; width: max-content; max-width: 80vw;"
    " white-space: normal; padding: 0.4em 0.6em; background: var(--background-fill-primary);"
    " border: 1px solid var(--border-color-primary); border-radius: var(--radius-md)}"
    # each tab's results stay in view beside its form while the designer scrolls the settings (not on a phone)
    " .results-column {position: sticky; top: 0.5rem; align-self: flex-start}"
    " @media (max-width: 640px) {.results-column {position: static}}"
    # Cancel only while the tab runs something (studio.ui.running.RUNNING_JS marks the running tab)
    " .cancel-action {display: none !important} .atelier-running .cancel-action {display: inline-flex !important}"
    # and its progress is written once: the other loading overlays keep their shade but not their text
    " .atelier-running [data-testid=status-tracker][data-quiet] > * {visibility: hidden}"
    # the brush editor: its photo starts right of the tool bar and below the label (they overlapped it on a phone)
    " .brush-editor [data-testid=image] .pixi-target {left: 56px !important; width: calc(100% - 56px) !important;"
    " top: 30px !important; height: calc(100% - 30px) !important}"
    " .brush-editor [data-testid=image] .top-panel {top: 30px !important}"
)


def create_studio(settings: Settings) -> Studio:
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def native_size_hint(settings: Settings) -> int:
    """The startup model's native size for the form defaults, read from config files only."""
    from studio.registry import native_size

    return native_size(resolve(settings.model, settings.tiny_dir))


def build_demo(
    studio: Studio, modes: Sequence[Mode] = BUILTIN, presets_dir: Path = REPO / "presets", engine: Any = None
) -> gr.Blocks:
    """The studio's page: one tab and one API endpoint per mode, and the shell around them (model switcher, Send
    to, this session's results, the PNG Info tab), all computed from `modes`. `engine`: where the modes run, a
    `studio.serve.client.RemoteEngine` (`--engine ray`); None: in this process."""
    settings = studio.cache.settings
    by_name(modes)  # names are unique
    presets = load_presets(presets_dir, settings.limits, modes)  # a broken preset stops startup, naming file and key
    ctx = UIContext(
        native_size=native_size_hint(settings),
        limits=settings.limits,
        count_tokens=TokenCounter(
            settings.tiny_dir.parent / "clip-tokenizer", settings.limits.max_prompt_chars, studio.cache.styles
        ),
        default_negative_prompt=settings.default_negative_prompt,
        preview_every=settings.preview_every,
        gpu=gpu_section(settings),
        board=JobBoard(shared=settings.zero_gpu),  # on ZeroGPU, Cancel reaches the forked worker
        outputs_root=studio.outputs.root,
        restore=Restorer(modes, settings.limits, studio.cache.styles).from_png,
        styles=studio.cache.styles.entries,  # the Styles picker under every prompt (studio.ui.styles_picker)
    )
    with gr.Blocks(title="Atelier") as demo:
        with gr.Row(equal_height=True, elem_id="header"):
            gr.Markdown("## Atelier — diffusion design studio")
            shell.model_switcher(model_switch(studio, modes) if engine is None else remote_switch(studio, engine))
        handles: list[shell.TabHandle] = []
        blocks: list[gr.Tab] = []
        with gr.Tabs(overflow_behavior="wrap") as tabs:  # on a phone every tab stays in sight (rows, no menu)
            for mode in modes:
                with gr.Tab(mode.label, id=mode.name, elem_id=f"tab-{mode.name}") as tab_block:
                    picker = shell.preset_picker(presets[mode.name])
                    calls = bind(mode, studio) if engine is None else engine.bind(mode, studio)
                    handle = shell.TabHandle(mode.name, mode.label, mode.tab(ctx, calls))
                    shell.wire_presets(picker, presets[mode.name], handle)
                    shell.examples_for(handle, mode.example)
                handles.append(handle)
                blocks.append(tab_block)
            info_tab = gr.Tab("PNG Info", id=png_info.TAB_ID, elem_id=f"tab-{png_info.TAB_ID}")
        for tab_block, handle in zip(blocks, handles, strict=True):
            with tab_block:  # "Send to" rows under each tab's results, once every target exists
                shell.send_row(handle.tab.gallery, handles, tabs, exclude=handle.mode)
        with info_tab:
            png_info.create(handles, tabs, ctx.restore)
        shell.session_results(handles, tabs)
        shell.page_scripts(demo)
        for mode, handle in zip(modes, handles, strict=True):
            if mode.on_page is not None:  # page-level wiring of a mode (Refine's tree survives a reload)
                mode.on_page(demo, handle.tab, ctx)
    return demo


def model_switch(studio: Studio, modes: Sequence[Mode]) -> shell.ModelSwitch:
    """The model switcher's calls: on ZeroGPU a switch also preloads every companion the modes use."""
    settings = studio.cache.settings
    companions = [name for mode in modes for name in mode.companions]
    after = (lambda: preload_everything(studio, companions)) if settings.zero_gpu else None
    return shell.ModelSwitch(
        choices=list(dict.fromkeys([settings.model, *settings.model_choices])),
        current=lambda: studio.cache.current,
        load=lambda name: switch_model(studio, name, after),
        status=lambda: model_status(studio),
    )


def remote_switch(studio: Studio, engine: Any) -> shell.ModelSwitch:
    """The model switcher of a Ray front: the replicas load, this process never does."""
    settings = studio.cache.settings
    return shell.ModelSwitch(
        choices=list(dict.fromkeys([settings.model, *settings.model_choices])),
        current=lambda: engine.current,
        load=engine.switch,
        status=engine.status,
    )


def launch(demo: gr.Blocks, settings: Settings, **kwargs: object) -> object:
    """Serve the studio: the queue closed to direct API calls, uploads and request bodies capped, only finished
    results served (writes in progress are blocked, leftovers of killed ones removed first), SSR and Gradio's run
    history off (advisory CVE-2026-134825: run-history auth bypass through the SSR proxy, Gradio 6.27-6.32)."""
    clean_leftovers(settings.outputs)
    warn_if_open(settings)
    # One run at a time reaches the local GPU lock; with Ray, every slot of every replica can be busy at once.
    concurrency = settings.engine_concurrency
    demo.queue(max_size=max(settings.queue_size, concurrency), default_concurrency_limit=concurrency, api_open=False)
    # On a Space, the platform fronts the public address; elsewhere settings refuse 0.0.0.0 without --auth.
    return demo.launch(
        server_name=settings.host,
        server_port=settings.port,
        auth=settings.auth,
        share=settings.share,
        max_file_size=f"{settings.limits.max_upload_mb}mb",
        allowed_paths=[str(settings.outputs.resolve())],
        blocked_paths=[str(temp_folder(settings.outputs))],
        app_kwargs={"middleware": [body_limit(settings.limits.max_upload_mb)]},
        ssr_mode=False,
        run_history=False,
        css=CSS,
        **kwargs,
    )


def warn_if_open(settings: Settings) -> None:
    """Say loudly when the studio is reachable with no login: on a Space the platform fronts it on purpose, on a
    workstation a stray SPACE_ID does the same silently."""
    if settings.auth is not None or not settings.exposed:
        return
    where = "a Gradio share link" if settings.share else f"http://{settings.host}:{settings.port}"
    space = (
        " SPACE_ID is set: on a Hugging Face Space the platform fronts this address on purpose; on a workstation,"
        " unset SPACE_ID or pass --auth USER:PASSWORD."
        if settings.space
        else ""
    )
    log.warning(
        "Serving on %s with no login: anyone on the network who can reach it can use the studio and read its "
        "outputs.%s",
        where,
        space,
    )


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = parse_args(argv)
    studio = create_studio(settings)
    if settings.engine == "ray":  # the modes run on the Ray Serve deployment; this process loads no weights
        from studio.serve.client import RemoteEngine

        try:
            engine = RemoteEngine(settings)
        except Exception as exc:  # no cluster, no deployment: say how to start one, not a traceback
            raise SystemExit(
                f"app.py: error: the Ray engine is not reachable ({exc}). Deploy it first: "
                "python -m studio.serve up --replicas N"
            ) from None
        demo = build_demo(studio, engine=engine)
    else:
        demo = build_demo(studio)
        start_preload(studio)
    launch(demo, settings, inbrowser=settings.open_browser)


def start_preload(studio: Studio, modes: Sequence[Mode] = BUILTIN) -> None:
    """On ZeroGPU, load every model now, before serving: forked GPU workers inherit only what this process loaded.
    Elsewhere, with preload on, load the base in the background while the UI is already served."""
    settings = studio.cache.settings
    if settings.zero_gpu:
        log.info(
            "ZeroGPU: resident before serving: %s",
            ", ".join(preload_everything(studio, [c for m in modes for c in m.companions])),
        )
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
