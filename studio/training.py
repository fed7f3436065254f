"""Train a style: a DreamBooth-LoRA from 5-30 of the house's own photos, on the resident base model.

The method is diffusers' `train_dreambooth_lora.py`: peft LoRA layers on the UNet attention (`to_q`, `to_k`,
`to_v`, `to_out.0`; optionally the text encoder's `q/k/v/out_proj`), the noise-prediction loss (epsilon or
v-prediction, as the scheduler says) on the instance images encoded by the VAE, optional prior preservation with
class images the base model generates itself, AdamW, gradient-norm clipping, constant learning rate.

The shared base never carries the adapter: training runs on weight-sharing copies of the base's UNet and text
encoder (`tensors.shared_copy`, as the draft UNet is built), the base's own weights frozen. Each step takes the
GPU lock (`cache.gpu()`) for itself alone, so designers' generations run between steps, and none of them ever sees
the training copy.

Deterministic: every random draw of step `k` comes from a generator seeded by (seed, k) on the CPU, so a run
resumed from a checkpoint (LoRA weights + AdamW state + step, in a private folder under `Settings.train_dir`, named
by a hash of the request and its images) reaches the very weights of an uninterrupted run. Cancel writes a
checkpoint and stops; the same request again resumes.

The result is a LoRA `.safetensors` in the kohya/A1111 key layout (the conversion of `studio.tiny_styles`), with
kohya's `ss_*` metadata, written atomically into the LoRA folder under a slug of the style's name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import re
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from studio.engine.contract import Cancelled, Generated, Job, Result, Studio
from studio.errors import RequestError
from studio.images import ImageInputError, load_image
from studio.metadata import format_infotext
from studio.outputs import atomic_write
from studio.style_modules import TEXT_TARGETS, UNET_TARGETS, kohya_state

log = logging.getLogger(__name__)

MODE = "train_style"
MIN_IMAGES, MAX_IMAGES = 5, 30
MAX_TRAIN_PIXELS = 40_000_000  # a 40 MP camera file is fine; a bigger one is refused in words
MAX_STEPS = 10_000
MAX_RANK = 128
SLUG_CHARS = 48
COMMON_BELOW = 20_000  # CLIP BPE ids are in merge order: a whole word below this id is a common word
PRIOR_WEIGHT = 1.0
# Measured (benchmarks/bench_training.py): seconds per step of the SD1.5 UNet (859.5 M parameters) at 256 px on the
# 2-core build machine; the estimate scales it by parameters and pixels.
CPU_SECONDS_SD15_256 = 80.0
SD15_PARAMS = 859.5e6


@dataclass(frozen=True)
class Kind:
    label: str
    instance: str  # the prompt of an image without a caption; {t} = the trigger word
    class_prompt: str  # what prior preservation generates
    steps: int
    learning_rate: float
    rank: int
    prior_preservation: bool
    train_text_encoder: bool


KINDS: dict[str, Kind] = {
    "object": Kind("A garment or object", "a photo of {t} garment", "a photo of a garment", 800, 1e-4, 8, True, False),
    "texture": Kind(
        "A print or texture", "{t} print, fabric pattern", "a fabric print pattern", 600, 1e-4, 8, False, False
    ),  # fmt: skip
    "person": Kind("A person", "a photo of {t} person", "a photo of a person", 1000, 1e-4, 16, True, True),
    "look": Kind("An overall look", "a photo in {t} style", "a photo", 1200, 5e-5, 16, False, True),
}
DEFAULT_KIND = "object"


@dataclass(frozen=True)
class TrainRequest:
    name: str = ""  # the style's name: the LoRA file is a slug of it
    trigger: str = ""
    images: tuple[Any, ...] = ()  # uploaded files (paths Gradio wrote), PIL images or arrays
    kind: str = DEFAULT_KIND
    captions: str = ""  # optional: one line per image, in order; a line without the trigger gets it in front
    num_train_steps: int = 0  # 0: the kind's default
    learning_rate: float = 0.0  # 0: the kind's default
    rank: int = 0  # 0: the kind's default
    resolution: int = 0  # 0: the model's native size
    prior_preservation: bool | None = None  # None: the kind's default
    train_text_encoder: bool | None = None  # None: the kind's default
    seed: int = 0
    sample_every: int = 0  # a sample image with the trigger word every N steps (0: only at the end)
    checkpoint_every: int = 100
    overwrite: bool = False
    class_images: int = 0  # prior preservation: 0 = twice the instance images
    sample_steps: int = 20  # denoising steps of samples and class images

    def settings(self) -> dict[str, Any]:
        """The effective training settings: the kind's defaults where the request leaves them open."""
        kind = KINDS[self.kind]
        return {
            "num_train_steps": self.num_train_steps or kind.steps,
            "learning_rate": self.learning_rate or kind.learning_rate,
            "rank": self.rank or kind.rank,
            "prior_preservation": kind.prior_preservation
            if self.prior_preservation is None
            else self.prior_preservation,
            "train_text_encoder": kind.train_text_encoder
            if self.train_text_encoder is None
            else self.train_text_encoder,
        }


