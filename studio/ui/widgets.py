"""Widgets and handler plumbing every tab shares. Tabs receive engine callables; they never import the model."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import logging
import math
import queue
import threading
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr
import torch
from PIL import Image

from studio.engine.checks import MAX_SEED
from studio.engine.contract import Cancelled, Generated, Job, Result
from studio.errors import StudioError
from studio.jobs import JobBoard
from studio.schedulers import DEFAULT_SAMPLER, SAMPLERS
from studio.settings import Limits
from studio.zerogpu import identity

log = logging.getLogger(__name__)
R = TypeVar("R")


@dataclass(frozen=True)
class UIContext:
    """What tabs need to know to lay out their forms, without touching the model."""

    native_size: int
    limits: Limits
    count_tokens: Callable[[str], str]
    board: JobBoard = field(default_factory=JobBoard)
    default_negative_prompt: str = ""  # the public demo's; prepended to every tab's negative prompt
    preview_every: int = 5  # live preview every N denoising steps (settings.preview_every); 0 = off
    # Marks every handler that runs on the GPU, where its event is wired: `spaces.GPU` on a ZeroGPU Space
    # (studio.zerogpu.gpu_section), the identity elsewhere.
    gpu: Callable[[Any], Any] = identity
    outputs_root: Path = Path("outputs")  # the served outputs folder (Refine's history lives in it)
    restore: Callable[[str | Path], Any] | None = None  # PNG -> studio.restore.Restored (the studio's Restorer)


@dataclass
class PromptBlock:
    prompt: gr.Textbox
    prompt_count: gr.Markdown
    negative_prompt: gr.Textbox


@dataclass
class SamplingBlock:
    num_inference_steps: gr.Slider
    guidance_scale: gr.Slider
    scheduler: gr.Dropdown
    seed: gr.Number


def prompt_block(ctx: UIContext, placeholder: str, negative: str = "") -> PromptBlock:
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder=placeholder)
    count = gr.Markdown(ctx.count_tokens(""), elem_classes=["token-count"])
    negative = ", ".join(part for part in (ctx.default_negative_prompt, negative) if part)
    negative_prompt = gr.Textbox(label="Negative prompt", lines=2, value=negative)
    prompt.change(ctx.count_tokens, inputs=prompt, outputs=count, queue=False, api_visibility="private")
    return PromptBlock(prompt, count, negative_prompt)


def sampling_block(ctx: UIContext, steps: int = 25, guidance: float = 7.0) -> SamplingBlock:
    with gr.Row():
        num_inference_steps = gr.Slider(1, ctx.limits.max_steps, value=steps, step=1, label="Steps")
        guidance_scale = gr.Slider(0, 30, value=guidance, step=0.5, label="CFG scale")
    with gr.Row():
        # min_width: on a phone the pair wraps, so "DPM++ 2M Karras" is not written over its arrow
        scheduler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler", min_width=200)
        seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)", min_width=200)
    return SamplingBlock(num_inference_steps, guidance_scale, scheduler, seed)


def results_block(label: str = "Results") -> tuple[gr.Gallery, gr.Number, gr.Textbox]:
    # interactive=False: results are not an upload box, and only a static Gallery fires .change when a handler
    # fills it (Gradio 6.31), which the shell's session results and Send-to reset listen to.
    gallery = gr.Gallery(
        label=label, format="png", type="filepath", columns=2, height="auto", object_fit="contain", interactive=False
    )
    with gr.Row():
        seed_used = gr.Number(label="Seed used", value=None, precision=0, interactive=False)
    infotext = gr.Textbox(label="Parameters", lines=3, interactive=False, buttons=["copy"])
    return gallery, seed_used, infotext


@contextlib.contextmanager
def guarded_job(
    board: JobBoard,
    request: gr.Request | None,
    progress: gr.Progress,
    *,
    desc: str = "Denoising",
    what: str = "Generation",
    kept: Callable[[], int] = lambda: 0,
    where: str = "",
) -> Iterator[Job]:
    """The session's job for one run, with per-step progress and Cancel; failures become words for the designer.

    A cancel ends the block quietly (with a toast saying how many finished images, `kept()`, were kept `where`);
    anything else becomes a `gr.Error`. Images saved before either are already on disk."""
    session = getattr(request, "session_hash", None) or "anonymous"
    job = board.start(session)
    job.on_step = lambda step, total: progress((step, total), desc=desc, unit="steps")
    try:
        yield job
    except Cancelled:
        gr.Warning(f"Cancelled. {kept()} finished image(s) were kept{where}.")
    except StudioError as exc:
        raise gr.Error(str(exc)) from None
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        raise gr.Error("The GPU ran out of memory. Try a smaller size or batch; the studio is still running.") from None
    except Exception:
        log.exception("%s failed", what)
        raise gr.Error(
            f"{what} failed unexpectedly (details in the server log). Finished images are kept{where}; "
            "try again, or with other settings."
        ) from None
    finally:
        board.finish(session, job)


def run_generation(
    board: JobBoard, request: gr.Request | None, progress: gr.Progress, run: Callable[[Job], Result]
) -> tuple[list[str], int, str]:
    """Run an engine call for one session (`guarded_job`); returns (image paths, seed, infotext).

    After a cancel, the images finished before it are still shown."""
    produced: list[Generated] = []
    with guarded_job(board, request, progress, kept=lambda: len(produced)) as job:
        job.on_image = produced.append
        sink = _PREVIEW_SINK.get()
        if sink is not None:  # running under `live`: previews go to its generator
            sink.job, job.on_preview, job.preview_every = job, sink.put, sink.every
        result = run(job)
        return [str(p) for p in result.paths], result.seed, result.images[0].infotext if result.images else ""
    return (
        [str(g.path) for g in produced],
        produced[0].seed if produced else -1,
        produced[0].infotext if produced else "",
    )


# ---- live preview: a generator twin of a tab handler ----------------------------------------------------------
@dataclass
class PreviewSink:
    """Where `run_generation` sends a running job's previews while it runs under `live`."""

    every: int
    put: Callable[[Image.Image, int, int], None]
    job: Job | None = None


