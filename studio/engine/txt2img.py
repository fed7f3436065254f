"""txt2img: a garment or look from a description."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from studio import image_prompt
from studio.engine.batches import generators, resolve_seed, run_batches
from studio.engine.checks import RequestError, check_common, check_size, clean_prompts
from studio.engine.contract import Cancelled, Generated, Job, Result, Studio
from studio.engine.saving import Writes, base_params, save_image, to_pil
from studio.engine.steps import PreviewFn, previewer
from studio.preview import preview_due, preview_image
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER


@dataclass(frozen=True)
class Txt2ImgRequest(image_prompt.ImagePromptFields):
    prompt: str
    negative_prompt: str = ""
    num_inference_steps: int = 25
    guidance_scale: float = 7.0
    width: int | None = None  # None: the model's native size
    height: int | None = None
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1  # -1: random; the seed used is returned
    batch_size: int = 1  # images per UNet batch; image i uses seed + i
    batch_count: int = 1  # batches run one after another


def txt2img(studio: Studio, req: Txt2ImgRequest, job: Job | None = None) -> Result:
    check_common(req, studio.limits)
    prompts = clean_prompts(req, studio.limits)
    model = studio.cache.current
    native = studio.cache.native_size(model)
    width, height = req.width or native, req.height or native
    check_size(width, height, studio.limits)
    ip = image_prompt.prepare(studio, req, ref=model)
    pipe = studio.cache.derive(
        StableDiffusionPipeline, scheduler=req.scheduler, ref=model, prompts=prompts, **ip.modules
    )
    units = image_prompt.request_params(req)
    seed = resolve_seed(req.seed)
    with Writes(job, defer=True) as writes, studio.cache.gpu():  # released before the writes start
        images = run_batches(
            studio,
            pipe,
            req,
            writes=writes,
            prompts=prompts,
            job=job,
            size=(width, height),
            seed=seed,
            params=lambda s: {**base_params(studio, req, s, width, height, "txt2img", model), **units},
            prefix="txt2img",
            **ip.call_kwargs(pipe, req.guidance_scale),
        )
    params = {**prompts, **base_params(studio, req, seed, width, height, "txt2img", model), **units}
    return Result(images=[image.result() for image in images], seed=seed, params=params)


# ---- several designers' requests in one UNet batch (studio.batching groups them) --------------------------------
SHARED_FIELDS = ("num_inference_steps", "guidance_scale", "width", "height", "scheduler")  # one pipeline call
OWN_FIELDS = ("prompt", "negative_prompt", "seed", "batch_size", "batch_count")  # per request inside the batch
Outcome = Result | BaseException


def shared_params(req: Txt2ImgRequest) -> tuple[object, ...]:
    return tuple(getattr(req, name) for name in SHARED_FIELDS)


def txt2img_many(
    studio: Studio,
    requests: Sequence[Txt2ImgRequest],
    jobs: Sequence[Job | None],
    on_done: Callable[[int, Outcome], None] | None = None,
) -> list[Outcome]:
    """Requests that share `SHARED_FIELDS` as one UNet batch. Image k of request r uses r's prompts and seed + k
    and is saved with r's metadata, so it is the image `txt2img(r)` makes, within batched-convolution rounding.

    A cancelled request's images are dropped (its rows cannot leave a running schedule: samplers keep per-row
    state); the run stops once every request is cancelled. An error in one request's callbacks or saving is that
    request's outcome only; an error of the pipeline call itself is raised. `on_done(index, outcome)` fires as
    soon as a request's outcome is known; PNGs are written on the writer threads after the GPU lock is released.
    """
    first = requests[0]
    if any(shared_params(r) != shared_params(first) for r in requests):
        raise ValueError(f"txt2img_many needs requests with equal {', '.join(SHARED_FIELDS)}.")
    group = _Group(requests, jobs, on_done, previewer(studio))
    prompts = group.validate(studio)
    model = studio.cache.current
    native = studio.cache.native_size(model)
    width, height = first.width or native, first.height or native
    try:
        check_size(width, height, studio.limits)
    except RequestError as exc:
        for i in group.waiting():
            group.settle(i, exc)
        return group.outcomes  # type: ignore[return-value]
    styles = prompts[group.waiting()[0]] if group.waiting() else None  # equal in a group (studio.batching)
    pipe = studio.cache.derive(StableDiffusionPipeline, scheduler=first.scheduler, ref=model, prompts=styles)
    seeds = {i: resolve_seed(requests[i].seed) for i in group.waiting()}
    with studio.cache.gpu():
        images = _denoise(pipe, group, prompts, seeds, width, height)
    _save_each(studio, group, prompts, images, seeds, (width, height), model)
    return group.outcomes  # type: ignore[return-value]


def _save_each(
    studio: Studio,
    group: _Group,
    prompts: dict[int, dict[str, str]],
    images: dict[int, list[tuple[np.ndarray, int]]],
    seeds: dict[int, int],
    size: tuple[int, int],
    model: str,
) -> None:
    """Every waiting request's images, on the writer threads; each request is settled once its own are written."""
    writes = {i: Writes(group.jobs[i]) for i in group.waiting()}
    saved = {i: [writes[i].submit(partial(_save, studio, group.requests[i], prompts[i], image, seed, size, model))
                 for image, seed in images[i]] for i in writes}  # fmt: skip
    for i, futures in saved.items():
        writes[i].wait()
        try:  # this request's failure (disk, its own callback); the others still save
            params = {**prompts[i], **base_params(studio, group.requests[i], seeds[i], *size, "txt2img", model)}
            group.settle(i, Result(images=[f.result() for f in futures], seed=seeds[i], params=params))
        except Exception as exc:
            group.settle(i, exc)


