"""Seamless repeats: make every convolution of shared models wrap around, for the length of a `with` block.

Repeats, as the textile trade names them (a tile T of height H and width W):
- `full`      full drop: the tile repeats on both axes (a torus).
- `half_drop` each column of tiles is dropped by half a tile: the column to the right of T is T rolled down by
              H/2, the column to its left T rolled up by H/2; rows wrap plainly.
- `brick`     each row of tiles is shifted across by half a tile (the transpose of half-drop).
- `x`, `y`    one axis only (border prints): that axis wraps, the other keeps the model's zero padding.

`padding_mode` has no per-axis or offset option, so each wrapped conv pads its input itself (`wrap_pad`) and runs
with zero padding of its own. The changes are per instance (`forward`, `padding`, `padding_mode`, plus the VAE
encoder's asymmetric `Downsample2D` pad and the VAE's `use_tiling`) and are restored exactly in `finally`.
Callers enter `wrapped` under `studio.cache.gpu()`, so no other request ever sees a wrapped model.

Offsets are half of each feature map's height (half-drop) or width (brick) at every level, so that size must be
even at every level: the latent side must be divisible by 2 ** (downsamplings + 1) (see `granule`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D

# The industry's repeats, by the name requests use -> how a designer reads it (the one table; UIs and messages use it)
REPEAT_LABELS = {
    "full": "full drop",
    "half_drop": "half-drop",
    "brick": "brick",
    "x": "horizontal only (border print)",
    "y": "vertical only",
}
REPEATS = tuple(REPEAT_LABELS)
_MARK = "_atelier_repeat"  # instance attribute present only while a conv is wrapped

Pads = tuple[int, int, int, int]  # (left, right, top, bottom), as F.pad takes them


def wraps(repeat: str) -> tuple[bool, bool]:
    """(x wraps, y wraps) for a repeat."""
    check_repeat(repeat)
    return repeat != "y", repeat != "x"


def check_repeat(repeat: str) -> None:
    if repeat not in REPEATS:
        raise ValueError(f"Unknown repeat {repeat!r}; choose one of: {', '.join(REPEATS)}.")


def granule(downsamplings: int, scale_factor: int, repeat: str) -> tuple[int, int]:
    """(width, height) multiples in pixels for which `repeat` is exact on a model with that many downsamplings."""
    check_repeat(repeat)
    plain = scale_factor * 2**downsamplings
    wrap_x, wrap_y = wraps(repeat)
    width = 2 * plain if repeat == "brick" else plain if wrap_x else scale_factor
    height = 2 * plain if repeat == "half_drop" else plain if wrap_y else scale_factor
    return width, height


def _dropped(x: torch.Tensor, before: int, after: int, dim: int, drop_dim: int) -> torch.Tensor:
    """Pad `x` along `dim` with the strips that wrap in, rolled by half the size of `drop_dim` (+ after, - before)."""
    half, size = x.shape[drop_dim], x.shape[dim]
    if half % 2:
        raise ValueError(
            f"A half-drop/brick repeat needs even feature maps; got size {half}. "
            "Use a tile size that is a multiple of the repeat's granule."
        )
    lead = torch.roll(x.narrow(dim, size - before, before), -(half // 2), drop_dim)
    trail = torch.roll(x.narrow(dim, 0, after), half // 2, drop_dim)
    return torch.cat([lead, x, trail], dim=dim)


def wrap_pad(x: torch.Tensor, pads: Pads, repeat: str) -> torch.Tensor:
    """Pad an (N, C, H, W) tensor by `pads` with what lies beyond its edges in the `repeat` plane."""
    left, right, top, bottom = pads
    if repeat == "full":
        return F.pad(x, pads, mode="circular")
    if repeat == "x":
        return F.pad(F.pad(x, (left, right, 0, 0), mode="circular"), (0, 0, top, bottom))
    if repeat == "y":
        return F.pad(F.pad(x, (0, 0, top, bottom), mode="circular"), (left, right, 0, 0))
    if repeat == "half_drop":  # columns first (their strips come in dropped), then rows wrap plainly
        return F.pad(_dropped(x, left, right, dim=-1, drop_dim=-2), (0, 0, top, bottom), mode="circular")
    if repeat == "brick":
        return F.pad(_dropped(x, top, bottom, dim=-2, drop_dim=-1), (left, right, 0, 0), mode="circular")
    raise ValueError(f"Unknown repeat {repeat!r}; choose one of: {', '.join(REPEATS)}.")


def _conv_pads(conv: torch.nn.Conv2d) -> Pads:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0, 0, 0)
        totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]  # "same"
        (th, tw) = totals
        return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def _wrap_conv(conv: torch.nn.Conv2d, pads: Pads, repeat: str) -> Callable[[], None]:
    """Make one conv pad its own input by `repeat`; returns the function that undoes exactly that."""
    saved_mode, saved_padding = conv.padding_mode, conv.padding
    saved_forward = conv.__dict__.get("forward")  # an instance-level forward (e.g. an offload hook), if any
    inner = conv.forward

    def forward(x: torch.Tensor) -> torch.Tensor:
        return inner(wrap_pad(x, pads, repeat))

    conv.padding_mode, conv.padding = "zeros", (0, 0)
    # a deliberate per-instance patch of a method (wrapped input, no self), undone by `restore`
    conv.forward = forward  # type: ignore[method-assign,assignment]
    setattr(conv, _MARK, repeat)

    def restore() -> None:
        conv.padding_mode, conv.padding = saved_mode, saved_padding
        if saved_forward is None:
            del conv.forward
        else:
            conv.forward = saved_forward  # type: ignore[method-assign]  # puts back the instance-level forward it had
        delattr(conv, _MARK)

    return restore


def _wrap_module(module: torch.nn.Module, repeat: str, undo: list[Callable[[], None]]) -> None:
    asymmetric: set[int] = set()
    for sub in module.modules():
        if isinstance(sub, Downsample2D) and sub.use_conv and sub.padding == 0:
            # the VAE encoder pads (0, 1, 0, 1) with zeros before a padding-free stride-2 conv: do it wrapped
            asymmetric.add(id(sub.conv))
            # skips its own zero pad; only `== 0` is ever tested (None is out of its int type on purpose)
            sub.padding = None  # type: ignore[assignment]

            def restore(sub: Any = sub) -> None:
                sub.padding = 0

            undo.append(restore)
    if getattr(module, "use_tiling", False):  # VAE tiling would decode tile by tile with zero borders
        # torch types Module.__setattr__ as taking Tensor | Module only; a plain attribute takes any value
        module.use_tiling = False  # type: ignore[assignment]
        undo.append(lambda: setattr(module, "use_tiling", True))  # `module` is this call's parameter, never rebound
    for sub in module.modules():
        if isinstance(sub, torch.nn.Conv2d):
            if _MARK in sub.__dict__:
                raise RuntimeError("This model is already wrapped for a repeat; `wrapped` blocks do not nest.")
            pads = (0, 1, 0, 1) if id(sub) in asymmetric else _conv_pads(sub)
            if any(pads):
                undo.append(_wrap_conv(sub, pads, repeat))


@contextlib.contextmanager
def wrapped(modules: Iterable[torch.nn.Module | None], repeat: str) -> Iterator[None]:
    """Every Conv2d (and the VAE encoder's asymmetric Downsample2D pad) inside `modules` wraps around per `repeat`;
    restored exactly (padding_mode, padding, forward) in `finally`, even on exceptions.

    `None` entries are skipped and a module given twice is wrapped once. Enter under `studio.cache.gpu()`.
    """
    check_repeat(repeat)
    undo: list[Callable[[], None]] = []
    try:
        seen: set[int] = set()
        for module in modules:
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                _wrap_module(module, repeat, undo)
        yield
    finally:
        for restore in reversed(undo):
            restore()
