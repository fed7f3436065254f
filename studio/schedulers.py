"""Samplers by their A1111 names, built fresh per request from the checkpoint's own scheduler config.

A fresh scheduler per run means no request ever mutates the shared pipeline's scheduler state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

if TYPE_CHECKING:
    # Where `from_config` is defined: every diffusers scheduler is a ConfigMixin.
    from diffusers.configuration_utils import ConfigMixin


@dataclass(frozen=True)
class Sampler:
    name: str  # what the UI shows and the API takes
    a1111_sampler: str  # infotext `Sampler:`
    schedule_type: str | None  # infotext `Schedule type:`
    cls: type[ConfigMixin]
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, config: Any) -> Any:
        return self.cls.from_config(config, **dict(self.options))


SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("DPM++ 2M Karras", "DPM++ 2M", "Karras", DPMSolverMultistepScheduler, (("use_karras_sigmas", True),)),
        Sampler("DPM++ 2M", "DPM++ 2M", None, DPMSolverMultistepScheduler),
        Sampler("Euler a", "Euler a", None, EulerAncestralDiscreteScheduler),
        Sampler("Euler", "Euler", None, EulerDiscreteScheduler),
        Sampler("DDIM", "DDIM", None, DDIMScheduler),
        Sampler("UniPC", "UniPC", None, UniPCMultistepScheduler),
    )
}
DEFAULT_SAMPLER = "DPM++ 2M Karras"


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SAMPLERS)}.") from None


def from_infotext(sampler: str, schedule_type: str | None) -> str | None:
    """Map A1111's `Sampler` (+ `Schedule type`, or the older 'DPM++ 2M Karras' spelling) to our name."""
    if sampler in SAMPLERS and schedule_type in (None, "", "Automatic"):
        return sampler
    for s in SAMPLERS.values():
        if s.a1111_sampler == sampler and (s.schedule_type or "Automatic") == (schedule_type or "Automatic"):
            return s.name
    return None
