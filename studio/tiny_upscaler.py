"""A tiny ESRGAN upscaler for offline tests: the real RRDBNet architecture at tiny size, random but deterministic.

It is written as a plain `.pth` state dict in the key layout of the original Real-ESRGAN release files
(`conv_first`, `body.N.rdbM.convK`, `conv_body`, `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`), so spandrel
detects and loads it exactly as it loads `RealESRGAN_x4plus.pth`. ESRGAN's dense blocks grow by 32 channels per
conv (spandrel builds them so), so only the feature width and the number of blocks are small here.
"""

from __future__ import annotations

from pathlib import Path

import torch

FILE_NAME = "tiny-esrgan-x4.pth"
SEED = 20261130
FEATURES = 8  # num_feat (64 in RealESRGAN_x4plus)
BLOCKS = 1  # RRDB blocks (23 in RealESRGAN_x4plus)
GROW = 32  # num_grow_ch: fixed at 32 by spandrel's RRDBNet
LAST_GAIN = 0.5  # the RGB head: outputs around mid-grey that follow the input, rarely clamped


def _conv(
    state: dict[str, torch.Tensor], name: str, out_ch: int, in_ch: int, gen: torch.Generator, gain: float = 1.0
) -> None:
    """Kaiming-normal weights times `gain`, zero bias (basicsr's `default_init_weights` uses 0.1 inside the
    residual blocks, so a deep net of random convs stays in range instead of saturating)."""
    std = (2.0 / (in_ch * 9)) ** 0.5
    state[f"{name}.weight"] = torch.randn(out_ch, in_ch, 3, 3, generator=gen) * std * gain
    state[f"{name}.bias"] = torch.zeros(out_ch)


def state_dict(features: int = FEATURES, blocks: int = BLOCKS, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A 4x RRDBNet state dict in Real-ESRGAN's key layout."""
    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    _conv(state, "conv_first", features, 3, gen)
    for block in range(blocks):
        for rdb in (1, 2, 3):
            for k in range(1, 6):
                out_ch = features if k == 5 else GROW
                _conv(state, f"body.{block}.rdb{rdb}.conv{k}", out_ch, features + (k - 1) * GROW, gen, gain=0.1)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        _conv(state, name, features, features, gen)
    # The last conv maps features to RGB around mid-grey, strongly enough that the output follows the input
    # (spandrel clamps to [0, 1]: a saturated output would make every property hold trivially).
    _conv(state, "conv_last", 3, features, gen, gain=LAST_GAIN)
    state["conv_last.bias"] = torch.full((3,), 0.5)
    return state


def write_upscaler(folder: Path) -> Path:
    """Write the tiny 4x ESRGAN into `folder`; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAME
    torch.save({"params_ema": state_dict()}, path)  # Real-ESRGAN's files keep the weights under params_ema
    return path