_PREVIEW_SINK: contextvars.ContextVar[PreviewSink | None] = contextvars.ContextVar("atelier_preview", default=None)


def live(handler: Callable[..., tuple[Any, ...]], every: int, outputs: int = 3) -> Callable[..., Iterator[Any]]:
    """A generator twin of a tab handler for the browser: the same named parameters and the same final outputs,
    plus one more output, a preview image shown every `every` denoising steps and hidden again at the end.

    The handler runs on a worker thread in a copy of the caller's contextvars context, so `gr.Progress`,
    `gr.Warning` and errors reach Gradio as before; its own API endpoint stays the plain handler. If Gradio closes
    the generator early (the browser left), the job is cancelled and the worker awaited, so the GPU queue slot is
    not handed on while this run still holds the GPU."""

    @functools.wraps(handler)
    def stream(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, ...]]:
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        sink = PreviewSink(every, lambda image, step, total: events.put(("preview", image)))
        context = contextvars.copy_context()

        def work() -> None:
            try:
                events.put(("done", context.run(_run_with_sink, sink, handler, args, kwargs)))
            except BaseException as exc:  # raised again by the generator, in Gradio's thread
                events.put(("error", exc))

        worker = threading.Thread(target=work, name="live-preview", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = events.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    yield (*value, gr.update(value=None, visible=False))
                    return
                yield (*(gr.skip(),) * outputs, gr.update(value=value, visible=True))
        finally:
            if worker.is_alive():
                if sink.job is not None:
                    sink.job.cancel.set()
                worker.join()

    return stream


def _run_with_sink(
    sink: PreviewSink, handler: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    _PREVIEW_SINK.set(sink)  # inside the worker's own context copy: no other run sees it
    return handler(*args, **kwargs)


def cancel_button(board: JobBoard) -> gr.Button:
    button = gr.Button("Cancel", variant="stop", size="sm")

    def cancel(request: gr.Request) -> None:
        if board.cancel(request.session_hash or "anonymous"):
            gr.Info("Stopping after the current step…")

    button.click(cancel, queue=False, api_visibility="private")
    return button


def as_int(value: Any, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise gr.Error(f"{name} must be a whole number.") from None


def as_float(value: Any, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number.") from None
    if not math.isfinite(number):
        raise gr.Error(f"{name} must be a finite number; got {value!r}.")
    return number


def form_request(cls: type[R], values: Mapping[str, Any]) -> R:
    """A request from form values taken by field name (a handler passes its own parameters): each value is
    converted to the field's declared type (whole numbers, numbers, flags, text; 0 or empty means None for an
    optional size; an emptied number takes the request's default), so a field can neither be mis-ordered nor
    silently hold the wrong type."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for spec in dataclasses.fields(cls):  # type: ignore[arg-type]
        if spec.name not in values:
            continue
        value = values[spec.name]
        if value is None and hints[spec.name] is not str and spec.default is not dataclasses.MISSING:
            # an emptied number or choice takes the request's default; an emptied text stays empty
            kwargs[spec.name] = spec.default
        else:
            kwargs[spec.name] = _convert(value, hints[spec.name], spec.name)
    return cls(**kwargs)


def _convert(value: Any, kind: Any, name: str) -> Any:
    optional = type(None) in typing.get_args(kind)
    base = next((t for t in typing.get_args(kind) if t is not type(None)), kind) if optional else kind
    if optional and value in (None, "", 0):
        return None
    if base is int:
        return as_int(value, name)
    if base is float:
        return as_float(value, name)
    if base is bool:
        return bool(value)
    if base is str:
        return "" if value is None else str(value)
    return value


def field_components(block: Any) -> dict[str, gr.components.Component]:
    """A block dataclass's input components by field name (PromptBlock, SamplingBlock); displays such as the token
    counter are left out."""
    parts = {spec.name: getattr(block, spec.name) for spec in dataclasses.fields(block)}
    return {name: part for name, part in parts.items() if isinstance(part, gr.components.FormComponent)}
