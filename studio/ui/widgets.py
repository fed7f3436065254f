"""Widgets and handler plumbing every tab shares. Tabs receive engine callables; they never import the model."""

from __future__ import annotations

import dataclasses
import logging
import math
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import gradio as gr

from studio.engine.checks import MAX_SEED
from studio.jobs import JobBoard
from studio.schedulers import DEFAULT_SAMPLER, SAMPLERS
from studio.settings import Limits
from studio.ui.styles_picker import styles_picker
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
    styles: Callable[[], list[Any]] | None = None  # the style folders' entries (studio.styles.StyleFile), listed anew


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
    reuse_seed: gr.Button  # the selected result's seed into the form (see `link_seed`)
    random_seed: gr.Button


def prompt_block(ctx: UIContext, placeholder: str, negative: str = "") -> PromptBlock:
    prompt = gr.Textbox(label="Prompt", lines=3, placeholder=placeholder)
    count = gr.Markdown(ctx.count_tokens(""), elem_classes=["token-count"])
    negative = ", ".join(part for part in (ctx.default_negative_prompt, negative) if part)
    negative_prompt = gr.Textbox(label="Negative prompt", lines=2, value=negative)
    prompt.change(ctx.count_tokens, inputs=prompt, outputs=count, queue=False, api_visibility="private")
    styles_picker(ctx.styles, prompt)  # every tab's prompt: its LoRAs and embeddings, inserted as tags / words
    return PromptBlock(prompt, count, negative_prompt)


def sampling_block(ctx: UIContext, steps: int = 25, guidance: float = 7.0) -> SamplingBlock:
    with gr.Row():
        num_inference_steps = gr.Slider(1, ctx.limits.max_steps, value=steps, step=1, label="Steps")
        guidance_scale = gr.Slider(0, 30, value=guidance, step=0.5, label="CFG scale",
                                   info="How closely the picture follows the prompt (5–9 is usual).")  # fmt: skip
    with gr.Row():
        # min_width: on a phone the pair wraps, so "DPM++ 2M Karras" is not written over its arrow
        scheduler = gr.Dropdown(list(SAMPLERS), value=DEFAULT_SAMPLER, label="Sampler", min_width=200)
        seed = gr.Number(value=-1, precision=0, minimum=-1, maximum=MAX_SEED, label="Seed (-1 = random)", min_width=200)
        with gr.Column(scale=0, min_width=90):
            reuse_seed = gr.Button("↻ Reuse seed", size="sm", min_width=80)
            random_seed = gr.Button("Random seed", size="sm", min_width=80)
    random_seed.click(lambda: -1, outputs=seed, queue=False, api_visibility="private")
    return SamplingBlock(num_inference_steps, guidance_scale, scheduler, seed, reuse_seed, random_seed)


def link_seed(sampling: SamplingBlock, seed_used: gr.Number, gallery: gr.Gallery) -> None:
    """The "Reuse seed" button puts the seed of the picked (or first) result into the form's seed field."""

    def reuse(used: float | None, shown: Any) -> Any:
        if used is None or not gallery_paths(shown):
            gr.Warning("No result yet: generate first, or pick a result, then reuse its seed.")
            return gr.skip()
        gr.Info(f"Seed {int(used)} reused: the next run starts from the same noise.")
        return int(used)

    sampling.reuse_seed.click(reuse, inputs=[seed_used, gallery], outputs=sampling.seed, concurrency_limit=None,
                              api_visibility="private")  # fmt: skip


def results_block(label: str = "Results") -> tuple[gr.Gallery, gr.Number, gr.Textbox]:
    # interactive=False: results are not an upload box, and only a static Gallery fires .change when a handler
    # fills it (Gradio 6.31), which the shell's session results and Send-to reset listen to.
    gallery = gr.Gallery(
        label=label, format="png", type="filepath", columns=2, height="auto", object_fit="contain", interactive=False
    )
    with gr.Row():
        # hidden until there is a result: Gradio shows an empty number as 0, which reads like a seed
        seed_used = gr.Number(label="Seed used", value=None, precision=0, interactive=False, visible=False)
    infotext = gr.Textbox(label="Parameters", lines=3, interactive=False, buttons=["copy"])
    # the seed and parameters follow the image picked in the gallery (image 2 of a batch has its own seed)
    gallery.select(selected_facts, inputs=gallery, outputs=[seed_used, infotext], queue=False,
                   api_visibility="private")  # fmt: skip
    gallery.change(lambda value: gr.Number(visible=bool(value)), inputs=gallery, outputs=seed_used, queue=False,
                   api_visibility="private")  # fmt: skip
    return gallery, seed_used, infotext


def gallery_paths(value: Any) -> list[str]:
    """Paths out of a Gallery input value (tuples of (path, caption), dicts or plain paths)."""
    paths = []
    for item in value or []:
        if isinstance(item, tuple | list):
            item = item[0]
        if isinstance(item, dict):
            item = (item.get("image") or {}).get("path") if "image" in item else item.get("path")
        if isinstance(item, str):
            paths.append(item)
    return paths


def selected_facts(value: Any, evt: gr.SelectData) -> tuple[Any, Any]:
    """The picked result's seed and `parameters`, read from its own PNG."""
    from PIL import Image

    from studio.metadata import parse_infotext, read_parameters

    paths = gallery_paths(value)
    if not isinstance(evt.index, int) or not 0 <= evt.index < len(paths):
        return gr.skip(), gr.skip()
    with Image.open(paths[evt.index]) as image:
        text = read_parameters(image) or ""
    seed = parse_infotext(text).params.get("Seed", "")
    return (int(seed) if seed.lstrip("-").isdigit() else gr.skip()), text


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
    if optional and (value is None or value == "" or (base is not bool and value == 0)):
        return None  # an emptied or 0 optional number means "not set"; an unticked optional flag stays False
    if base is int:
        return as_int(value, name)
    if base is float:
        return as_float(value, name)
    if base is bool:
        return bool(value)
    if base is str:
        return "" if value is None else str(value)
    if typing.get_origin(base) is tuple:
        return _as_tuple(value, typing.get_args(base)[0], name)
    return value


def _as_tuple(value: Any, item: Any, name: str) -> tuple[Any, ...]:
    """A list field: a list as sent, or numbers as text separated by commas ("0.7, 0.3")."""
    if value is None or value == "":
        return ()
    if isinstance(value, str) and item is float:
        return tuple(as_float(part, name) for part in value.replace(";", ",").split(",") if part.strip())
    return tuple(value) if isinstance(value, list | tuple) else (value,)


def field_components(block: Any) -> dict[str, gr.components.Component]:
    """A block dataclass's input components by field name (PromptBlock, SamplingBlock); displays such as the token
    counter are left out."""
    parts = {spec.name: getattr(block, spec.name) for spec in dataclasses.fields(block)}
    return {name: part for name, part in parts.items() if isinstance(part, gr.components.FormComponent)}