def preset_fields(kind: str) -> dict[str, Any]:
    """A kind's defaults as the form's fields (the tab's presets)."""
    k = KINDS[kind]
    return {"num_train_steps": k.steps, "learning_rate": k.learning_rate, "rank": k.rank,
            "prior_preservation": k.prior_preservation, "train_text_encoder": k.train_text_encoder}  # fmt: skip


# ---- checks ---------------------------------------------------------------------------------------------------------
def slug(name: str) -> str:
    """The LoRA's file name: [a-z0-9-], at most SLUG_CHARS; never a path."""
    text = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_CHARS].strip("-")
    if not text:
        raise RequestError("Give the style a name with some letters or digits (it names the LoRA file).")
    return text


def trigger_problem(tokenizer: Any, trigger: str, hint: str = "") -> str | None:
    """Why `trigger` cannot be the trigger word (with a rare one proposed), or None."""
    word = trigger.strip()
    if not word:
        return f"Give a trigger word: a rare made-up word such as '{propose_trigger(tokenizer, hint)}'."
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{1,31}", word):
        return (f"The trigger word must be one word of 2-32 letters or digits (starting with a letter); got "
                f"'{word[:40]}'. Try '{propose_trigger(tokenizer, hint)}'.")  # fmt: skip
    if is_common(tokenizer, word):
        return (f"'{word}' is already a common word to the model (one token of its vocabulary), so training would "
                f"overwrite what it means everywhere. Use a rare made-up word such as "
                f"'{propose_trigger(tokenizer, hint)}'.")  # fmt: skip
    return None


def is_common(tokenizer: Any, word: str) -> bool:
    ids = tokenizer(word, add_special_tokens=False).input_ids
    vocab = tokenizer.get_vocab()
    return len(ids) == 1 and ids[0] < COMMON_BELOW and f"{word.lower()}</w>" in vocab


def propose_trigger(tokenizer: Any, hint: str = "") -> str:
    letters = re.sub(r"[^a-z]", "", hint.lower())
    candidates = [f"{letters[:3]}xq" if len(letters) >= 3 else "", "ohwx", "zkq", "qxv", "vrtx"]
    return next(c for c in candidates if c and not is_common(tokenizer, c))


@dataclass
class Plan:
    """A checked request: its images (square, at the training size), prompts and the LoRA file to write."""

    request: TrainRequest
    settings: dict[str, Any]
    images: list[Image.Image]
    hashes: list[str]
    prompts: list[str]
    resolution: int
    target: Path
    key: str
    device: torch.device


def square(image: Image.Image, size: int) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.LANCZOS)


