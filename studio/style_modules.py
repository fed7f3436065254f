"""The torch side of personal styles: weight-sharing copies of the UNet and the text encoder that hold them.

The base UNet and text encoder every plain request runs are never touched. A request with a LoRA gets a copy of
its UNet (`tensors.shared_copy`: a second module tree over the very same weight tensors, as the draft UNet is
built) into which diffusers' own loaders inject the LoRA (`lora_state_dict`, `load_lora_into_unet`,
`load_lora_into_text_encoder`); each LoRA is loaded once, as an adapter named by its hash, and stays. A request
with an embedding gets a text-encoder copy and a tokenizer copy into which `load_textual_inversion` loaded every
usable embedding of the folder. Which adapters are active, at which weights, is set per request by `activate`,
under the GPU lock, just before the pipeline call (prompts.prompt_kwargs does it). Weights are never fused.

`load_textual_inversion` grows the token-embedding table in place (`resize_token_embeddings`), which on a copy
sharing the base's table would grow the base's too. So the copy first gets an embedding of its own to grow, and
afterwards a `SharedRowsEmbedding`: the base's table for every vocabulary id, the embeddings' own rows beyond it.
A prompt without an embedding's word reads exactly the base's rows: bit-identical to plain diffusers.
"""

from __future__ import annotations

import copy
import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from studio.errors import ModelLoadError
from studio.styles import Selection, StyleFile, StyleLibrary
from studio.tensors import shared_copy

log = logging.getLogger(__name__)
STYLES_ATTRIBUTE = "atelier_styles"  # the per-request pipeline's selection, read by prompts.prompt_kwargs
# The modules an SD1.5 LoRA adapts, as peft names them (diffusers' DreamBooth-LoRA script and kohya's defaults).
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def kohya_state(peft_state: dict[str, torch.Tensor], prefix: str, alpha: float) -> dict[str, torch.Tensor]:
    """peft names -> kohya/A1111 names: `a.b.to_q.lora_A.weight` -> `<prefix>_a_b_to_q.lora_down.weight`, plus each
    module's `.alpha`. `prefix` is `lora_unet` or `lora_te`; what diffusers' kohya converter reads back."""
    out: dict[str, torch.Tensor] = {}
    for key, value in peft_state.items():
        module, _, kind = key.rpartition(".lora_")
        if prefix == "lora_te" and not module.startswith("text_model."):  # transformers 5 names it without
            module = "text_model." + module  # `text_model.`; every kohya file on disk names it with
        name = f"{prefix}_{module.replace('.', '_')}"
        out[f"{name}.lora_down.weight" if kind.startswith("A") else f"{name}.lora_up.weight"] = value.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


class SharedRowsEmbedding(torch.nn.Module):
    """A token embedding that reads the base table (shared, untouched) for ids below its size and `extra` rows
    (the textual-inversion vectors) for the ids added after it."""

    def __init__(self, base: torch.nn.Embedding, extra: torch.Tensor) -> None:
        super().__init__()
        self.base = base
        self.extra = torch.nn.Parameter(extra, requires_grad=False)
        self.size = base.num_embeddings

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.base(ids.clamp(max=self.size - 1))
        added = ids >= self.size
        if bool(added.any()):
            rows = torch.where(added[..., None], self.extra[(ids - self.size).clamp(min=0)].to(rows.dtype), rows)
        return rows


@dataclass
class _UNetCopy:
    source: Any
    module: Any
    base_adapters: tuple[str, ...]  # adapters the source already had (the draft UNet's LCM-LoRA)
    loaded: set[str] = field(default_factory=set)


@dataclass
class _TextCopy:
    source: Any
    module: Any
    tokenizer: Any
    embeddings: tuple[tuple[str, str], ...]  # (name, hash) loaded, in order
    loaded: set[str] = field(default_factory=set)


