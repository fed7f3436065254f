"""The "Train a style" tab: 5-30 photos, a trigger word and a kind become a LoRA in the LoRA folder.

Training runs as a job of this session (Cancel keeps a checkpoint: the same request again resumes there) in a
queue of its own (`concurrency_id="train"`, one at a time), not in the generation queue: designers' generations
run between its steps, each step taking the GPU lock for itself alone. Progress shows the step, the loss and the
time left; a sample picture with the trigger word comes every N steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import gradio as gr

from studio.engine.contract import Finished, Job, Progress, Saved
from studio.ui.running import cancel_button, run_events
from studio.ui.tab import ModeCalls, Tab, inputs_for
from studio.ui.widgets import UIContext, form_request

KIND_CHOICES = [
    ("A garment or object", "object"),
    ("A print or texture", "texture"),
    ("A person", "person"),
    ("An overall look", "look"),
]
DEFAULTS = {"num_train_steps": 800, "learning_rate": 1e-4, "rank": 8, "prior_preservation": True,
            "train_text_encoder": False}  # fmt: skip  # studio.training.KINDS["object"]
WHY_TRIGGER = (
    "A rare made-up word (like ohwx) that the model knows nothing about yet: training gives it the meaning of your "
    "photos. A common word (dress, red) would change what that word means in every prompt."
)


def create(ctx: UIContext, calls: ModeCalls) -> Tab:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320):
            images = gr.File(
                label="Training images (5-30 photos: varied angles, light and backgrounds)",
                file_count="multiple",
                file_types=["image"],
            )
            name = gr.Textbox("", label="Style name (names the LoRA file)", max_lines=1)
            with gr.Row():
                trigger = gr.Textbox("", label="Trigger word", max_lines=1, info=WHY_TRIGGER)
                propose = gr.Button("Propose a trigger word", size="sm", min_width=80)
            kind = gr.Radio(KIND_CHOICES, value="object", label="Kind (sets the defaults below)")
            captions = gr.Textbox("", lines=3, label="Captions (optional: one line per image, in upload order)")
            with gr.Row():
                run = gr.Button("Train", variant="primary", elem_classes="primary-action")
                cancel_button(ctx.board)
            with gr.Accordion("Training settings", open=False):
                with gr.Row():
                    steps = gr.Number(DEFAULTS["num_train_steps"], precision=0, minimum=1, maximum=10_000,
                                      label="Training steps")  # fmt: skip
                    learning_rate = gr.Number(DEFAULTS["learning_rate"], minimum=0, maximum=0.01,
                                              label="Learning rate")  # fmt: skip
                    rank = gr.Slider(1, 128, value=DEFAULTS["rank"], step=1, label="Rank (LoRA size)")
                with gr.Row():
                    resolution = gr.Slider(0, 1024, value=0, step=64, label="Resolution (px, 0 = the model's own)")
                    seed = gr.Number(0, precision=0, label="Seed")
                with gr.Row():
                    prior = gr.Checkbox(True,
                                        label="Prior preservation (class images the model makes itself)")  # fmt: skip
                    text_encoder = gr.Checkbox(False, label="Train the text encoder too")
                with gr.Row():
                    sample_every = gr.Number(100, precision=0, minimum=0, label="Sample every N steps (0 = at the end)")
                    checkpoint_every = gr.Number(100, precision=0, minimum=0, label="Checkpoint every N steps")
                overwrite = gr.Checkbox(False, label="Replace an existing LoRA of the same name (overwrite)")
        with gr.Column(scale=6, min_width=320, elem_classes="results-column"):
            status = gr.Textbox("", label="Training progress", interactive=False)
            gallery = gr.Gallery(label="Samples with the trigger word", format="png", type="filepath", columns=2,
                                 height="auto", interactive=False)  # fmt: skip
            use = gr.Textbox("", label="Use it in any prompt", interactive=False, buttons=["copy"])

    fields = {
        "images": images,
        "name": name,
        "trigger": trigger,
        "kind": kind,
        "captions": captions,
        "num_train_steps": steps,
        "learning_rate": learning_rate,
        "rank": rank,
        "resolution": resolution,
        "seed": seed,
        "prior_preservation": prior,
        "train_text_encoder": text_encoder,
        "sample_every": sample_every,
        "checkpoint_every": checkpoint_every,
        "overwrite": overwrite,
    }

    def train_style(
        images: list[Any] | None,
        name: str,
        trigger: str,
        kind: str,
        captions: str,
        num_train_steps: float,
        learning_rate: float,
        rank: float,
        resolution: float,
        seed: float,
        prior_preservation: bool,
        train_text_encoder: bool,
        sample_every: float,
        checkpoint_every: float,
        overwrite: bool,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> Iterator[tuple[Any, ...]]:
        from studio.training import TrainRequest  # the request type only; the engine runs behind `calls`

        req = form_request(TrainRequest, locals())  # the handler's own parameters, by field name
        held: list[Job] = []
        status_of = calls.actions.get("status")

        def start(job: Job) -> Any:
            held.append(job)
            return calls.run(req, job)

        samples: list[str] = []
        for event in run_events(ctx.board, request, progress, start, desc="Training", what="Training"):
            if isinstance(event, Saved):
                samples.append(str(event.generated.path))
                yield gr.skip(), list(samples), gr.skip()
            elif isinstance(event, Progress) and held and status_of is not None:
                yield status_of(held[0]), gr.skip(), gr.skip()
            elif isinstance(event, Finished):
                params = event.result.params
                done = f"Done: {params.get('Steps')} steps, LoRA '{params.get('LoRA')}' is in the LoRA folder."
                yield done, list(samples), params.get("Use", "")
            else:
                yield gr.skip(), gr.skip(), gr.skip()

    outputs = [status, gallery, use]
    run.click(train_style, inputs=inputs_for(train_style, fields), outputs=outputs, api_name=calls.name,
              concurrency_id="train", concurrency_limit=1)  # fmt: skip

    defaults = calls.actions.get("kind_defaults")
    if defaults is not None:

        def apply(kind: str) -> tuple[Any, ...]:
            values = defaults(kind)
            return (values["num_train_steps"], values["learning_rate"], values["rank"], values["prior_preservation"],
                    values["train_text_encoder"])  # fmt: skip

        kind.change(apply, inputs=kind, outputs=[steps, learning_rate, rank, prior, text_encoder], queue=False,
                    api_visibility="private")  # fmt: skip
    proposer = calls.actions.get("propose_trigger")
    if proposer is not None:
        propose.click(lambda text: proposer(text or ""), inputs=name, outputs=trigger, api_visibility="private",
                      concurrency_limit=None)  # fmt: skip
    else:
        propose.visible = False
    return Tab(train_style, fields, gallery)
