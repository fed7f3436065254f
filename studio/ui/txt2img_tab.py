"""The txt2img tab: a garment or look from a description."""

from __future__ import annotations

from collections.abc import Callable

import gradio as gr

from studio.engine.common import Job, Result
from studio.engine.txt2img import Txt2ImgRequest
from studio.ui.widgets import (
    UIContext,
    as_int,
    cancel_button,
    prompt_block,
    results_block,
    run_generation,
    sampling_block,
)

Generate = Callable[[Txt2ImgRequest, Job], Result]


def create(ctx: UIContext, generate: Generate) -> dict[str, gr.components.Component]:
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
        with gr.Column(scale=6, min_width=320):
            gallery, seed_used, infotext = results_block()

    def txt2img(prompt: str, negative_prompt: str, num_inference_steps: float, guidance_scale: float,
                width: float, height: float, scheduler: str, seed: float, batch_size: float, batch_count: float,
                request: gr.Request,
                progress: gr.Progress = gr.Progress()) -> tuple[list[str], int, str]:  # noqa: B008 (Gradio idiom)
        req = Txt2ImgRequest(
            prompt=prompt, negative_prompt=negative_prompt or "",
            num_inference_steps=as_int(num_inference_steps, "Steps"), guidance_scale=float(guidance_scale),
            width=as_int(width, "Width"), height=as_int(height, "Height"), scheduler=scheduler,
            seed=as_int(seed, "Seed"), batch_size=as_int(batch_size, "Batch size"),
            batch_count=as_int(batch_count, "Batch count"),
        )
        return run_generation(ctx.board, request, progress, lambda job: generate(req, job))

    inputs = [prompts.prompt, prompts.negative_prompt, sampling.num_inference_steps, sampling.guidance_scale,
              width, height, sampling.scheduler, sampling.seed, batch_size, batch_count]
    run.click(txt2img, inputs=inputs, outputs=[gallery, seed_used, infotext], api_name="txt2img",
              concurrency_id="gpu")
    prompts.prompt.submit(txt2img, inputs=inputs, outputs=[gallery, seed_used, infotext],
                          api_visibility="private", concurrency_id="gpu")
    return {"handler": txt2img, "inputs": inputs, "gallery": gallery, "prompt": prompts.prompt}
