"""Refine: img2img in loops, each output becoming the next input (A1111's "Loopback", done the way designers ask).

A run takes a source image and reports one `LoopImage` per loop and chain to `job.on_image` as soon as it is saved,
so a caller can show each result as it lands; it returns them all in a `RefineResult`. Per loop: the strength comes
from a schedule (constant, or linear to a final strength), the seed from a policy (fixed, +1 per loop, random), and
optional colour correction matches the output's Lab histograms to that loop's own input, which holds the source
palette over any number of loops (each output inherits its input's colour distribution) and keeps every node
reproducible from its parent alone.

`batch_size` runs that many independent chains side by side; chain i uses the loop's seed + i. Each chain image is
its own pipeline call (batch of one), so re-running any node with its recorded seed and parent reproduces it
bit for bit, which batched convolutions do not guarantee.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from diffusers import StableDiffusionImg2ImgPipeline
from PIL import Image

from studio import image_prompt
from studio.color import match_palette
from studio.engine.batches import generators, resolve_seed
from studio.engine.checks import MAX_SEED, RequestError, check_common, check_range, clean_prompts
from studio.engine.contract import Cancelled, Generated, Job, Result, Studio
from studio.engine.saving import Writes, base_params, done, save_image, to_pil
from studio.engine.steps import previewer, step_callback
from studio.images import ImageInputError, load_image
from studio.metadata import format_infotext, read_parameters
from studio.prompts import prompt_kwargs
from studio.schedulers import DEFAULT_SAMPLER
from studio.settings import Limits

log = logging.getLogger(__name__)

DEFAULT_NEGATIVE = "out of frame, duplicate, watermark, signature, text, bad anatomy"
MAX_LOOPS = 32
SCHEDULES = ("constant", "linear")
SEED_POLICIES = ("fixed", "increment", "random")
# Photos up to this many pixels are scaled down to the studio's size limit; anything larger is refused.
UPLOAD_PIXELS = 48_000_000
MIN_SIDE = 64


@dataclass(frozen=True)
class RefineRequest(image_prompt.ImagePromptFields):
    image: Any  # PIL image, numpy array or file path; a PNG already in the outputs folder is its own source
    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE
    strength: float = 0.75  # the first loop's strength
    num_inference_steps: int = 25
    guidance_scale: float = 7.5
    scheduler: str = DEFAULT_SAMPLER
    seed: int = -1  # -1: random; the seeds used are recorded per image
    batch_size: int = 1  # independent chains; chain i uses the loop's seed + i
    loops: int = 1
    strength_schedule: str = "constant"  # or "linear": from `strength` to `final_strength`
    final_strength: float | None = None
    seed_policy: str = "fixed"  # "increment": + batch_size per loop; "random": a fresh seed per loop
    color_correction: bool = False


@dataclass(kw_only=True)
class LoopImage(Generated):
    """One saved result, with the file it was refined from and what was used."""

    parent: Path
    loop: int  # 1-based
    chain: int  # 0-based index within the batch
    strength: float


@dataclass
class RefineResult(Result):
    images: list[LoopImage]  # type: ignore[assignment]  # every loop of every chain, in the order they landed


@dataclass(frozen=True)
class Source:
    image: Image.Image
    path: Path | None  # set when the input already is an outputs file that can be used as is
    parameters: str | None  # the input's own PNG `parameters`, kept on the saved copy


# ---- checks and schedules ---------------------------------------------------------------------------------------
def check_refine(req: RefineRequest, limits: Limits) -> None:
    check_common(req, limits, prompt_required=False)
    check_range("strength", req.strength, 0, 1)
    check_range("loops", req.loops, 1, MAX_LOOPS)
    if req.strength_schedule not in SCHEDULES:
        raise RequestError(f"Unknown strength schedule {req.strength_schedule!r}; use constant or linear.")
    if req.seed_policy not in SEED_POLICIES:
        raise RequestError(f"Unknown seed policy {req.seed_policy!r}; use fixed, increment or random.")
    if req.strength_schedule == "linear":
        if req.final_strength is None:
            raise RequestError("A linear strength schedule needs a final strength.")
        check_range("final_strength", req.final_strength, 0, 1)


def schedule_strengths(req: RefineRequest) -> list[float]:
    """Each loop's strength, rounded to 0.01 (the form's step) so a restored node runs the very same strength."""
    if req.strength_schedule == "constant" or req.loops == 1:
        return [round(req.strength, 2)] * req.loops
    final = float(req.final_strength if req.final_strength is not None else req.strength)
    span = final - req.strength
    return [round(req.strength + span * k / (req.loops - 1), 2) for k in range(req.loops)]


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """How many steps img2img really runs (diffusers' own formula)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def loop_seeds(policy: str, first: int, loops: int, batch_size: int) -> list[int]:
    """Chain 0's seed per loop; chain i adds i."""
    if policy == "fixed":
        return [first] * loops
    if policy == "increment":
        return [(first + k * batch_size) % (MAX_SEED + 1) for k in range(loops)]
    return [first] + [resolve_seed(-1) for _ in range(loops - 1)]


# ---- the source image ---------------------------------------------------------------------------------------------
def fit_size(width: int, height: int, limits: Limits) -> tuple[int, int]:
    """The largest size within the studio's limits, keeping the aspect ratio, each side a multiple of 8."""
    scale = min(1.0, (limits.max_pixels / (width * height)) ** 0.5, limits.max_side / max(width, height))
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)