def _save(
    studio: Studio,
    req: Txt2ImgRequest,
    prompts: dict[str, str],
    pixels: np.ndarray,
    seed: int,
    size: tuple[int, int],
    model: str,
) -> Generated:
    params = base_params(studio, req, seed, *size, "txt2img", model)
    return save_image(studio, to_pil(pixels), prompts, params, "txt2img", None)


class _NobodyWaiting(Exception):
    """Every request of a pipeline call was cancelled or failed: stop denoising."""


@dataclass
class _Group:
    requests: Sequence[Txt2ImgRequest]
    jobs: Sequence[Job | None]
    on_done: Callable[[int, Outcome], None] | None
    preview: PreviewFn = preview_image
    outcomes: list[Outcome | None] = field(init=False)

    def __post_init__(self) -> None:
        self.outcomes = [None] * len(self.requests)

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is None:
            self.outcomes[index] = outcome
            if self.on_done is not None:
                self.on_done(index, outcome)

    def waiting(self) -> list[int]:
        return [i for i, outcome in enumerate(self.outcomes) if outcome is None]

    def validate(self, studio: Studio) -> dict[int, dict[str, str]]:
        prompts: dict[int, dict[str, str]] = {}
        for i, req in enumerate(self.requests):
            try:
                check_common(req, studio.limits)
                prompts[i] = clean_prompts(req, studio.limits)
                studio.cache.select_styles(prompts[i])  # an unknown LoRA fails its own request only
            except RequestError as exc:
                self.settle(i, exc)
        return prompts

    def callback(self, members: dict[int, int], total: int) -> Callable[..., dict[str, Any]]:
        """Progress (and previews of its own first row, `members[i]`) to each request's own job; a cancel or a
        failing callback settles that request only."""

        def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
            for i, row in members.items():
                job = self.jobs[i]
                if job is None or self.outcomes[i] is not None:
                    continue
                if job.cancel.is_set():
                    self.settle(i, Cancelled("Cancelled."))
                    continue
                try:
                    self._report(job, kwargs.get("latents"), row, step + 1, total)
                except Exception as exc:
                    self.settle(i, exc)
            if all(self.outcomes[i] is not None for i in members):
                raise _NobodyWaiting
            return kwargs

        return on_step_end

    def _report(self, job: Job, latents: Any, row: int, step: int, total: int) -> None:
        if job.on_step is not None:
            job.on_step(step, total)
        if job.on_preview is not None and preview_due(step, total, job.preview_every) and latents is not None:
            image = self.preview(latents[row : row + 1])  # the latents are only read
            if image is not None:
                job.on_preview(image, step, total)


def _denoise(
    pipe: Any, group: _Group, prompts: dict[int, dict[str, str]], seeds: dict[int, int], width: int, height: int
) -> dict[int, list[tuple[np.ndarray, int]]]:
    """One pipeline call per prompt length (chunked long prompts must match in length) over every waiting image."""
    calls: dict[int, list[tuple[int, dict[str, Any]]]] = {}
    for i in group.waiting():
        kwargs = prompt_kwargs(pipe, **prompts[i])
        calls.setdefault(kwargs["prompt_embeds"].shape[1] if "prompt_embeds" in kwargs else 0, []).append((i, kwargs))
    shared = group.requests[0]
    images: dict[int, list[tuple[np.ndarray, int]]] = {i: [] for i in group.waiting()}
    for members in calls.values():
        rows = [
            (i, kwargs, seeds[i] + k)
            for i, kwargs in members
            for k in range(group.requests[i].batch_size * group.requests[i].batch_count)
        ]
        first_rows: dict[int, int] = {}
        for row, (i, _, _) in enumerate(rows):
            first_rows.setdefault(i, row)
        try:
            output = pipe(
                **_stack([kwargs for _, kwargs, _ in rows]),
                num_inference_steps=shared.num_inference_steps,
                guidance_scale=shared.guidance_scale,
                width=width,
                height=height,
                generator=generators([seed for _, _, seed in rows]),
                callback_on_step_end=group.callback(first_rows, shared.num_inference_steps),
                output_type="np",
            )
        except _NobodyWaiting:
            continue
        for (i, _, seed), image in zip(rows, output.images, strict=True):
            images[i].append((image, seed))
    return images


def _stack(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-image prompt arguments as one batch: lists of strings, or concatenated chunked embeddings."""
    if "prompt" in rows[0]:
        return {"prompt": [r["prompt"] for r in rows], "negative_prompt": [r["negative_prompt"] for r in rows]}
    return {
        "prompt_embeds": torch.cat([r["prompt_embeds"] for r in rows]),
        "negative_prompt_embeds": torch.cat([r["negative_prompt_embeds"] for r in rows]),
    }
