"""The GPU fast path: applied once to each freshly loaded model, before it is made resident and serves any mode.

- dtype: bf16 where the GPU supports it, else fp16 (chosen by `cache.pick_dtype`, not here).
- SDPA attention: torch 2's fused `scaled_dot_product_attention` (diffusers' `AttnProcessor2_0`, its default on
  torch 2). `ensure_sdpa` only replaces the classic `AttnProcessor`; adapters' and custom processors stay.
- channels-last memory format for the convolution-heavy modules (UNet, VAE, ControlNet) on CUDA, where cuDNN's
  NHWC kernels are faster (setting `channels_last`: auto = on for CUDA only).
- optional `torch.compile` of the UNet's (and ControlNet's) `forward` on the instance (setting `compile`). Every
  mode's pipeline is derived from the base with `from_pipe`, which shares the module objects, so one compiled
  module serves every tab: switching tabs reuses the compiled graph as long as shapes match (inputs are given
  one memory layout before the compiled code, so img2img's latents do not count as new). A tiling context
  (`studio.tiling.wrapped`) swaps per-instance conv `forward`s, which dynamo's guards see: the first wrapped run
  of each repeat compiles once more, and leaving the context hits the plain graph again (measured in
  tests/test_fastpath.py with dynamo's frame counter).
- fp16 only: a NaN-safe VAE decode. diffusers 0.42's SD pipelines ignore `vae.force_upcast`, so an fp16 overflow
  in the decoder gives a black image; `guard_fp16_decode` checks the decoder's output and decodes again in fp32
  when it is not finite.

None of this changes which image a seed gives beyond float rounding (tests/test_fastpath.py checks it on CPU).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from studio.settings import Settings

log = logging.getLogger(__name__)

_FP32_RETRY = "_atelier_fp32_retry"  # on a guarded VAE decoder: the hook's handle
RECOMPILE_LIMIT = 64  # graphs per compiled forward before dynamo falls back to eager
_COMPILED = "_atelier_compiled"  # on a compiled module: its layout hook's handle
# What compile_module sets on an instance; a structural copy of the module (cache.shared_copy) must not keep them.
COMPILED_ATTRIBUTES = ("forward", _COMPILED)


def wants_channels_last(setting: str, device: torch.device) -> bool:
    """`channels_last` setting: "on", "off", or "auto" (on for CUDA, where it pays; off elsewhere)."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