def load_source(studio: Studio, value: Any) -> Source:
    """Normalise the input (EXIF, modes, 16-bit, alpha); scale it into the limits; refuse what cannot be used."""
    try:
        image = load_image(value, UPLOAD_PIXELS, what="input image")
    except ImageInputError as exc:
        raise RequestError(str(exc)) from None
    parameters = read_parameters(image)
    size = fit_size(image.width, image.height, studio.limits)
    if min(size) < MIN_SIDE:
        raise RequestError(
            f"The input image is {image.width}x{image.height}; Refine needs at least "
            f"{MIN_SIDE} px on each side. Upload a larger image."
        )
    if size != image.size:
        log.info("Refine input %sx%s scaled to %sx%s", *image.size, *size)
        image = image.resize(size, Image.Resampling.LANCZOS)
    return Source(image=image, path=_reusable(studio, value, size), parameters=parameters)


def _reusable(studio: Studio, value: Any, size: tuple[int, int]) -> Path | None:
    if not isinstance(value, str | Path) or not studio.outputs.owns(Path(value)) or Path(value).suffix != ".png":
        return None
    with Image.open(value) as stored:
        return Path(value).resolve() if stored.mode == "RGB" and stored.size == size else None


def save_source(studio: Studio, source: Source) -> Path:
    """A copy of the input in the outputs folder, so the history's root survives restarts; keeps its metadata."""
    infotext = source.parameters or format_infotext(
        "", "", {"Size": f"{source.image.width}x{source.image.height}", "Mode": "refine-source", "Loop": 0}
    )
    return studio.outputs.save(source.image, infotext, "refine-source", compress_level=studio.cache.settings.png_level)


# ---- the run --------------------------------------------------------------------------------------------------------
def refine(studio: Studio, req: RefineRequest, job: Job | None = None) -> RefineResult:
    """Validate (errors before anything runs or is saved), then run every loop; each loop image goes to
    `job.on_image` as soon as it is saved, so a caller shows it (and grows its history) as it lands."""
    check_refine(req, studio.limits)
    prompts = clean_prompts(req, studio.limits)
    strengths = schedule_strengths(req)
    for strength in set(strengths):
        if denoising_steps(req.num_inference_steps, strength) < 1:
            raise RequestError(
                f"Strength {strength:g} with {req.num_inference_steps} steps runs no denoising step; "
                "raise the strength or the number of steps."
            )
    source = load_source(studio, req.image)
    first = resolve_seed(req.seed)
    model = studio.cache.current
    with Writes(job) as writes:
        futures = _loops(studio, req, prompts, source, strengths, first, job, writes, model)
    images = [future.result() for future in futures]
    params = {**prompts, **base_params(studio, req, first, *source.image.size, "refine", model)}
    return RefineResult(images=images, seed=first, params=params)


