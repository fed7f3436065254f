"""The Refine tab: img2img loops with a branching history (continue, compare, restore, download a branch).

History lives per browser session in a `gr.State` holding a small JSON tree (ids and paths inside the outputs
folder, never images), mirrored into `gr.BrowserState` so it survives a page reload. Why BrowserState rather than a
server-side store keyed by a browser token: nothing to persist, expire or garbage-collect on the server; sessions
are isolated by the browser itself; and with a fixed storage key the tree even survives a server restart, like
the files do. The browser copy is untrusted (its "encryption" key is sent to the page): every path is re-checked
against the outputs folder when it comes back (`History.from_dict`). Two tabs of one browser share one tree.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal, TypedDict

import gradio as gr

from studio.engine.contract import Job, Saved
from studio.engine.refine import DEFAULT_NEGATIVE, MAX_LOOPS, SCHEDULES, SEED_POLICIES, LoopImage, RefineRequest
from studio.history import History, HistoryError
from studio.ui import refine_history
from studio.ui.image_prompt_box import image_prompt_box
from studio.ui.refine_history import RESTORED, restore_fields
from studio.ui.running import cancel_button, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.uploads import image_upload
from studio.ui.widgets import (
    UIContext,
    field_components,
    form_request,
    link_seed,
    prompt_block,
    results_block,
    sampling_block,
)

STORAGE_KEY = "atelier-refine-history"
__all__ = ["RESTORED", "STORAGE_KEY", "create", "persist", "restore_fields", "source_value"]


class EventOptions(TypedDict):
    """Keywords shared by the tab's internal events (spread into Gradio's event methods, so typed per key)."""

    api_visibility: Literal["public", "private", "undocumented"]
    queue: bool
    concurrency_limit: int | None


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    root = ctx.outputs_root
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            input_image = image_upload(
                ctx.limits.max_upload_mb,
                label="Input image (upload, paste or drop; a PNG's parameters are restored)",
                format="png",
                sources=["upload", "clipboard"],
                height=320,
            )
            prompts = prompt_block(
                ctx, "e.g. photo of a linen shirt dress, natural light, detailed hands", negative=DEFAULT_NEGATIVE
            )
            with gr.Row():  # the main action right under the prompt (Ctrl+Enter in a prompt does the same)
                run = gr.Button("Refine", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            strength = gr.Slider(0.01, 1, value=0.75, step=0.01, label="Denoising strength",
                                 info="How much each loop changes: 0.3 polishes, 0.75 reworks the look.")  # fmt: skip
            sampling = sampling_block(ctx, guidance=7.5)
            image_prompt = image_prompt_box(ctx)
            with gr.Row():
                batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Batch size (chains)")
                loops = gr.Slider(1, MAX_LOOPS, value=4, step=1, label="Loops")
            with gr.Row():
                strength_schedule = gr.Radio(list(SCHEDULES), value="constant", label="Strength schedule")
                final_strength = gr.Slider(0.01, 1, value=0.45, step=0.01, label="Final strength (linear)")
            with gr.Row():
                seed_policy = gr.Radio(list(SEED_POLICIES), value="increment", label="Seed per loop")
                color_correction = gr.Checkbox(value=True, label="Colour correction (hold the source palette)")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            gallery, seed_used, infotext = results_block("Loop results")
            link_seed(sampling, seed_used, gallery)
            history_ui = refine_history.panel()
    tree = gr.State(History(root).to_dict())
    continue_from = gr.State(None)

    def refine(
        image: str | None,
        prompt: str,
        negative_prompt: str,
        strength: float,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        seed: float,
        batch_size: float,
        loops: float,
        strength_schedule: str,
        final_strength: float,
        seed_policy: str,
        color_correction: bool,
        continue_from: int | None,
        tree: dict[str, Any],
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        ip_adapter_image: list[str] | None = None,  # the image prompt: optional, for API clients and callers too
        ip_adapter_scale: str = "0.6",
        ip_adapter_model: str = "ip-adapter_sd15",
    ) -> Iterator[tuple[list[tuple[str, str]], int, str, dict]]:
        history = History.from_dict(tree, root)
        req = form_request(RefineRequest, {**locals(), "image": source_value(image, continue_from, history)})
        shown: list[tuple[str, str]] = []
        seeds: list[int] = []
        infotext = ""
        for item in stream(ctx, request, progress, lambda job: calls.run(req, job)):
            if item is None:
                yield gr.skip(), gr.skip(), gr.skip(), gr.skip()
                continue
            history.add(item.path, item.parent, loop=item.loop, seed=item.seed, strength=item.strength)
            shown.append((str(item.path), f"loop {item.loop} · chain {item.chain + 1} · seed {item.seed}"))
            seeds.append(item.seed)
            infotext = item.infotext
            yield shown, seeds[0], infotext, history.to_dict()
        if shown:  # the last yield is the whole result (what an API client receives)
            yield shown, seeds[0], infotext, history.to_dict()

    fields = {
        **image_prompt,
        **field_components(prompts),
        **field_components(sampling),
        "image": input_image,
        "strength": strength,
        "batch_size": batch_size,
        "loops": loops,
        "strength_schedule": strength_schedule,
        "final_strength": final_strength,
        "seed_policy": seed_policy,
        "color_correction": color_correction,
        "continue_from": continue_from,
        "tree": tree,
    }
    form = [fields[name] for name in RESTORED]
    # Queued (toasts and errors reach the page only through the queue), never waiting behind generation.
    private: EventOptions = {"api_visibility": "private", "queue": True, "concurrency_limit": None}

    run.click(
        ctx.gpu(refine),
        inputs=inputs_for(refine, fields),
        outputs=[gallery, seed_used, infotext, tree],
        api_name=calls.name,
        concurrency_id="gpu",
        show_progress_on=gallery,  # steps and time left once, on the results
    )
    input_image.upload(
        lambda path: restore_fields(path, ctx.restore, quiet=True), inputs=input_image, outputs=form, **private
    )
    refine_history.wire(history_ui, tree, root, ctx.restore, form, input_image, continue_from)
    return Tab(refine, fields, gallery, prompt=prompts.prompt, input_image=input_image,
               extras={"tree": tree, "node_pick": history_ui.node_pick})  # fmt: skip


# ---- running ------------------------------------------------------------------------------------------------------
def stream(
    ctx: UIContext, request: gr.Request | None, progress: gr.Progress, start: Callable[[Job], Any]
) -> Iterator[LoopImage | None]:
    """Run a refine for one session with progress and cancel; each loop image as soon as it is saved, and None at
    every other step (a yield Gradio can stop the run at). Images already saved stay shown and in history."""
    for event in run_events(ctx.board, request, progress, start, desc="Refining", what="Refine",
                            where=" in the history"):  # fmt: skip
        yield event.generated if isinstance(event, Saved) and isinstance(event.generated, LoopImage) else None


def source_value(image: str | None, continue_from: int | None, history: History) -> Any:
    """The node's own outputs file when the input still is that node's image (so results grow under it)."""
    if image is None or continue_from is None:
        return image
    try:
        node_path = history.path(continue_from)
    except HistoryError:
        return image
    return node_path if _digest(Path(image)) == _digest(node_path) else image


def _digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# ---- the tree in the browser ------------------------------------------------------------------------------------
def persist(demo: gr.Blocks, tree: gr.State, root: Path) -> gr.BrowserState:
    """Mirror the Refine tree into the browser's storage and adopt it when a page (re)loads.

    Call it at the top level of `demo`, outside the tabs: a component inside a tab that is not open is mounted only
    when the tab opens, after the page's load event, so a BrowserState there reads back its default on load."""
    saved = gr.BrowserState(History(root).to_dict(), storage_key=STORAGE_KEY, secret=STORAGE_KEY)
    tree.change(lambda t: t, inputs=tree, outputs=saved, api_visibility="private", queue=False)
    # On load, and when the browser reads its copy back (which may come after the load event): adopt it once.
    gr.on(
        [demo.load, saved.change],
        lambda s, t: adopt(s, t, root),
        inputs=[saved, tree],
        outputs=tree,
        api_visibility="private",
        queue=False,
    )
    return saved


def adopt(saved: Any, tree: dict[str, Any], root: Path) -> Any:
    """On page load: take the browser's copy when this session's tree is still empty (never overwrite it)."""
    if History.from_dict(tree, root).nodes:
        return gr.skip()
    restored = History.from_dict(saved, root)
    return restored.to_dict() if restored.nodes else gr.skip()
