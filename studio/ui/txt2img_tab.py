"""The txt2img tab: a garment or look from a description, with fast LCM drafts and the full render of a chosen one."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import gradio as gr

from studio.engine.contract import Event
from studio.engine.draft import (
    DRAFT_GUIDANCE,
    DRAFT_STEPS,
    MAX_DRAFT_GUIDANCE,
    MAX_DRAFT_STEPS,
    DraftChoice,
    DraftRequest,
    draft_choices,
)
from studio.engine.txt2img import Txt2ImgRequest
from studio.sizes import DEFAULT_SHAPE, SHAPES, snapped
from studio.ui.image_prompt_box import image_prompt_box
from studio.ui.running import cancel_button, finished, gallery_outputs, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.widgets import (
    UIContext,
    field_components,
    form_request,
    link_seed,
    prompt_block,
    results_block,
    sampling_block,
)


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    """`calls.concurrency` > 1: that many txt2img calls may wait at once, so a batcher can merge them into one UNet
    batch (studio.batching); the GPU lock still serialises GPU work with every other mode."""
    default_width, default_height = snapped(ctx.native_size, DEFAULT_SHAPE)
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            prompts = prompt_block(ctx, "e.g. photo of a tailored wool coat, camel, studio light, full body")
            with gr.Row():  # the main action right under the prompt (Ctrl+Enter in a prompt does the same)
                run = gr.Button("Generate", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            with gr.Row(equal_height=False):
                shape = gr.Radio([(label, key) for key, (label, _, _) in SHAPES.items()], value=DEFAULT_SHAPE,
                                 label="Shape", scale=4)  # fmt: skip
                swap = gr.Button("⇄ Swap", size="sm", scale=0, min_width=80)
            with gr.Row():
                width = gr.Slider(64, ctx.limits.max_side, value=default_width, step=8, label="Width")
                height = gr.Slider(64, ctx.limits.max_side, value=default_height, step=8, label="Height")
            sampling = sampling_block(ctx)
            with gr.Row():
                batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Batch size")
                batch_count = gr.Slider(1, ctx.limits.max_batch_count, value=1, step=1, label="Batch count")
            image_prompt = image_prompt_box(ctx)
            draft_ui = draft_controls()
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            preview = gr.Image(label="Live preview", visible=False, interactive=False, height=256)
            gallery, seed_used, infotext = results_block()
            link_seed(sampling, seed_used, gallery)
    fields = {
        **field_components(prompts),
        **field_components(sampling),
        "width": width,
        "height": height,
        "batch_size": batch_size,
        "batch_count": batch_count,
        **image_prompt,
    }

    def txt2img(
        prompt: str,
        negative_prompt: str,
        num_inference_steps: float,
        guidance_scale: float,
        width: float,
        height: float,
        scheduler: str,
        seed: float,
        batch_size: float,
        batch_count: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
        ip_adapter_image: list[str] | None = None,  # the image prompt: optional, for API clients and callers too
        ip_adapter_scale: str = "0.6",
        ip_adapter_model: str = "ip-adapter_sd15",
    ) -> Iterator[tuple[Any, ...]]:
        yield from gallery_outputs(generate(locals(), request, progress))

    def generate(form: dict[str, Any], request: gr.Request, progress: gr.Progress, every: int = 0) -> Iterator[Event]:
        req = form_request(Txt2ImgRequest, form)
        return run_events(ctx.board, request, progress, lambda job: calls.run(req, job), preview_every=every)

    @functools.wraps(txt2img)
    def txt2img_live(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, ...]]:
        """The browser's twin of /txt2img: the same parameters, one more output (the live preview)."""
        form = inspect.signature(txt2img).bind(*args, **kwargs).arguments
        stream = generate(form, form["request"], form.get("progress", gr.Progress()), ctx.preview_every)
        yield from gallery_outputs(stream, preview=True)

    queue: dict[str, Any] = (
        {"concurrency_id": "txt2img", "concurrency_limit": calls.concurrency}
        if calls.concurrency > 1
        else {"concurrency_id": "gpu"}
    )
    inputs = inputs_for(txt2img, fields)
    outputs = [gallery, seed_used, infotext]
    # The browser watches the image develop (a generator twin with one more output, the preview); the /txt2img API
    # is the plain handler on an event of its own, so clients still get exactly (gallery, seed, infotext).
    gr.on(
        [run.click, prompts.prompt.submit],
        ctx.gpu(txt2img_live),
        inputs=inputs,
        outputs=[*outputs, preview],
        api_name="txt2img_live",
        api_visibility="private",
        show_progress_on=gallery,  # steps and time left once, on the results
        **queue,
    )
    gr.on([], ctx.gpu(txt2img), inputs=inputs, outputs=outputs, api_name=calls.name, **queue)
    wire_drafts(ctx, calls, draft_ui, fields, (gallery, seed_used, infotext), [run.click, prompts.prompt.submit])
    shape.input(lambda key: snapped(ctx.native_size, key), inputs=shape, outputs=[width, height], queue=False,
                api_visibility="private")  # fmt: skip
    swap.click(lambda w, h: (h, w), inputs=[width, height], outputs=[width, height], queue=False,
               api_visibility="private")  # fmt: skip
    return Tab(txt2img, fields, gallery, prompt=prompts.prompt, extras={"preview": preview})