def ensure_sdpa(module: torch.nn.Module) -> int:
    """Give every attention layer still on the classic `AttnProcessor` torch 2's SDPA processor; returns how many
    were replaced. Other processors (LoRA, IP-Adapter, custom) are left as they are."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    set_processors = getattr(module, "set_attn_processor", None)  # diffusers models have both; others neither
    if not processors or set_processors is None:
        return 0
    classic = [name for name, proc in processors.items() if type(proc) is AttnProcessor]
    if classic:
        set_processors({name: AttnProcessor2_0() if name in classic else proc for name, proc in processors.items()})
        log.info("SDPA attention for %d layers of %s", len(classic), type(module).__name__)
    return len(classic)


def to_channels_last(*modules: torch.nn.Module | None) -> None:
    for module in modules:
        if module is not None:
            module.to(memory_format=torch.channels_last)


def is_compiled(module: torch.nn.Module) -> bool:
    return _COMPILED in module.__dict__


def compile_module(
    module: torch.nn.Module,
    backend: str | Callable[..., Any] = "inductor",
    mode: str | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> bool:
    """`torch.compile` this instance's `forward`, once; returns False when it already was compiled.

    In place: the object stays the same, so pipelines that share it through `from_pipe` and code that reads its
    `config` see no wrapper. Compilation happens lazily on the first call. A forward pre-hook, which runs before the
    compiled code, gives the inputs one layout and the timestep one dtype: dynamo guards on strides and dtypes,
    and img2img's latents arrive in another layout than txt2img's (and samplers differ in timestep dtype), which
    would otherwise cost a recompile (a minute with inductor on the full UNet) the first time each mode runs."""
    if is_compiled(module):
        return False
    # One graph per (size, batch, repeat) a designer uses: dynamo's default of 8 would silently drop back to eager
    # after a few sizes and repeats in a long session. Dynamo checks the limit when a guard fails on some later call,
    # so it must hold then, not while this runs: torch.compile's own `recompile_limit` gives it to this module's
    # frames alone (dynamo applies it around each of their compiles), and the process-wide setting is left as it is.
    # A higher process-wide limit, as set when the module is compiled, is kept rather than lowered.
    limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    # torch 2.14's typing overloads of torch.compile omit `recompile_limit`; the function itself takes it.
    module.forward = torch.compile(  # type: ignore[call-overload]
        module.forward, backend=backend, mode=mode, recompile_limit=limit
    )
    handle = module.register_forward_pre_hook(functools.partial(_uniform_inputs, memory_format), with_kwargs=True)
    setattr(module, _COMPILED, handle)
    log.info(
        "torch.compile(%s.forward, backend=%s, mode=%s)",
        type(module).__name__,
        getattr(backend, "__name__", backend),
        mode,
    )
    return True


def _uniform_inputs(
    memory_format: torch.memory_format, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """4-D tensors in `memory_format`; an integer `timestep` tensor as float32 (DPM++ gives int64, Euler float32;
    the time embedding casts it to float32 first thing, so the values are the same exactly)."""

    def same(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim == 4:
            return value.contiguous(memory_format=memory_format)
        return value

    def step(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            return value.to(torch.float32)
        return value

    args = tuple(step(value) if i == 1 else same(value) for i, value in enumerate(args))
    return args, {name: step(value) if name == "timestep" else same(value) for name, value in kwargs.items()}


# ---- fp16: a VAE decode that cannot silently turn into a black image ---------------------------------------------
def guard_fp16_decode(vae: torch.nn.Module) -> bool:
    """Check every decode of `vae.decoder` for NaN/inf and retry it in fp32 (then back to fp16); once per VAE.

    A torch forward hook on the decoder, so it also covers tiled decoding (the decoder runs per tile). Returns False
    when the decoder was already guarded."""
    decoder = vae.decoder
    if not isinstance(decoder, torch.nn.Module):
        raise TypeError(f"{type(vae).__name__}.decoder is not a module")
    if getattr(decoder, _FP32_RETRY, None) is not None:
        return False
    setattr(decoder, _FP32_RETRY, decoder.register_forward_hook(_retry_in_fp32, with_kwargs=True))
    return True


def _finite(tensor: Any) -> bool:
    return not isinstance(tensor, torch.Tensor) or bool(torch.isfinite(tensor).all())


def _as_fp32(value: Any) -> Any:
    return value.float() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _retry_in_fp32(
    decoder: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor
) -> torch.Tensor | None:
    """Forward hook: None keeps the output; a tensor replaces it."""
    if _finite(output):
        return None
    if not all(_finite(a) for a in (*args, *kwargs.values())):  # the latents themselves overflowed (UNet)
        log.warning(
            "The latents reaching the VAE are not finite (an fp16 overflow in the UNet); decoding in fp32 "
            "cannot help. Run with --dtype bf16 (or fp32) if this model keeps doing it."
        )
        return None
    dtype = output.dtype
    log.warning("The %s VAE decode overflowed; decoding again in fp32.", dtype)
    decoder.to(torch.float32)
    try:  # `forward`, not `__call__`: this hook must not run on its own retry
        retried = decoder.forward(*map(_as_fp32, args), **{k: _as_fp32(v) for k, v in kwargs.items()})
    finally:
        decoder.to(dtype)
    return retried.to(dtype)


# ---- applied by the model cache ------------------------------------------------------------------------------------
def prepare_pipeline(
    pipe: Any, settings: Settings, device: torch.device, backend: str | Callable[..., Any] = "inductor"
) -> None:
    """The fast path for a freshly loaded base pipeline (already on `device`, in its final dtype)."""
    for module in (pipe.unet, pipe.vae):
        ensure_sdpa(module)
    if wants_channels_last(settings.channels_last, device):
        to_channels_last(pipe.unet, pipe.vae)
    if pipe.vae.dtype == torch.float16:
        guard_fp16_decode(pipe.vae)
    if settings.compile:
        compile_module(pipe.unet, backend=backend, memory_format=_layout(settings, device))


def prepare_module(
    module: torch.nn.Module, settings: Settings, device: torch.device, backend: str | Callable[..., Any] = "inductor"
) -> torch.nn.Module:
    """The fast path for a companion slot's module (ControlNet, inpainting UNet); returns the same module."""
    ensure_sdpa(module)
    if wants_channels_last(settings.channels_last, device):
        to_channels_last(module)
    if settings.compile:
        compile_module(module, backend=backend, memory_format=_layout(settings, device))
    return module


def _layout(settings: Settings, device: torch.device) -> torch.memory_format:
    return torch.channels_last if wants_channels_last(settings.channels_last, device) else torch.contiguous_format
