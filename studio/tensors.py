"""What torch modules hold and share: bytes of distinct tensor storages, LoRA tensors, and module trees that share
their weights. The cache reports residency with these; nothing here loads or moves a model."""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from typing import Any

import torch

from studio import fastpath


def torch_modules(owner: Any) -> list[torch.nn.Module]:
    """The torch modules a pipeline, a module or a controlnet_aux detector holds."""
    if isinstance(owner, torch.nn.Module):
        return [owner]
    if hasattr(owner, "components"):
        return [m for m in owner.components.values() if isinstance(m, torch.nn.Module)]
    if hasattr(owner, "netNetwork"):  # controlnet_aux detectors
        return [owner.netNetwork]
    if hasattr(owner, "model_coarse"):  # controlnet_aux's line art: a fine and a coarse model
        return [owner.model, owner.model_coarse]
    if hasattr(owner, "body_estimation"):  # controlnet_aux's open pose: body, hand and face networks
        parts = (owner.body_estimation, owner.hand_estimation, owner.face_estimation)
        return [part.model for part in parts if part is not None]
    if isinstance(getattr(owner, "model", None), torch.nn.Module):  # spandrel's model descriptors (upscalers)
        return [owner.model]
    return []


def module_tensors(*owners: Any) -> Iterator[torch.Tensor]:
    """Every parameter and buffer of the torch modules held by pipelines, modules or annotators."""
    for owner in owners:
        for module in torch_modules(owner):
            yield from module.parameters()
            yield from module.buffers()


def unique_param_bytes(*owners: Any) -> int:
    """Bytes of distinct tensor storages across owners: shared weights count once."""
    seen: dict[int, int] = {}
    for tensor in module_tensors(*owners):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def adapter_param_bytes(owner: Any, adapter: str | None = None) -> int:
    """Bytes of the LoRA tensors injected into a module or a pipeline's modules: one adapter's, or all of them."""
    seen: dict[int, int] = {}
    for module in torch_modules(owner):
        for name, tensor in module.named_parameters():
            if ".lora_" in name and (adapter is None or f".{adapter}." in name):
                seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(seen.values())


def shared_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A new module tree over the very same parameter and buffer tensors: no weight is copied, and what is done to
    the copy's structure (a LoRA injected) never reaches the original. A compiled `forward`, bound to the original
    module, is not carried over (fastpath.COMPILED_ATTRIBUTES)."""
    memo: dict[int, Any] = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    for name in fastpath.COMPILED_ATTRIBUTES:  # shared, not copied, then dropped from the copy
        if name in module.__dict__:
            memo[id(module.__dict__[name])] = module.__dict__[name]
    clone = copy.deepcopy(module, memo)
    for name in fastpath.COMPILED_ATTRIBUTES:
        clone.__dict__.pop(name, None)
    return clone