# ---- fast drafts: LCM-LoRA drafts in a few steps, then the chosen one rendered in full by its seed ---------------
@dataclass
class DraftControls:
    draft: gr.Button
    render: gr.Button
    steps: gr.Slider
    guidance: gr.Slider
    choices: gr.State  # one dict per draft in the results (prompt, negative prompt, seed, size)
    chosen: gr.State  # the index picked in the results (None: the first)


def draft_controls() -> DraftControls:
    with gr.Row():
        draft = gr.Button("Draft (LCM, 4–8 steps)", elem_classes="starts-run")
        render = gr.Button("Render this draft", elem_classes="starts-run")
    with gr.Accordion("Draft settings", open=False):
        with gr.Row():
            steps = gr.Slider(1, MAX_DRAFT_STEPS, value=DRAFT_STEPS, step=1, label="Draft steps")
            guidance = gr.Slider(1, MAX_DRAFT_GUIDANCE, value=DRAFT_GUIDANCE, step=0.1, label="Draft CFG")
        gr.Markdown(
            "Drafts sample with LCM-LoRA in a few steps at low CFG (1 = no negative prompt). Click a draft "
            "in the results, then **Render this draft**: its seed and prompt, at the Steps, Sampler and "
            "CFG above."
        )
    return DraftControls(draft, render, steps, guidance, gr.State([]), gr.State(None))


def wire_drafts(
    ctx: UIContext,
    calls: ModeCalls,
    ui: DraftControls,
    form: dict[str, gr.components.Component],
    results: tuple[gr.Gallery, gr.Number, gr.Textbox],
    generate_triggers: list[Any],
) -> None:
    """`form`: the txt2img form by field name; `results`: gallery, seed used, infotext."""
    draft_action, render_action = calls.actions["draft"], calls.actions["render_draft"]

    def draft(
        prompt: str,
        negative_prompt: str,
        num_inference_steps: float,
        guidance_scale: float,
        width: float,
        height: float,
        seed: float,
        batch_size: float,
        batch_count: float,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        req = form_request(DraftRequest, locals())
        stream = run_events(ctx.board, request, progress, lambda job: draft_action(req, job))
        result = yield from finished(stream, lambda: (gr.skip(),) * 5)
        if result is None or not result.images:  # cancelled: the results shown before stay
            return
        choices = [asdict(choice) for choice in draft_choices(result)]
        yield [str(p) for p in result.paths], result.seed, result.images[0].infotext, choices, None

    def render_draft(
        prompt: str,
        negative_prompt: str,
        seed: float,
        width: float,
        height: float,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        """A draft rendered in full: its prompts, seed and size at these steps, CFG and sampler (`/render_draft`)."""
        choice = form_request(DraftChoice, locals())
        req = form_request(Txt2ImgRequest, {**locals(), "prompt": choice.prompt})
        yield from gallery_outputs(
            run_events(ctx.board, request, progress, lambda job: render_action(choice, req, job))
        )

    def render_chosen(
        choices: list[dict[str, Any]],
        chosen: int | None,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        if not choices:
            raise gr.Error("No draft to render: press Draft first, then click the draft you like in the results.")
        picked = choices[chosen if chosen is not None and 0 <= chosen < len(choices) else 0]
        shown = render_draft(**picked, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             scheduler=scheduler, request=request, progress=progress)  # fmt: skip
        for outputs in shown:
            yield (*outputs, gr.skip(), gr.skip())
        yield (gr.skip(),) * 3 + ([], None)  # the drafts are rendered: forget them

    def pick(event: gr.SelectData) -> int:
        return int(event.index)

    states = [ui.choices, ui.chosen]
    draft_fields = {**form, "num_inference_steps": ui.steps, "guidance_scale": ui.guidance}
    ui.draft.click(
        ctx.gpu(draft),
        inputs=inputs_for(draft, draft_fields),
        outputs=[*results, *states],
        api_name="draft",
        concurrency_id="gpu",
        show_progress_on=results[0],
    )
    gr.on([], ctx.gpu(render_draft), inputs=inputs_for(render_draft, form), outputs=list(results),
          api_name="render_draft", concurrency_id="gpu")  # fmt: skip
    ui.render.click(
        ctx.gpu(render_chosen),
        inputs=inputs_for(render_chosen, {**form, "choices": ui.choices, "chosen": ui.chosen}),
        outputs=[*results, *states],
        api_visibility="private",
        concurrency_id="gpu",
        show_progress_on=results[0],
    )
    results[0].select(pick, outputs=ui.chosen, queue=False, api_visibility="private")
    # txt2img results replace the drafts in the gallery: forget them, so Render never picks a stale seed
    gr.on(generate_triggers, lambda: ([], None), outputs=states, queue=False, api_visibility="private")
