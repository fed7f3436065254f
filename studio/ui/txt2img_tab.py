"""The txt2img tab: a garment or look from a description."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import gradio as gr

from studio.engine.common import Job, Result
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
from studio.ui.widgets import (
    UIContext,
    as_int,
    cancel_button,
    live,
    prompt_block,
    results_block,
    run_generation,
    sampling_block,
)

Generate = Callable[[Txt2ImgRequest, Job], Result]


@dataclass(frozen=True)
class DraftActions:
    """The engine calls behind the draft buttons: LCM-LoRA drafts, and the full render of a chosen draft."""

    draft: Callable[[DraftRequest, Job], Result]
    render: Callable[[DraftChoice, Txt2ImgRequest, Job], Result]


def create(
    ctx: UIContext, generate: Generate, concurrency: int = 1, drafts: DraftActions | None = None
) -> dict[str, gr.components.Component]:
    """`concurrency` > 1: that many txt2img calls may wait at once, so a batcher can merge them into one UNet batch
    (studio.batching); the GPU lock still serialises GPU work with every other mode."""
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            prompts = prompt_block(ctx, "e.g. photo of a tailored wool coat, camel, studio light, full body")
            sampling = sampling_block(ctx)
            with gr.Row():
                width = gr.Slider(64, ctx.limits.max_side, value=ctx.native_size, step=8, label="Width")
                height = gr.Slider(64, ctx.limits.max_side, value=ctx.native_size, step=8, label="Height")
            with gr.Row():
                batch_size = gr.Slider(1, ctx.limits.max_batch_size, value=1, step=1, label="Batch size")
                batch_count = gr.Slider(1, ctx.limits.max_batch_count, value=1, step=1, label="Batch count")
            with gr.Row():
                run = gr.Button("Generate", variant="primary")
                cancel_button(ctx.board)
            draft_ui = draft_controls() if drafts is not None else None
        with gr.Column(scale=6, min_width=320):
            preview = gr.Image(label="Live preview", visible=False, interactive=False, height=256)
            gallery, seed_used, infotext = results_block()

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
    ) -> tuple[list[str], int, str]:
        req = Txt2ImgRequest(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            num_inference_steps=as_int(num_inference_steps, "Steps"),
            guidance_scale=float(guidance_scale),
            width=as_int(width, "Width"),
            height=as_int(height, "Height"),
            scheduler=scheduler,
            seed=as_int(seed, "Seed"),
            batch_size=as_int(batch_size, "Batch size"),
            batch_count=as_int(batch_count, "Batch count"),
        )
        return run_generation(ctx.board, request, progress, lambda job: generate(req, job))

    inputs = [
        prompts.prompt,
        prompts.negative_prompt,
        sampling.num_inference_steps,
        sampling.guidance_scale,
        width,
        height,
        sampling.scheduler,
        sampling.seed,
        batch_size,
        batch_count,
    ]
    queue: dict = (
        {"concurrency_id": "txt2img", "concurrency_limit": concurrency}
        if concurrency > 1
        else {"concurrency_id": "gpu"}
    )
    outputs = [gallery, seed_used, infotext]
    # The browser watches the image develop (a generator twin with one more output, the preview); the /txt2img API
    # is the plain handler on an event of its own, so clients still get exactly (gallery, seed, infotext).
    gr.on(
        [run.click, prompts.prompt.submit],
        ctx.gpu(live(txt2img, ctx.preview_every)),
        inputs=inputs,
        outputs=[*outputs, preview],
        api_name="txt2img_live",
        api_visibility="private",
        **queue,
    )
    gr.on([], ctx.gpu(txt2img), inputs=inputs, outputs=outputs, api_name="txt2img", **queue)
    if drafts is not None and draft_ui is not None:
        wire_drafts(
            ctx,
            drafts,
            draft_ui,
            [prompts.prompt, prompts.negative_prompt, width, height, sampling.seed, batch_size, batch_count],
            [sampling.num_inference_steps, sampling.guidance_scale, sampling.scheduler],
            [gallery, seed_used, infotext],
            [run.click, prompts.prompt.submit],
        )
    return {"handler": txt2img, "inputs": inputs, "gallery": gallery, "prompt": prompts.prompt, "preview": preview}


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
        draft = gr.Button("Draft (LCM, 4–8 steps)")
        render = gr.Button("Render this draft")
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
    actions: DraftActions,
    ui: DraftControls,
    form: list[gr.components.Component],
    full: list[gr.components.Component],
    results: list[gr.components.Component],
    generate_triggers: list[object],
) -> None:
    """`form`: prompt, negative prompt, width, height, seed, batch size, batch count; `full`: the form's steps,
    CFG and sampler for the full render; `results`: gallery, seed used, infotext."""

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
    ) -> tuple[object, ...]:
        req = DraftRequest(
            prompt=prompt,
            negative_prompt=negative_prompt or "",
            num_inference_steps=as_int(num_inference_steps, "Draft steps"),
            guidance_scale=float(guidance_scale),
            width=as_int(width, "Width"),
            height=as_int(height, "Height"),
            seed=as_int(seed, "Seed"),
            batch_size=as_int(batch_size, "Batch size"),
            batch_count=as_int(batch_count, "Batch count"),
        )
        done: list[Result] = []

        def run(job: Job) -> Result:
            done.append(actions.draft(req, job))
            return done[-1]

        shown = run_generation(ctx.board, request, progress, run)
        choices = [asdict(choice) for choice in draft_choices(done[0])] if done else []  # none when cancelled
        return (*shown, choices, None)

    def render(
        choices: list[dict],
        chosen: int | None,
        num_inference_steps: float,
        guidance_scale: float,
        scheduler: str,
        request: gr.Request,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple[object, ...]:
        if not choices:
            raise gr.Error("No draft to render: press Draft first, then click the draft you like in the results.")
        choice = DraftChoice(**choices[chosen if chosen is not None and 0 <= chosen < len(choices) else 0])
        req = Txt2ImgRequest(
            prompt=choice.prompt,
            num_inference_steps=as_int(num_inference_steps, "Steps"),
            guidance_scale=float(guidance_scale),
            scheduler=scheduler,
        )
        return (*run_generation(ctx.board, request, progress, lambda job: actions.render(choice, req, job)), [], None)

    def pick(event: gr.SelectData) -> int:
        return int(event.index)

    prompt, negative_prompt, width, height, seed, batch_size, batch_count = form
    states = [ui.choices, ui.chosen]
    draft_inputs = [prompt, negative_prompt, ui.steps, ui.guidance, width, height, seed, batch_size, batch_count]
    ui.draft.click(
        ctx.gpu(draft), inputs=draft_inputs, outputs=[*results, *states], api_name="draft", concurrency_id="gpu"
    )
    ui.render.click(
        ctx.gpu(render),
        inputs=[*states, *full],
        outputs=[*results, *states],
        api_visibility="private",
        concurrency_id="gpu",
    )
    results[0].select(pick, outputs=ui.chosen, queue=False, api_visibility="private")
    # txt2img results replace the drafts in the gallery: forget them, so Render never picks a stale seed
    gr.on(generate_triggers, lambda: ([], None), outputs=states, queue=False, api_visibility="private")