def plan(studio: Studio, req: TrainRequest) -> Plan:
    """Every check before any GPU work; each failure a `RequestError` in words."""
    settings = studio.cache.settings
    if req.kind not in KINDS:
        raise RequestError(f"Kind must be one of {', '.join(KINDS)}; got '{req.kind}'.")
    name = slug(req.name)
    effective = req.settings()
    steps, rank, lr = effective["num_train_steps"], effective["rank"], effective["learning_rate"]
    if not 1 <= steps <= MAX_STEPS:
        raise RequestError(f"Training steps must be between 1 and {MAX_STEPS}; got {steps}.")
    if not 1 <= rank <= MAX_RANK:
        raise RequestError(f"Rank must be between 1 and {MAX_RANK}; got {rank}.")
    if not 0 < lr <= 1e-2 or not math.isfinite(lr):
        raise RequestError(f"Learning rate must be above 0 and at most 0.01 (1e-4 is usual); got {lr:g}.")
    if req.sample_every < 0 or req.checkpoint_every < 0 or not 1 <= req.sample_steps <= 150:
        raise RequestError("Sample/checkpoint cadences must be 0 or more steps; sample steps 1-150.")
    base = studio.cache.base()
    native = int(base.unet.config.sample_size) * int(base.vae_scale_factor)
    resolution = req.resolution or native
    if resolution % 64 or not 64 <= resolution <= 1024:
        raise RequestError(f"Resolution must be a multiple of 64 from 64 to 1024; got {resolution}.")
    problem = trigger_problem(base.tokenizer, req.trigger, req.name)
    if problem:
        raise RequestError(problem)
    trigger = req.trigger.strip()
    images = list(req.images or ())
    if not MIN_IMAGES <= len(images) <= MAX_IMAGES:
        raise RequestError(
            f"Upload {MIN_IMAGES} to {MAX_IMAGES} images of the style; got {len(images)}. About 15 varied photos "
            "(angles, light, backgrounds) work best."
        )
    loaded: list[Image.Image] = []
    hashes: list[str] = []
    seen: dict[str, int] = {}
    smallest = resolution // 2
    for number, value in enumerate(images, 1):
        try:
            image = load_image(value, MAX_TRAIN_PIXELS, what=f"training image {number}")
        except ImageInputError as exc:
            raise RequestError(str(exc)) from None
        if min(image.size) < smallest:
            raise RequestError(
                f"Training image {number} is only {image.width}x{image.height}; each needs at least {smallest} px "
                f"on its short side (training runs at {resolution} px). Replace it with a larger photo."
            )
        digest = hashlib.sha256(f"{image.size}".encode() + image.tobytes()).hexdigest()
        if digest in seen:
            raise RequestError(f"Training images {seen[digest]} and {number} are the same picture; remove one.")
        seen[digest] = number
        loaded.append(square(image, resolution))
        hashes.append(digest)
    lines = req.captions.splitlines() if req.captions.strip() else []
    if lines and len(lines) != len(images):
        raise RequestError(f"Captions: give one line per image ({len(images)}) or none; got {len(lines)} lines.")
    template = KINDS[req.kind].instance
    prompts = [_caption(line, trigger, template) for line in lines] if lines else [template.format(t=trigger)] * len(
        images)  # fmt: skip
    target = Path(settings.lora_dir) / f"{name}.safetensors"
    if target.exists() and not req.overwrite:
        raise RequestError(
            f"A LoRA named '{name}' is already in the LoRA folder. Choose another style name, or tick "
            "'Replace an existing LoRA' to overwrite it."
        )
    device = studio.cache.device
    if device.type == "cpu" and not settings.train_on_cpu:
        raise RequestError(no_gpu_message(base.unet, resolution, steps))
    key_source = {
        "model": studio.cache.checkpoint().name, "hashes": hashes, "prompts": prompts, "resolution": resolution,
        "trigger": trigger, "seed": req.seed, "class_images": req.class_images, "sample_steps": req.sample_steps,
        "kind": req.kind, **effective,
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(key_source, sort_keys=True).encode()).hexdigest()[:24]
    return Plan(req, effective, loaded, hashes, prompts, resolution, target, key, device)


def _caption(line: str, trigger: str, template: str) -> str:
    line = line.strip()
    if not line:
        return template.format(t=trigger)
    return line if re.search(rf"\b{re.escape(trigger)}\b", line, flags=re.IGNORECASE) else f"{trigger}, {line}"


def cpu_seconds_per_step(unet: Any, resolution: int) -> float:
    params = sum(p.numel() for p in unet.parameters())
    return CPU_SECONDS_SD15_256 * (params / SD15_PARAMS) * (resolution / 256) ** 2


def no_gpu_message(unet: Any, resolution: int, steps: int) -> str:
    seconds = cpu_seconds_per_step(unet, resolution) * steps
    when = f"{seconds / 3600:.1f} hours" if seconds >= 3600 else f"{max(1, round(seconds / 60))} minutes"
    return (
        f"No GPU here: training {steps} steps at {resolution} px on the CPU would take about {when}. Run the studio "
        "on a machine with a GPU, or, to train on the CPU anyway, the operator sets STUDIO_TRAIN_ON_CPU=1 and "
        "restarts the studio."
    )


# ---- the trainer ----------------------------------------------------------------------------------------------------
def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) % (2**63))


