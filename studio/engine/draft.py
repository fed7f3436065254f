"""Fast drafts: LCM-LoRA samples a look in 4–8 steps; the chosen draft is then rendered in full with its seed.

The LCM-LoRA (`latent-consistency/lcm-lora-sdv1-5`) lives in a draft UNet of its own (`ModelCache.draft_unet`):
a second module tree over the base UNet's very weights with the LoRA layers injected, so every other call runs
the plain, unwrapped base UNet, and nothing is switched on and off around a call. Each draft samples with a fresh
`LCMScheduler` built from the checkpoint's own scheduler config. A draft image with seed `s` starts from the same
noise as a txt2img image with seed `s` (one CPU generator per image), so `render_draft` re-runs that seed as a
full txt2img render.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from diffusers import LCMScheduler, StableDiffusionPipeline

from studio.engine.batches import resolve_seed, run_batches
from studio.engine.checks import RequestError, check_common, check_size, clean_prompts
from studio.engine.contract import Job, Result, Studio
from studio.engine.saving import Writes
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.registry import HUB_ID, LCM_LORA_FILE
from studio.styles import addnet_hash

DRAFT_STEPS = 4
MAX_DRAFT_STEPS = 8
# LCM distils guidance into the model: 1.0 switches classifier-free guidance off (one UNet pass per step, so the
# negative prompt is not used); up to 2.0 adds a little CFG back at twice the cost per step. Higher burns images.
DRAFT_GUIDANCE = 1.0
MAX_DRAFT_GUIDANCE = 2.0
ADAPTER_SLOT = "lcm_lora"


@dataclass(frozen=True)
class DraftRequest:
    prompt: str
    negative_prompt: str = ""  # used only when guidance_scale > 1
    num_inference_steps: int = DRAFT_STEPS
    guidance_scale: float = DRAFT_GUIDANCE
    width: int | None = None  # None: the model's native size
    height: int | None = None
    seed: int = -1  # -1: random; draft i of the run uses seed + i, as txt2img does
    batch_size: int = 1
    batch_count: int = 1


@dataclass(frozen=True)
class DraftChoice:
    """What identifies one draft for its full render: prompts, seed and size."""

    prompt: str
    negative_prompt: str
    seed: int
    width: int
    height: int


def check_draft(req: DraftRequest, studio: Studio) -> None:
    if not 1 <= req.num_inference_steps <= MAX_DRAFT_STEPS:
        raise RequestError(
            f"Drafts take 1 to {MAX_DRAFT_STEPS} steps (LCM); got {req.num_inference_steps}. "
            "For more steps, render the chosen draft in full."
        )
    if not 1 <= req.guidance_scale <= MAX_DRAFT_GUIDANCE:
        raise RequestError(
            f"Draft guidance (CFG) must be between 1 and {MAX_DRAFT_GUIDANCE:g}: LCM needs low "
            f"guidance; got {req.guidance_scale:g}."
        )
    check_common(req, studio.limits, steps=(1, MAX_DRAFT_STEPS), guidance=(1, MAX_DRAFT_GUIDANCE))


def draft(studio: Studio, req: DraftRequest, job: Job | None = None) -> Result:
    """Drafts with the LCM-LoRA enabled for this call only; saved with `Draft: LCM-LoRA` and its hash."""
    check_draft(req, studio)
    prompts = clean_prompts(req, studio.limits)
    model = studio.cache.current
    native = studio.cache.native_size(model)
    width, height = req.width or native, req.height or native
    check_size(width, height, studio.limits)
    drafting = studio.cache.draft_unet(ADAPTER_SLOT, model)
    pipe = studio.cache.derive(StableDiffusionPipeline, ref=model, prompts=prompts, unet=drafting)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)  # this call's own; the base's untouched
    seed = resolve_seed(req.seed)
    with Writes(job, defer=True) as writes, studio.cache.gpu():
        images = run_batches(
            studio,
            pipe,
            req,
            writes=writes,
            prompts=prompts,
            job=job,
            size=(width, height),
            seed=seed,
            params=lambda s: draft_params(studio, req, s, width, height, model),
            prefix="draft",
        )
    params = {**prompts, **draft_params(studio, req, seed, width, height, model)}
    return Result(images=[image.result() for image in images], seed=seed, params=params)


def draft_params(
    studio: Studio, req: DraftRequest, seed: int, width: int, height: int, model: str | None = None
) -> dict[str, Any]:
    """A1111's keys (Sampler `LCM`, `Lora hashes` as `name: hash`, the LCM-LoRA's and the prompt's own LoRAs'),
    plus `Draft: LCM-LoRA`."""
    source = studio.cache.adapter_source(ADAPTER_SLOT, model)
    recorded = studio.cache.styles.recorded(req.prompt, req.negative_prompt)  # the designer's own styles
    styles = recorded["Lora hashes"]
    return {
        "Steps": req.num_inference_steps,
        "Sampler": "LCM",
        "CFG scale": req.guidance_scale,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": studio.cache.model_hash(model) or None,
        "Model": studio.cache.checkpoint(model).name,
        "Lora hashes": ", ".join(filter(None, [f"{source.rstrip('/').split('/')[-1]}: {lora_hash(source)}", styles])),
        "TI hashes": recorded["TI hashes"],
        "Draft": "LCM-LoRA",
        "Mode": "txt2img-draft",  # a restored draft opens in the txt2img tab
    }


def lora_hash(source: str) -> str:
    """A1111's LoRA short hash: the first 12 hex digits of the SHA-256 of the .safetensors file's tensor data, after
    its header (`studio.styles.addnet_hash`, as for every LoRA) ("" when not found)."""
    path = Path(source) / LCM_LORA_FILE if Path(source).is_dir() else Path(source)
    if not path.is_file() and HUB_ID.match(source):
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source, LCM_LORA_FILE)
        path = Path(found) if isinstance(found, str) else path
    if not path.is_file():
        return ""
    return addnet_hash(path)[:12]


# ---- the chosen draft, rendered in full ---------------------------------------------------------------------
def draft_choices(result: Result) -> list[DraftChoice]:
    """One choice per draft image, in the order the drafts were produced (the gallery's order)."""
    width, height = (int(side) for side in str(result.params["Size"]).split("x"))
    return [
        DraftChoice(result.params["prompt"], result.params["negative_prompt"], image.seed, width, height)
        for image in result.images
    ]


def render_request(choice: DraftChoice, full: Txt2ImgRequest) -> Txt2ImgRequest:
    """The full render of a draft: its prompts, seed and size; the full request's steps, sampler and CFG."""
    return replace(
        full,
        prompt=choice.prompt,
        negative_prompt=choice.negative_prompt,
        seed=choice.seed,
        width=choice.width,
        height=choice.height,
        batch_size=1,
        batch_count=1,
    )


def render_draft(studio: Studio, choice: DraftChoice, full: Txt2ImgRequest, job: Job | None = None) -> Result:
    """A plain txt2img (the base UNet, no LoRA) from the draft's seed: the same starting noise, sampled in full."""
    return txt2img(studio, render_request(choice, full), job)
