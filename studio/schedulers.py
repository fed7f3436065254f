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
    schedule_type: str  # infotext `Schedule type:`, A1111's label for the noise schedule this sampler runs
    cls: type[ConfigMixin]
    options: tuple[tuple[str, Any], ...] = ()

    def build(self, config: Any) -> Any:
        return self.cls.from_config(config, **dict(self.options))


# A1111 >= 1.9 reads `Schedule type` apart from `Sampler`, and a missing one as "Automatic": the sampler's own
# default (modules/sd_samplers_kdiffusion.py), which for DPM++ 2M is Karras. So every sampler names its schedule:
# - "Karras": diffusers' Karras sigmas (rho 7 between the model's sigma_min and sigma_max), A1111's `karras`.
# - "Uniform": diffusers' even "linspace" steps through the training timesteps, which is what the studio's
#   schedulers run for checkpoints whose config leaves `timestep_spacing` unset (SD 1.5, Dreamlike Photoreal 2.0);
#   A1111's `uniform` is the model's own discrete sigmas at evenly spaced timesteps (`get_sigmas(n)`). It is also
#   what A1111's "Automatic" gives Euler and Euler a, but a fork may change a default; "Uniform" cannot be misread.
# - "Automatic" for DDIM and UniPC: in A1111 they are timestep samplers (sd_samplers_timesteps.py) that take no
#   schedule type; A1111 itself writes its form's default, "Automatic", for them and reads any value back the same.
SAMPLERS: dict[str, Sampler] = {
    s.name: s
    for s in (
        Sampler("DPM++ 2M Karras", "DPM++ 2M", "Karras", DPMSolverMultistepScheduler, (("use_karras_sigmas", True),)),
        Sampler("DPM++ 2M", "DPM++ 2M", "Uniform", DPMSolverMultistepScheduler),
        Sampler("Euler a", "Euler a", "Uniform", EulerAncestralDiscreteScheduler),
        Sampler("Euler", "Euler", "Uniform", EulerDiscreteScheduler),
        Sampler("DDIM", "DDIM", "Automatic", DDIMScheduler),
        Sampler("UniPC", "UniPC", "Automatic", UniPCMultistepScheduler),
    )
}
# What A1111's "Automatic" runs for each of its k-diffusion samplers the studio offers (the sampler's `scheduler`
# option in sd_samplers_kdiffusion.py; none means its model's own sigmas, "Uniform").
A1111_AUTOMATIC = {"DPM++ 2M": "Karras", "Euler a": "Uniform", "Euler": "Uniform"}
TAKES_NO_SCHEDULE = frozenset({"DDIM", "UniPC"})  # A1111's timestep samplers
DEFAULT_SAMPLER = "DPM++ 2M Karras"


def get_sampler(name: str) -> Sampler:
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"Unknown scheduler {name!r}. Choose one of: {', '.join(SAMPLERS)}.") from None


def from_infotext(sampler: str, schedule_type: str | None) -> str | None:
    """The studio's sampler for A1111's `Sampler` and `Schedule type`, read as A1111 >= 1.9 reads them; None when
    the studio offers no such pair.

    - No `Schedule type` at all: an infotext from before A1111 1.9 (or from Atelier before it wrote one for every
      sampler), where "DPM++ 2M" was the plain sampler and "DPM++ 2M Karras" the Karras one: the name as written.
    - A legacy name carrying its schedule ("DPM++ 2M Karras"): that schedule, whatever the type says (A1111 lets
      the name's suffix win).
    - "Automatic": the A1111 sampler's own default (Karras for DPM++ 2M).
    - DDIM and UniPC take no schedule type in A1111: any value reads as the sampler.
    """
    schedule = (schedule_type or "").strip()
    named = SAMPLERS.get(sampler)
    if named is not None and (not schedule or named.name != named.a1111_sampler):
        return named.name
    if sampler in TAKES_NO_SCHEDULE:
        return sampler
    if schedule == "Automatic":
        schedule = A1111_AUTOMATIC.get(sampler, schedule)
    for s in SAMPLERS.values():
        if s.a1111_sampler == sampler and s.schedule_type == schedule:
            return s.name
    return None