class Trainer:
    """LoRA layers on weight-sharing copies of the base's UNet (and text encoder), and one optimizer step at a time.
    Build it, and call `step`/`sample`, under the GPU lock."""

    def __init__(
        self, base: Any, p: Plan, class_images: Sequence[Image.Image] = (), checkpointing: bool | None = None
    ) -> None:
        """`checkpointing` (gradient checkpointing on the copies): on a GPU unless told; it trades compute for memory
        and changes no result. A half-precision base trains under autocast, on any device."""
        from diffusers import DDPMScheduler
        from peft import LoraConfig, inject_adapter_in_model

        from studio.tensors import shared_copy

        self.base, self.plan, self.seed = base, p, p.request.seed
        self.device = p.device
        self.rank = int(p.settings["rank"])
        self.train_text = bool(p.settings["train_text_encoder"])
        self.autocast = base.unet.dtype in (torch.float16, torch.bfloat16)  # LoRA weights train in float32
        self.checkpointing = self.device.type == "cuda" if checkpointing is None else checkpointing
        self.noise_scheduler = DDPMScheduler.from_config(base.scheduler.config)
        self.unet: Any = shared_copy(base.unet)
        self.text: Any = shared_copy(base.text_encoder) if self.train_text else base.text_encoder
        for module in {id(m): m for m in (self.unet, self.text)}.values():
            module.requires_grad_(False)  # the base's (shared) weights are never trained
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            config = LoraConfig(r=self.rank, lora_alpha=self.rank, init_lora_weights="gaussian",
                                target_modules=UNET_TARGETS)  # fmt: skip
            inject_adapter_in_model(config, self.unet)
            if self.train_text:
                text_config = dataclasses.replace(config, target_modules=TEXT_TARGETS)
                inject_adapter_in_model(text_config, self.text)
        self.params = self._trainable()
        for param in self.params.values():
            param.data = param.data.to(self.device, torch.float32)
        if self.checkpointing:  # the copies' own modules: the base's are not switched
            getattr(self.unet, "enable_gradient_checkpointing")()  # noqa: B009  # mypy reads a Tensor attribute
            if self.train_text:
                getattr(self.text, "gradient_checkpointing_enable")()  # noqa: B009
        self.unet.train()
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=float(p.settings["learning_rate"]),
                                           betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)  # fmt: skip
        self.instance = self._encode(p.images)
        self.instance_ids = self._ids(p.prompts)
        kind = KINDS[p.request.kind]
        self.prior = list(class_images)
        self.class_latents = self._encode(self.prior) if self.prior else None
        self.class_ids = self._ids([kind.class_prompt] * len(self.prior)) if self.prior else None
        self.steps_done = 0

    def _trainable(self) -> dict[str, torch.nn.Parameter]:
        named = {f"unet.{n}": prm for n, prm in self.unet.named_parameters() if "lora_" in n}
        if self.train_text:
            named.update({f"text.{n}": prm for n, prm in self.text.named_parameters() if "lora_" in n})
        for param in named.values():
            param.requires_grad_(True)
        return dict(sorted(named.items()))

    @torch.no_grad()
    def _encode(self, images: Sequence[Image.Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE's latent distribution (mean, std) of each image; each step samples from it, as the script."""
        vae = self.base.vae
        arrays = np.stack([np.asarray(i.convert("RGB"), dtype=np.float32) / 127.5 - 1 for i in images])
        pixels = torch.from_numpy(arrays).permute(0, 3, 1, 2).to(self.device, vae.dtype)
        dist = vae.encode(pixels).latent_dist
        return dist.mean.float(), dist.std.float()

    def _ids(self, prompts: Sequence[str]) -> torch.Tensor:
        tok = self.base.tokenizer
        return tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                   return_tensors="pt").input_ids.to(self.device)  # fmt: skip

    def _hidden(self, ids: torch.Tensor) -> torch.Tensor:
        if self.train_text:
            return self.text(ids)[0]
        with torch.no_grad():
            return self.text(ids)[0]

    def _loss(self, latents: tuple[torch.Tensor, torch.Tensor], ids: torch.Tensor, pick: torch.Tensor,
              gen: torch.Generator, timesteps: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        mean, std = latents[0][pick], latents[1][pick]
        sample = mean + std * torch.randn(mean.shape, generator=gen).to(self.device)
        latent = sample * float(self.base.vae.config.scaling_factor)
        noise = torch.randn(latent.shape, generator=gen).to(self.device)
        total = int(self.noise_scheduler.config.num_train_timesteps)
        t = timesteps if timesteps is not None else torch.randint(0, total, (len(pick),), generator=gen)
        t = t.to(self.device)
        noisy = self.noise_scheduler.add_noise(latent, noise, t)
        kind = self.noise_scheduler.config.prediction_type
        target = noise if kind == "epsilon" else self.noise_scheduler.get_velocity(latent, noise, t)
        dtype = self.base.unet.dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast):
            hidden = self._hidden(ids[pick])
            pred = self.unet(noisy.to(dtype), t, hidden.to(dtype)).sample
        return torch.nn.functional.mse_loss(pred.float(), target.float())

    def step(self, step: int) -> float:
        """One optimizer step (number `step`, from 0); its draws come from (seed, step) alone."""
        gen = _step_generator(self.seed, step)
        count = self.instance[0].shape[0]
        pick = torch.randint(0, count, (1,), generator=gen)
        loss = self._loss(self.instance, self.instance_ids, pick, gen)
        if self.class_latents is not None and self.class_ids is not None:
            prior_pick = torch.randint(0, self.class_latents[0].shape[0], (1,), generator=gen)
            loss = loss + PRIOR_WEIGHT * self._loss(self.class_latents, self.class_ids, prior_pick, gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps_done = step + 1
        return float(loss.detach())

    @torch.no_grad()
    def evaluate(self, seed: int = 12345, timesteps: Sequence[int] = (100, 300, 500, 700, 900)) -> float:
        """The loss on a fixed batch: every instance image at fixed timesteps with fixed noise (no optimizer)."""
        count, losses = self.instance[0].shape[0], []
        for t in timesteps:
            gen = torch.Generator().manual_seed(seed + t)
            pick = torch.arange(count)
            losses.append(float(self._loss(self.instance, self.instance_ids, pick, gen, torch.full((count,), t))))
        return float(np.mean(losses))

    @torch.no_grad()
    def sample(self, prompt: str, seed: int, steps: int) -> Image.Image:
        """A picture from the training copy (the base pipeline's other modules, the copies' UNet/text encoder)."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(**{**self.base.components, "unet": self.unet, "text_encoder": self.text})
        pipe.set_progress_bar_config(disable=True)
        self.unet.eval()
        try:
            gen = torch.Generator().manual_seed(seed)
            size = self.plan.resolution
            return pipe(prompt, num_inference_steps=steps, generator=gen, width=size, height=size).images[0]
        finally:
            self.unet.train()

    # ---- checkpoints and the result ---------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "step": self.steps_done,
            "lora": {name: p.detach().cpu().clone() for name, p in self.params.items()},
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def save_checkpoint(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        buffer = io.BytesIO()
        torch.save(self.state(), buffer)
        atomic_write(folder / "checkpoint.pt", lambda handle: handle.write(buffer.getvalue()), folder / "tmp")

    def load_checkpoint(self, folder: Path) -> int:
        """Continue from `folder`'s checkpoint; returns its step (0 when there is none)."""
        path = folder / "checkpoint.pt"
        if not path.is_file():
            return 0
        state = torch.load(path, map_location="cpu", weights_only=True)
        if set(state["lora"]) != set(self.params):
            log.warning("Checkpoint %s does not fit this training; starting over", path)
            return 0
        with torch.no_grad():
            for name, param in self.params.items():
                param.copy_(state["lora"][name].to(param.device))
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.steps_done = int(state["step"])
        return self.steps_done

    def lora_state(self) -> dict[str, torch.Tensor]:
        """The trained LoRA in kohya/A1111 keys (`lora_unet_...lora_down.weight`, `.alpha`)."""
        from peft import get_peft_model_state_dict

        unet = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(self.unet).items()}
        alpha = float(self.rank)  # lora_alpha = rank: scale 1, as trained
        out = kohya_state(unet, "lora_unet", alpha)
        if self.train_text:
            text = {k: v.detach().float().cpu() for k, v in get_peft_model_state_dict(self.text).items()}
            out.update(kohya_state(text, "lora_te", alpha))
        return out


# ---- status, for the tab and the API --------------------------------------------------------------------------------
@dataclass
class Status:
    step: int = 0
    total: int = 0
    loss: float | None = None
    started: float = field(default_factory=time.monotonic)
    first_step: int = 0

    def text(self) -> str:
        if not self.total:
            return "Preparing…"
        done, elapsed = self.step - self.first_step, time.monotonic() - self.started
        left = elapsed / done * (self.total - self.step) if done > 0 else None
        eta = (
            ""
            if left is None
            else f" · about {left / 60:.0f} min left"
            if left >= 90
            else f" · about {left:.0f} s left"
        )
        loss = "" if self.loss is None else f" · loss {self.loss:.4f}"
        return f"Step {self.step}/{self.total}{loss}{eta}"


STATUS: dict[str, Status] = {}  # plan key -> the latest status of its training
_RUNNING: set[str] = set()  # plan keys training now (one checkpoint folder each)
_RUNNING_LOCK = threading.Lock()
BY_JOB: dict[int, Status] = {}  # id(job) -> the same status, for the front that holds the job


def job_status(studio: Studio, job: Job) -> str:
    """ "Step 120/800 · loss 0.1234 · about 6 min left" for the training `job` runs ("" when none)."""
    status = BY_JOB.get(id(job))
    return status.text() if status is not None else ""


def kind_defaults(studio: Studio, kind: str) -> dict[str, Any]:
    return preset_fields(kind if kind in KINDS else DEFAULT_KIND)


def proposed_trigger(studio: Studio, name: str) -> str:
    return propose_trigger(studio.cache.base().tokenizer, name)


def check_request(req: TrainRequest, limits: Any) -> None:
    """The checks that need no model and no image decoding (the rest run in `plan`, before any GPU work)."""
    if req.kind not in KINDS:
        raise RequestError(f"Kind must be one of {', '.join(KINDS)}; got '{req.kind}'.")
    effective = req.settings()
    if not 1 <= effective["num_train_steps"] <= MAX_STEPS or not 1 <= effective["rank"] <= MAX_RANK:
        raise RequestError(f"Training steps must be 1-{MAX_STEPS} and rank 1-{MAX_RANK}.")


def status_of(studio: Studio, req: TrainRequest) -> str:
    try:
        return STATUS[plan_key(studio, req)].text()
    except (KeyError, RequestError):
        return ""


def plan_key(studio: Studio, req: TrainRequest) -> str:
    return plan(studio, req).key


def checkpoint_folder(studio: Studio, key: str) -> Path:
    return Path(studio.cache.settings.train_dir) / key


# ---- the job --------------------------------------------------------------------------------------------------------
def train(studio: Studio, req: TrainRequest, job: Job | None = None, *, on_trainer: Any = None) -> Result:
    """Train the LoRA `req` describes, reporting progress, samples and checkpoints through `job`; write the file."""
    job = job or Job()
    p = plan(studio, req)
    with _RUNNING_LOCK:
        if p.key in _RUNNING:
            raise RequestError("This very training is already running; wait for it, or cancel it first.")
        _RUNNING.add(p.key)
    status = STATUS[p.key] = BY_JOB[id(job)] = Status(total=0)
    try:
        return _train(studio, req, job, p, status, on_trainer)
    finally:
        BY_JOB.pop(id(job), None)
        STATUS.pop(p.key, None)
        with _RUNNING_LOCK:
            _RUNNING.discard(p.key)


def _train(studio: Studio, req: TrainRequest, job: Job, p: Plan, status: Status, on_trainer: Any) -> Result:
    cache, total = studio.cache, int(p.settings["num_train_steps"])
    folder = checkpoint_folder(studio, p.key)
    base = cache.base()
    with cache.gpu():
        class_images = _class_images(studio, base, p) if p.settings["prior_preservation"] else []
        trainer = Trainer(base, p, class_images)
        start = trainer.load_checkpoint(folder)
    if on_trainer is not None:  # tests look at the trainer
        on_trainer(trainer)
    status.total, status.step, status.first_step, status.started = total, start, start, time.monotonic()
    samples: list[Generated] = []
    trigger = req.trigger.strip()
    sample_prompt = KINDS[req.kind].instance.format(t=trigger)
    for step in range(start, total):
        if job.cancel.is_set():
            with cache.gpu():
                trainer.save_checkpoint(folder)
            raise Cancelled()
        with cache.gpu():  # per step: generations run between steps
            status.loss = trainer.step(step)
        status.step = step + 1
        if job.on_step is not None:
            job.on_step(step + 1, total)
        if req.checkpoint_every and (step + 1) % req.checkpoint_every == 0 and step + 1 < total:
            with cache.gpu():
                trainer.save_checkpoint(folder)
        if req.sample_every and (step + 1) % req.sample_every == 0 and step + 1 < total:
            samples.append(_sample(studio, trainer, p, sample_prompt, step + 1, job))
    path = write_lora(studio, trainer, p)
    samples.append(_sample(studio, trainer, p, sample_prompt, total, job))
    shutil.rmtree(folder, ignore_errors=True)
    params = {"LoRA": path.stem, "Use": f"<lora:{path.stem}:0.8> {trigger}", "Steps": total, "Loss": status.loss}
    return Result(samples, req.seed, params)


def _class_images(studio: Studio, base: Any, p: Plan) -> list[Image.Image]:
    """Prior-preservation images of the kind's class, generated by the base model itself (seeded)."""
    count = p.request.class_images or 2 * len(p.images)
    prompt = KINDS[p.request.kind].class_prompt
    out = []
    for index in range(count):
        gen = torch.Generator().manual_seed(p.request.seed + 10_000 + index)
        out.append(base(prompt, num_inference_steps=p.request.sample_steps, generator=gen, width=p.resolution,
                        height=p.resolution).images[0])  # fmt: skip
    return out


def _sample(studio: Studio, trainer: Trainer, p: Plan, prompt: str, step: int, job: Job) -> Generated:
    with studio.cache.gpu():
        image = trainer.sample(prompt, p.request.seed, p.request.sample_steps)
    infotext = format_infotext(prompt, "", {"Steps": p.request.sample_steps, "Seed": p.request.seed,
                                            "Mode": MODE, "Training step": step})  # fmt: skip
    path = studio.outputs.save(image, infotext, MODE, compress_level=studio.cache.settings.png_level)
    generated = Generated(path, image, p.request.seed, infotext)
    if job.on_image is not None:
        job.on_image(generated)
    if job.on_preview is not None:
        job.on_preview(image, step, int(p.settings["num_train_steps"]))
    return generated


def metadata(studio: Studio, p: Plan) -> dict[str, str]:
    """kohya's `ss_*` keys (A1111 and ComfyUI read them) and the modelspec trigger phrase."""
    trigger, s = p.request.trigger.strip(), p.settings
    tags: dict[str, int] = {}
    for prompt in p.prompts:
        for tag in (t.strip() for t in prompt.split(",")):
            if tag:
                tags[tag] = tags.get(tag, 0) + 1
    tags[trigger] = max(tags.get(trigger, 0), len(p.prompts))
    return {
        "ss_output_name": p.target.stem,
        "ss_tag_frequency": json.dumps({f"1_{trigger}": tags}),
        "ss_base_model_version": "sd_v1",
        "ss_sd_model_name": studio.cache.checkpoint().label,
        "sshs_model_hash": studio.cache.model_hash(),
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(s["rank"]),
        "ss_network_alpha": str(s["rank"]),
        "ss_max_train_steps": str(s["num_train_steps"]),
        "ss_steps": str(s["num_train_steps"]),
        "ss_learning_rate": str(s["learning_rate"]),
        "ss_resolution": f"({p.resolution}, {p.resolution})",
        "ss_num_train_images": str(len(p.images)),
        "ss_prior_loss_weight": str(PRIOR_WEIGHT if s["prior_preservation"] else 0.0),
        "ss_seed": str(p.request.seed),
        "ss_training_comment": f"Atelier 'Train a style' ({p.request.kind}); DreamBooth-LoRA",
        "ss_text_encoder_lr": str(s["learning_rate"] if s["train_text_encoder"] else 0),
        "atelier_image_hashes": json.dumps(p.hashes),
        "modelspec.trigger_phrase": trigger,
    }


def write_lora(studio: Studio, trainer: Trainer, p: Plan) -> Path:
    """The LoRA file, written whole or not at all (a temporary file in a hidden folder, then a rename)."""
    from safetensors.torch import save as save_bytes

    if p.target.exists() and not p.request.overwrite:
        raise RequestError(
            f"A LoRA named '{p.target.stem}' appeared in the LoRA folder meanwhile; choose another name."
        )
    data = save_bytes(trainer.lora_state(), metadata=metadata(studio, p))
    p.target.parent.mkdir(parents=True, exist_ok=True)
    temp = p.target.parent / ".atelier-partial"  # a hidden folder: the library lists only files of the folder
    try:
        atomic_write(p.target, lambda handle: handle.write(data), temp)
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return p.target