def _loops(
    studio: Studio,
    req: RefineRequest,
    prompts: dict[str, str],
    source: Source,
    strengths: list[float],
    first: int,
    job: Job | None,
    writes: Writes,
    model: str,
) -> list[Future[LoopImage]]:
    """Every loop of every chain. A loop's output, colour-corrected, is the next loop's input at once; it is saved
    (with its parent's file name, once that is written) on a writer thread while the next loop denoises."""
    seeds = loop_seeds(req.seed_policy, first, req.loops, req.batch_size)
    total = req.batch_size * sum(denoising_steps(req.num_inference_steps, s) for s in strengths)
    done_steps = 0
    root = done(source.path) if source.path else writes.submit(partial(save_source, studio, source), tell=False)
    chains: list[tuple[Future[Any], Image.Image]] = [(root, source.image)] * req.batch_size
    items: list[Future[LoopImage]] = []
    for loop, (strength, seed) in enumerate(zip(strengths, seeds, strict=True), start=1):
        for chain, (parent, parent_image) in enumerate(chains):
            if job is not None and job.cancel.is_set():
                raise Cancelled("Cancelled.")
            steps_job = _offset_job(job, done_steps, total)
            chain_seed = (seed + chain) % (MAX_SEED + 1)
            image = to_pil(_img2img(studio, req, prompts, parent_image, strength, chain_seed, steps_job, model))
            done_steps += denoising_steps(req.num_inference_steps, strength)
            if req.color_correction:
                image = match_palette(image, parent_image)
            where = Loop(loop, chain, strength, chain_seed)
            item = writes.submit(partial(_save_loop, studio, req, prompts, image, parent, where, model))
            items.append(item)
            chains[chain] = (item, image)
    return items


@dataclass(frozen=True)
class Loop:
    """Where an image sits in a run: its loop (1-based), its chain (0-based), its strength and seed."""

    loop: int
    chain: int
    strength: float
    seed: int


def _save_loop(
    studio: Studio,
    req: RefineRequest,
    prompts: dict[str, str],
    image: Image.Image,
    parent: Future[Any],
    where: Loop,
    model: str,
) -> LoopImage:
    """On a writer thread: the parent (the source's copy or the previous loop's image) is written first."""
    written = parent.result()
    parent_path = written.path if isinstance(written, Generated) else Path(written)
    params = {
        **base_params(studio, req, where.seed, image.width, image.height, "refine", model),
        **image_prompt.request_params(req),
        "Denoising strength": where.strength,
        "Loop": f"{where.loop}/{req.loops}",
        "Parent": parent_path.name,
        "Strength schedule": req.strength_schedule,
        "Seed policy": req.seed_policy,
        "Color correction": req.color_correction,
    }
    saved = save_image(studio, image, prompts, params, "refine", None)
    return LoopImage(**vars(saved), parent=parent_path, loop=where.loop, chain=where.chain, strength=where.strength)


def _offset_job(job: Job | None, done: int, total: int) -> Job | None:
    """The caller's job, with step counts reported over the whole run (loops x chains)."""
    if job is None:
        return None
    on_step = job.on_step
    return replace(job, on_step=None if on_step is None else (lambda step, _: on_step(done + step, total)))


def _img2img(
    studio: Studio,
    req: RefineRequest,
    prompts: dict[str, str],
    image: Image.Image,
    strength: float,
    seed: int,
    job: Job | None,
    model: str,
) -> np.ndarray:
    """One plain diffusers img2img call; the GPU lock is held for the call only, never across loops."""
    ip = image_prompt.prepare(studio, req, ref=model)
    pipe = studio.cache.derive(
        StableDiffusionImg2ImgPipeline, scheduler=req.scheduler, ref=model, prompts=prompts, **ip.modules
    )
    steps = denoising_steps(req.num_inference_steps, strength)
    with studio.cache.gpu():
        output = pipe(
            **ip.call_kwargs(pipe, req.guidance_scale),
            **prompt_kwargs(pipe, **prompts),
            image=image,
            strength=strength,
            num_inference_steps=req.num_inference_steps,
            guidance_scale=req.guidance_scale,
            generator=generators([seed]),
            callback_on_step_end=step_callback(job, steps, previewer(studio)),
            output_type="np",
        )
    return output.images[0]
