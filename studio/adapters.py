"""Scoped LoRA adapters: a LoRA loaded into the shared base UNet is switched on for one call, then back off.

The cache loads a LoRA once (`ModelCache.adapter`) and leaves it disabled, so every other mode runs on the plain
base weights. `enabled_adapter(pipe, name)` turns exactly that adapter on for the duration of a `with` block and
restores, in `finally`, the state every LoRA layer had before: which adapters were active, their scales and
whether LoRA was enabled at all. Weights are never fused into the base (that would change them for every mode),
and nothing is patched on any class: only the per-layer switches peft provides are touched.

Enter it under `studio.cache.gpu()`, like every scoped change of shared model state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class LayerState:
    layer: Any  # a peft BaseTunerLayer
    active: tuple[str, ...]
    disabled: bool
    scaling: dict[str, float]


def tuner_layers(pipe: Any) -> Iterator[Any]:
    """Every peft LoRA layer injected into the pipeline's torch modules (UNet, text encoder)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            yield from (m for m in component.modules() if isinstance(m, BaseTunerLayer))


def lora_state(pipe: Any) -> list[LayerState]:
    return [LayerState(layer, tuple(layer.active_adapters), bool(layer.disable_adapters),
                       dict(getattr(layer, "scaling", {}))) for layer in tuner_layers(pipe)]


def restore_lora_state(states: list[LayerState]) -> None:
    for state in states:
        state.layer.set_adapter(list(state.active), inference_mode=True)
        if hasattr(state.layer, "scaling"):
            state.layer.scaling.update(state.scaling)
        state.layer.enable_adapters(not state.disabled)


def adapter_enabled(pipe: Any, name: str) -> bool:
    """True when `name` takes part in the pipeline's forward pass on every layer that holds it."""
    holders = [layer for layer in tuner_layers(pipe) if name in getattr(layer, "scaling", {})]
    return bool(holders) and all(not layer.disable_adapters and name in layer.active_adapters for layer in holders)


@contextlib.contextmanager
def enabled_adapter(pipe: Any, name: str, weight: float = 1.0) -> Iterator[Any]:
    """Within the block only LoRA `name` is active on `pipe`, at `weight`; the previous state comes back after,
    also when the block raises (an error in the UNet, a cancelled job)."""
    states = lora_state(pipe)
    if not any(name in s.scaling for s in states):
        raise ValueError(f"LoRA adapter {name!r} is not loaded into this pipeline.")
    try:
        pipe.set_adapters([name], [weight])
        pipe.enable_lora()
        yield pipe
    finally:
        restore_lora_state(states)
