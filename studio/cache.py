"""The one model cache every mode shares.

- One resident base `StableDiffusionPipeline` per checkpoint (at most `max_resident_models`, least recently
  used evicted). Loading returns early when the checkpoint is already resident.
- Every mode's pipeline is derived from the base with `from_pipe(base, torch_dtype=base.dtype)`: no weight is
  ever copied. Each derivation gets its own fresh scheduler, so no request mutates shared scheduler state.
- ControlNet, the HED annotator, a 9-channel inpainting UNet and the image prompts' CLIP vision encoder live in
  their own lazily-loaded slots; an IP-Adapter lives in a weight-sharing copy of the UNet it adapts
  (`image_prompt_unet`).
- One re-entrant lock serialises all GPU work (`with cache.gpu():`) and loads. Looking up what is already resident
  (a base, a derived pipeline's template, a companion) takes no lock, so a request prepares its pipeline while
  another one holds the GPU.
- A failed load leaves the previous model resident and serving: the new one is loaded before anything is evicted.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import inspect
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from studio import fastpath, ip_adapter, registry
from studio.errors import ModelLoadError
from studio.registry import Checkpoint
from studio.schedulers import get_sampler
from studio.settings import Settings
from studio.style_modules import STYLES_ATTRIBUTE, StyleModules
from studio.styles import Selection, StyleLibrary
from studio.tensors import adapter_param_bytes, shared_copy, unique_param_bytes

log = logging.getLogger(__name__)


@dataclass
class Resident:
    name: str
    kind: str  # "base", "controlnet", "annotator", "inpaint_unet", "adapter"
    source: str
    param_bytes: int


def pick_device(setting: str) -> torch.device:
    if setting != "auto":
        return torch.device(setting)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def pick_dtype(setting: str, device: torch.device) -> torch.dtype:
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if setting != "auto":
        return named[setting]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# LoRA adapter slots (`ModelCache.draft_unet`) -> the adapter name peft/diffusers know.
ADAPTER_NAMES = {"lcm_lora": "lcm"}
PREVIEW_SLOT = "preview_decoder"  # TAESD, when at hand (ModelCache.preview_decoder)
UPSCALER_SLOT = "upscaler"  # a super-resolution model file (ModelCache.upscaler)
MAX_DERIVED = 32  # derived pipelines kept (one per mode and companion set; each holds only references)


def _lookup(table: OrderedDict[Any, Any], key: Any) -> Any | None:
    """A resident entry, marked as just used, without the lock (each OrderedDict operation is atomic under the
    GIL); None when it is not there or was evicted meanwhile. Loading and evicting still happen under the lock."""
    try:
        value = table[key]
        table.move_to_end(key)
    except KeyError:
        return None
    return value


def _load_error(what: str, source: str, exc: BaseException) -> ModelLoadError:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(
        f"Could not load {what} '{source}': {reason}. Fix: download it once while online "
        f"(huggingface-cli download {source}) so it is in the Hugging Face cache, point the setting at a local "
        "folder or .safetensors file, or start with --model tiny to work offline."
    )


class ModelCache:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.device = pick_device(settings.device)
        self.dtype = pick_dtype(settings.dtype, self.device)
        self._lock = threading.RLock()
        self._bases: OrderedDict[str, Any] = OrderedDict()  # checkpoint name -> pipeline
        self._checkpoints: dict[str, Checkpoint] = {}
        self._prepared: set[str] = set()  # sources whose `prepare` hook has run
        self._prepare_lock = threading.Lock()
        self._slots: dict[str, Any] = {}  # "controlnet", "annotator", "inpaint_unet", PREVIEW_SLOT
        self._slot_sources: dict[str, str] = {}
        self._unavailable: set[str] = set()  # preview-decoder sources found missing
        # (checkpoint name, adapter slot) -> (draft UNet sharing the base's weights, LoRA source)
        self._drafts: dict[tuple[str, str], tuple[Any, str]] = {}
        # (checkpoint name, pipeline class, extra modules' ids) -> a derived pipeline (see `derive`)
        self._derived: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        # (id of the UNet adapted, IP-Adapter model) -> (that UNet, its weight-sharing copy holding the adapter)
        self._image_prompt: dict[tuple[int, str], tuple[Any, Any]] = {}
        self.current: str = settings.model
        self.loading: str | None = None
        # personal styles: the operator's LoRA and embedding folders, and the weight-sharing copies holding them
        self.styles = StyleLibrary(settings.lora_dir, settings.embeddings_dir)
        self._styled = StyleModules(self._lock, self.styles)

    # ---- locking ------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def gpu(self) -> Iterator[None]:
        """Serialise GPU work; every scoped change of shared model state happens inside this."""
        with self._lock:
            yield

    # ---- base checkpoints -----------------------------------------------------------------------------------
    def checkpoint(self, ref: str | None = None) -> Checkpoint:
        """What `ref` (default: the current model) names; a checkpoint's `prepare` hook (the tiny model writes its
        files) runs once per checkpoint and cache, not on every call (writers call this for each image)."""
        ref = ref or self.current
        try:
            ckpt = registry.resolve(ref, self.settings.tiny_dir)
        except registry.UnknownModelError as exc:
            raise ModelLoadError(str(exc)) from None
        if ckpt.prepare is not None and ckpt.source not in self._prepared:
            with self._prepare_lock:  # not the GPU lock: preparing never waits for a generation
                if ckpt.source not in self._prepared:
                    ckpt.prepare()
                    self._prepared.add(ckpt.source)
        return ckpt

    def base(self, ref: str | None = None) -> Any:
        """The resident base pipeline of `ref` (default: the current model), loading it if needed."""
        ckpt = self.checkpoint(ref)
        resident = _lookup(self._bases, ckpt.name)  # a request prepares while another one holds the GPU
        if resident is not None:
            return resident
        with self._lock:
            if ckpt.name in self._bases:
                self._bases.move_to_end(ckpt.name)
                return self._bases[ckpt.name]
            self.loading = ckpt.label
            try:
                pipe = self._load_base(ckpt)  # the previous model stays resident if this raises
            finally:
                self.loading = None
            while len(self._bases) >= self.settings.max_resident_models:
                evicted, evicted_pipe = self._bases.popitem(last=False)
                drafts = [unet for (name, _), (unet, _) in self._drafts.items() if name == evicted]
                self._forget_image_prompt([evicted_pipe.unet, *drafts])
                self._styled.forget([evicted_pipe.unet, evicted_pipe.text_encoder, *drafts])  # their style copies
                self._drafts = {key: value for key, value in self._drafts.items() if key[0] != evicted}
                for key in [key for key in self._derived if key[0] == evicted]:
                    del self._derived[key]
                log.info("Evicting %s", evicted)
                self._free()
            if self.device.type != "cpu":
                pipe.to(self.device)
            fastpath.prepare_pipeline(pipe, self.settings, self.device)  # SDPA, channels-last, compile
            self._bases[ckpt.name] = pipe
            self._checkpoints[ckpt.name] = ckpt
            return pipe

    def switch(self, ref: str) -> Checkpoint:
        """Make `ref` the current model. On failure the previous model stays current and resident."""
        ckpt = self.checkpoint(ref)
        self.base(ref)
        self.current = ckpt.name if ckpt.name in self._bases else ref
        return ckpt

    def _load_base(self, ckpt: Checkpoint) -> Any:
        from diffusers import StableDiffusionPipeline

        kwargs: dict[str, Any] = {"torch_dtype": self.dtype}
        if not self.settings.public_demo:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        log.info("Loading %s from %s", ckpt.label, ckpt.source)
        try:
            if ckpt.kind == "file":
                pipe = StableDiffusionPipeline.from_single_file(ckpt.source, **kwargs)
            else:
                pipe = StableDiffusionPipeline.from_pretrained(ckpt.source, **kwargs)
        except Exception as exc:  # any loader failure becomes one clear message
            raise _load_error("model", ckpt.source, exc) from exc
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def native_size(self, ref: str | None = None) -> int:
        pipe = self.base(ref)
        return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)

    def model_hash(self, ref: str | None = None) -> str:
        """A1111's short hash of the checkpoint's weights file ("" when none is found). It takes no lock: the
        writer threads ask for it while another request holds the GPU."""
        from studio.hashing import checkpoint_hash

        return checkpoint_hash(self.checkpoint(ref))

    # ---- derived pipelines ----------------------------------------------------------------------------------
    def derive(
        self,
        pipeline_cls: type[Any],
        scheduler: str | None = None,
        ref: str | None = None,
        prompts: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> Any:
        """A mode's pipeline sharing every module of the base; `extra` adds modules such as `controlnet`.

        The pipeline of each (checkpoint, class, extra modules) is made once with `from_pipe(base,
        torch_dtype=base.dtype)`. Each request then constructs its class directly over that template's very modules
        with a fresh scheduler of its own (~1 ms; the pipeline's `__init__` still checks the scheduler's config as
        plain diffusers does), so no request mutates shared scheduler state and none pays `from_pipe`'s walk over
        every module (~17 ms on SD1.5) again.

        `prompts` (the request's `prompt` and `negative_prompt`) choose its personal styles: with a `<lora:...>`
        tag or an embedding's word the pipeline gets the weight-sharing copies of the UNet / text encoder that hold
        them (`styled`); without, the base's own modules, untouched."""
        base = self.base(ref)
        key = (self.checkpoint(ref).name, pipeline_cls, tuple(sorted((name, id(m)) for name, m in extra.items())))
        template = _lookup(self._derived, key)  # made before: no waiting for the GPU
        if template is None:
            with self._lock:  # made once, under the lock: from_pipe walks the shared modules
                template = self._derived.get(key)
                if template is None:
                    template = pipeline_cls.from_pipe(base, torch_dtype=base.dtype, **extra)
                    self._derived[key] = template
                    while len(self._derived) > MAX_DERIVED:  # a bound, whatever callers pass as `extra`
                        self._derived.popitem(last=False)
                self._derived.move_to_end(key)
        fresh = get_sampler(scheduler).build(base.scheduler.config) if scheduler else copy.deepcopy(template.scheduler)
        init = inspect.signature(pipeline_cls.__init__).parameters
        settings = {name: template.config[name] for name in init if name not in template.components and
                    name in template.config}  # fmt: skip
        components = {**template.components, "scheduler": fresh}
        selection = self.select_styles(prompts, components["unet"]) if prompts else None
        if selection:
            components.update(self._styled.components(components, selection))
        pipe = pipeline_cls(**components, **settings)
        pipe.set_progress_bar_config(disable=True)
        setattr(pipe, STYLES_ATTRIBUTE, selection or None)  # prompts.prompt_kwargs sets the adapters' weights
        return pipe

    def select_styles(self, prompts: Mapping[str, str], unet: Any = None) -> Selection:
        """The LoRAs (with weights) and embeddings a request's prompts use, checked against the model."""
        dim = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        return self.styles.select(prompts.get("prompt", ""), prompts.get("negative_prompt", ""), dim)

    def preload_styles(self, ref: str | None = None) -> list[str]:
        """Load every usable LoRA and embedding now into the style copies of the base, of the resident draft UNets
        and of the inpainting UNet (ZeroGPU: forked workers inherit only what is loaded before serving)."""
        name = self.checkpoint(ref).name
        unets = [unet for (ckpt, _), (unet, _) in self._drafts.items() if ckpt == name]
        unets += [self._slots["inpaint_unet"]] if "inpaint_unet" in self._slots else []
        return self._styled.preload(self.base(ref).components, unets)

    # ---- companion slots --------------------------------------------------------------------------------------
    def companion_source(self, slot: str) -> str:
        """Where a companion slot loads from: the operator's setting (a source, or the name of a checkpoint whose
        companion to use, e.g. `tiny`), else the current checkpoint's own companion."""
        key = {"inpaint_unet": "inpaint", "image_encoder": "ip_adapter"}.get(slot, slot)
        key = "annotator" if slot in registry.ANNOTATOR_FILES else key  # every annotator file is in one repository
        configured = {
            "controlnet": self.settings.controlnet_model,
            "annotator": self.settings.annotator_model,
            "inpaint": self.settings.inpaint_model,
        }.get(key, "")  # the further ControlNets and the image encoder follow the checkpoint
        if configured and configured in registry.named(self.settings.tiny_dir):
            return self.checkpoint(configured).companions[key]
        return configured or self.checkpoint().companions[key]

    def slot(self, name: str) -> Any:
        """A ControlNet (HED's `controlnet`, or one of registry.CONTROL_COMPANIONS), an annotator (`annotator`,
        registry.ANNOTATOR_FILES) or the inpainting UNet: loaded once, on first use, kept until the base changes."""
        loaders: dict[str, Callable[[str], Any]] = {
            "controlnet": self._load_controlnet,
            "annotator": self._load_annotator,
            "inpaint_unet": self._load_inpaint_unet,
            **dict.fromkeys(registry.CONTROL_COMPANIONS, self._load_controlnet),
            **{slot: functools.partial(self._load_control_annotator, slot) for slot in registry.ANNOTATOR_FILES},
            "image_encoder": lambda source: ip_adapter.load_encoder(source, self.dtype, self.device),
        }
        source = self.companion_source(name)
        if self._slot_sources.get(name) == source:  # loaded (a slot is set before its source): no waiting
            return self._slots[name]
        with self._lock:
            source = self.companion_source(name)
            if self._slot_sources.get(name) == source:
                return self._slots[name]
            self.loading = f"{name} ({source})"
            try:
                module = loaders[name](source)
            except ModelLoadError:
                raise
            except Exception as exc:
                raise _load_error(name, source, exc) from exc
            finally:
                self.loading = None
            replaced = self._slots.get(name)
            self._forget_image_prompt([replaced])
            self._styled.forget([replaced])  # a replaced inpainting UNet's style copy
            for key in [key for key in self._derived if any(i == id(replaced) for _, i in key[2])]:
                del self._derived[key]  # pipelines built around the module this slot held before
            self._slots[name], self._slot_sources[name] = module, source
            return module

    def companion(self, name: str) -> Any:
        """Any companion by name: a slot (`controlnet`, `annotator`, `inpaint_unet`) or a LoRA adapter's draft UNet
        (`lcm_lora`). Modes declare theirs by these names (`Mode.companions`)."""
        return self.draft_unet(name) if name in ADAPTER_NAMES else self.slot(name)

    def _load_controlnet(self, source: str) -> Any:
        from diffusers import ControlNetModel

        module = ControlNetModel.from_pretrained(source, torch_dtype=self.dtype).to(self.device)
        return fastpath.prepare_module(module, self.settings, self.device)

    def _load_inpaint_unet(self, source: str) -> Any:
        from diffusers import UNet2DConditionModel

        module = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=self.dtype).to(self.device)
        return fastpath.prepare_module(module, self.settings, self.device)

    def _load_annotator(self, source: str) -> Any:
        from controlnet_aux import HEDdetector

        detector = HEDdetector.from_pretrained(source, filename=registry.HED_ANNOTATOR_FILE)
        return detector.to(self.device)

    def _load_control_annotator(self, slot: str, source: str) -> Any:
        from studio.control_units import load_annotator

        return load_annotator(slot, source).to(self.device)

    # ---- image prompts: an IP-Adapter in a weight-sharing copy of the UNet it adapts ------------------------------
    def image_prompt_unet(self, unet: Any, model: str, ref: str | None = None) -> Any:
        """`unet` (the base's, or the inpainting UNet) with the IP-Adapter `model` loaded, made once per UNet and
        model: a copy over the very same weights (studio.ip_adapter), so `unet` itself is never touched."""
        held = self._image_prompt.get((id(unet), model))  # made before: no waiting for the GPU
        if held is not None and held[0] is unet:
            return held[1]
        with self._lock:
            held = self._image_prompt.get((id(unet), model))
            if held is not None and held[0] is unet:
                return held[1]
            encoder = self.slot("image_encoder")
            source = self.checkpoint(ref).companions["ip_adapter"]
            self.loading = f"IP-Adapter {model} ({source})"
            try:
                adapted = ip_adapter.adapted_unet(self.base(ref).components, unet, encoder, source, model)
            except Exception as exc:  # `unet` is untouched whatever failed
                raise _load_error(f"IP-Adapter {model}", source, exc) from exc
            finally:
                self.loading = None
            self._image_prompt[(id(unet), model)] = (unet, adapted.to(self.device))
            return adapted

    def _forget_image_prompt(self, unets: list[Any]) -> None:
        """Drop the IP-Adapter copies of UNets leaving the cache (and their style copies)."""
        gone = [key for key, (source, _) in self._image_prompt.items() if any(source is u for u in unets)]
        self._styled.forget([self._image_prompt[key][1] for key in gone])
        for key in gone:
            del self._image_prompt[key]

    # ---- upscaler (super-resolution model file), on demand ------------------------------------------------------
    def upscaler(self, path: str) -> Any:
        """The upscaler model of a file in the operator's upscalers folder (spandrel's descriptor; loading and its
        checks live in `studio.upscale.load_model`), in a slot of its own: loaded on first use, kept, and replaced
        when a request names another file."""
        if self._slot_sources.get(UPSCALER_SLOT) == path:  # loaded (a slot is set before its source): no waiting
            return self._slots[UPSCALER_SLOT]
        with self._lock:
            if self._slot_sources.get(UPSCALER_SLOT) != path:
                from studio.upscale import load_model

                self.loading = f"upscaler ({path})"
                try:
                    model = load_model(path, self.device, self.dtype)
                finally:
                    self.loading = None
                self._slots[UPSCALER_SLOT], self._slot_sources[UPSCALER_SLOT] = model, path
            return self._slots[UPSCALER_SLOT]

    # ---- live-preview decoder (TAESD), optional --------------------------------------------------------------
    def preview_decoder(self) -> Any | None:
        """TAESD (`AutoencoderTiny`) for live previews when it is at hand, else None (previews then use the latent
        factors of studio.preview). It is never downloaded for a preview: a folder, or a hub id already in the
        Hugging Face cache (`huggingface-cli download madebyollin/taesd` once). A source that is not at hand is
        remembered, so later previews do not look again."""
        setting = self.settings.preview_decoder
        if setting == "latent":
            return None
        source = self.checkpoint().companions["taesd"] if setting == "auto" else setting
        with self._lock:
            if self._slot_sources.get(PREVIEW_SLOT) == source:
                return self._slots[PREVIEW_SLOT]
            if source in self._unavailable:
                return None
            from diffusers import AutoencoderTiny

            try:
                module = AutoencoderTiny.from_pretrained(source, torch_dtype=self.dtype, local_files_only=True)
            except Exception as exc:  # not cached, or not a TAESD: the latent factors will do
                log.info("Live previews use latent factors: no TAESD at hand (%s): %s", source, exc)
                self._unavailable.add(source)
                return None
            self._slots[PREVIEW_SLOT], self._slot_sources[PREVIEW_SLOT] = module.to(self.device).eval(), source
            return module

    # ---- LoRA adapters: a draft UNet of their own, sharing every base weight --------------------------------
    def draft_unet(self, slot: str = "lcm_lora", ref: str | None = None) -> Any:
        """The base UNet with the LoRA of `slot` (LCM-LoRA for drafts) applied, built once per checkpoint.

        It is a second module tree over the very same weight tensors (`shared_copy`), with the LoRA layers injected
        into it alone. So the base UNet every other mode runs is never wrapped (no disabled-LoRA layers on its
        path, no state to switch on and off around a call), and the LoRA costs only its own tensors. Weights are
        never fused."""
        from diffusers import StableDiffusionPipeline

        built = self._drafts.get((self.checkpoint(ref).name, slot))  # built before: no waiting for the GPU
        if built is not None:
            return built[0]
        with self._lock:
            pipe, ckpt = self.base(ref), self.checkpoint(ref)
            if (ckpt.name, slot) in self._drafts:
                return self._drafts[(ckpt.name, slot)][0]
            source = self.adapter_source(slot, ref)
            self.loading = f"{slot} ({source})"
            try:
                state_dict, alphas = StableDiffusionPipeline.lora_state_dict(source, weight_name=registry.LCM_LORA_FILE)
                unet = shared_copy(pipe.unet)
                StableDiffusionPipeline.load_lora_into_unet(
                    state_dict, alphas, unet=unet, adapter_name=ADAPTER_NAMES[slot]
                )
            except Exception as exc:  # the base is untouched whatever failed
                raise _load_error(f"LoRA {slot}", source, exc) from exc
            finally:
                self.loading = None
            self._drafts[(ckpt.name, slot)] = (unet.to(self.device), source)
            return unet

    def adapter_source(self, slot: str = "lcm_lora", ref: str | None = None) -> str:
        """Where the LoRA of `slot` comes from for a checkpoint: its hub id, or the tiny twin's folder."""
        return self.checkpoint(ref).companions[slot]

    def _adapter_rows(self) -> list[Resident]:
        return [
            Resident(slot, "adapter", source, adapter_param_bytes(unet))
            for (_, slot), (unet, source) in self._drafts.items()
        ]

    # ---- introspection ------------------------------------------------------------------------------------
    def resident(self) -> list[Resident]:
        with self._lock:
            rows = [
                Resident(name, "base", self._checkpoints[name].source, unique_param_bytes(pipe))
                for name, pipe in self._bases.items()
            ]
            rows += self._adapter_rows()
            rows += [
                Resident(model, "image_prompt", self.checkpoint().companions["ip_adapter"],
                         ip_adapter.adapter_bytes(adapted))
                for (_, model), (_, adapted) in self._image_prompt.items()
            ]  # fmt: skip
            rows += [
                Resident(slot, slot, self._slot_sources[slot], unique_param_bytes(module))
                for slot, module in self._slots.items()
            ]
            return rows

    def resident_bytes(self) -> int:
        with self._lock:
            drafts = [unet for unet, _ in self._drafts.values()]
            adapted = [unet for _, unet in self._image_prompt.values()]
            styled = self._styled.modules()
            return unique_param_bytes(*self._bases.values(), *self._slots.values(), *drafts, *adapted, *styled)

    def _free(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