def _adapters(module: Any) -> tuple[str, ...]:
    config = getattr(module, "peft_config", None)
    return tuple(config) if isinstance(config, dict) else ()


class StyleModules:
    """The copies, per source module (the base UNet, the draft UNet, an inpainting UNet; the text encoder)."""

    def __init__(self, lock: threading.RLock, library: StyleLibrary) -> None:
        self._lock = lock
        self.library = library
        self._unets: dict[int, _UNetCopy] = {}
        self._texts: dict[int, _TextCopy] = {}

    # ---- per request -----------------------------------------------------------------------------------------
    def components(self, components: dict[str, Any], selection: Selection) -> dict[str, Any]:
        """The UNet / text encoder / tokenizer a request with `selection` runs instead of `components`' own."""
        chosen: dict[str, Any] = {}
        if any(u.entry.unet for u in selection.loras):
            chosen["unet"] = self.unet(components["unet"], [u.entry for u in selection.loras if u.entry.unet])
        if selection.needs_text_copy:
            text = self.text(components["text_encoder"], components["tokenizer"])
            self._load_text_loras(text, [u.entry for u in selection.loras if u.entry.text])
            chosen["text_encoder"], chosen["tokenizer"] = text.module, text.tokenizer
        return chosen

    def unet(self, source: Any, entries: list[StyleFile]) -> Any:
        with self._lock:
            held = self._unets.get(id(source))
            if held is None or held.source is not source:
                held = _UNetCopy(source, shared_copy(source), _adapters(source))
                self._unets[id(source)] = held
            for entry in entries:
                if entry.adapter not in held.loaded:
                    _load(entry, "unet", held.module)
                    held.loaded.add(entry.adapter)
            return held.module

    def text(self, source: Any, tokenizer: Any) -> _TextCopy:
        """The text-encoder copy holding every usable embedding of the folder; rebuilt when that set changes."""
        dim = int(source.config.hidden_size)
        usable = [e for e in self.library.embeddings() if e.usable and e.dim in (None, dim)]
        wanted = tuple((e.name, e.short_hash) for e in usable)
        with self._lock:
            held = self._texts.get(id(source))
            if held is None or held.source is not source or held.embeddings != wanted:
                held = self._build_text(source, tokenizer, usable)
                self._texts[id(source)] = held
            return held

    def _build_text(self, source: Any, tokenizer: Any, entries: list[StyleFile]) -> _TextCopy:
        module: Any = shared_copy(source)
        tokens = copy.deepcopy(tokenizer)
        base_rows = source.get_input_embeddings()
        loaded = []
        if entries:
            own = torch.nn.Embedding.from_pretrained(base_rows.weight.detach().clone(), freeze=True)
            module.set_input_embeddings(own)  # grown by load_textual_inversion; the base's table is not
            for entry in entries:
                try:
                    _loader().load_textual_inversion(str(entry.path), token=entry.name, tokenizer=tokens,
                                                     text_encoder=module)  # fmt: skip
                    loaded.append((entry.name, entry.short_hash))
                except Exception as exc:  # e.g. its name is already a word of CLIP's vocabulary
                    log.warning("Embedding %s not loaded: %s", entry.name, exc)
            grown = module.get_input_embeddings().weight.detach()
            rows = grown[base_rows.num_embeddings :].clone()
            module.set_input_embeddings(SharedRowsEmbedding(base_rows, rows))
        return _TextCopy(source, module, tokens, tuple((e.name, e.short_hash) for e in entries))

    def _load_text_loras(self, held: _TextCopy, entries: list[StyleFile]) -> None:
        with self._lock:
            for entry in entries:
                if entry.adapter not in held.loaded:
                    _load(entry, "text_encoder", held.module)
                    held.loaded.add(entry.adapter)

    # ---- under the GPU lock, before the call -------------------------------------------------------------------
    @staticmethod
    def activate(pipe: Any, selection: Selection) -> None:
        """Set the request's adapters and weights on the copies its pipeline holds (call under the GPU lock)."""
        from diffusers.loaders.lora_base import (
            disable_lora_for_text_encoder,
            enable_lora_for_text_encoder,
            set_adapters_for_text_encoder,
        )

        unet, text = pipe.unet, pipe.text_encoder
        unet_uses = [u for u in selection.loras if u.entry.unet]
        if unet_uses:
            keep = [name for name in _adapters(unet) if not name.startswith("style_")]  # the draft's LCM-LoRA
            unet.set_adapters([*keep, *(u.entry.adapter for u in unet_uses)],
                              [*([1.0] * len(keep)), *(u.unet_weight for u in unet_uses)])  # fmt: skip
        text_uses = [u for u in selection.loras if u.entry.text]
        if text_uses:
            enable_lora_for_text_encoder(text)
            names, weights = [u.entry.adapter for u in text_uses], [u.text_weight for u in text_uses]
            set_adapters_for_text_encoder(names, text, weights)
        elif _adapters(text):
            disable_lora_for_text_encoder(text)

    # ---- ZeroGPU and introspection ------------------------------------------------------------------------------
    def preload(self, components: dict[str, Any], unets: list[Any] | None = None) -> list[str]:
        """Every usable LoRA and embedding loaded now, into copies of the base's UNet and text encoder and of
        `unets` (ZeroGPU: forked workers inherit only what is loaded)."""
        loras = [e for e in self.library.loras() if e.usable]
        dim = int(components["unet"].config.cross_attention_dim)
        loras = [e for e in loras if e.dim in (None, dim)]
        for unet in [components["unet"], *(unets or [])]:
            self.unet(unet, [e for e in loras if e.unet])
        text = self.text(components["text_encoder"], components["tokenizer"])
        self._load_text_loras(text, [e for e in loras if e.text])
        return [e.name for e in loras] + [name for name, _ in text.embeddings]

    def modules(self) -> list[Any]:
        return [held.module for held in self._unets.values()] + [held.module for held in self._texts.values()]

    def forget(self, sources: list[Any]) -> None:
        """Drop the copies made from modules no longer resident (an evicted base)."""
        ids = {id(s) for s in sources}
        with self._lock:
            self._unets = {k: v for k, v in self._unets.items() if k not in ids}
            self._texts = {k: v for k, v in self._texts.items() if k not in ids}


def _loader() -> Any:
    """A textual-inversion loader of its own (diffusers' mixin) for a tokenizer and a text encoder passed in: it
    owns no modules, so `load_textual_inversion` can touch nothing but what it is given."""
    from diffusers.loaders import TextualInversionLoaderMixin

    class Loader(TextualInversionLoaderMixin):
        hf_device_map = None
        components: dict[str, Any] = {}

    return Loader()


def _pipeline_class() -> Any:
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline


def _load(entry: StyleFile, part: str, module: Any) -> None:
    """One LoRA file into a UNet or text-encoder copy, through diffusers' own loaders (kohya keys converted by
    diffusers' converter), as an adapter named by its hash."""
    loader = _pipeline_class()
    try:
        state, alphas = loader.lora_state_dict(str(entry.path.parent), weight_name=entry.path.name)
    except Exception as exc:
        raise ModelLoadError(f"Could not read LoRA '{entry.name}': {exc}. Check the file, or remove it.") from exc
    try:
        if part == "unet":
            unet_state = {k: v for k, v in state.items() if k.startswith("unet.")}
            loader.load_lora_into_unet(unet_state, alphas, unet=module, adapter_name=entry.adapter)
        else:
            loader.load_lora_into_text_encoder(state, alphas, text_encoder=module, adapter_name=entry.adapter)
    except Exception as exc:  # the copy may hold part of it; the base is untouched whatever failed
        raise ModelLoadError(f"Could not load LoRA '{entry.name}' into this model: {exc}.") from exc
