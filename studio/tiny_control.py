"""Tiny twins of Restyle's further ControlNets and of their annotators, for offline tests.

- `controlnet_lineart/`, `controlnet_canny/`, `controlnet_openpose/`: tiny SD1.5 ControlNets in the Hub layout
  (like HED's `controlnet/`), each with its own seed and with the zero-initialised output convs randomised, so a
  test can tell they are wired in, and tell one from another.
- In `annotator/` beside HED's file, lllyasviel/Annotators' files for line art (`sk_model.pth`, `sk_model2.pth`)
  and open pose (`body_pose_model.pth`, `hand_pose_model.pth`, `facenet.pth`), loaded by controlnet_aux's own
  `from_pretrained`. Their networks have a fixed size (open pose alone holds ~130 M parameters), so each large
  tensor is saved as a strided view into one shared random pool per init scale: torch writes the pool once, the
  files stay ~30 MB in all and are written in about a second, and loading gives full, ordinary tensors.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from studio import registry, tiny

POOL = 1 << 18  # elements of each shared random pool
SMALL = 4096  # tensors up to this many elements are written in full


def _he_std(tensor: torch.Tensor) -> float:
    fan_in = tensor[0].numel() if tensor.ndim > 1 else 0
    return math.sqrt(2.0 / fan_in) if fan_in else 0.01


def compact_state(state: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random tensors shaped like `state`'s (He init scale): small ones in full, large ones as overlapping
    strided views into one pool per scale (a valid, if correlated, random weight)."""
    pools: dict[float, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        std = _he_std(value)
        if value.numel() <= SMALL or value.ndim < 2:
            out[key] = torch.randn(value.shape, generator=generator) * std
            continue
        if std not in pools:
            pools[std] = torch.randn(POOL, generator=generator) * std
        strides = [1] * value.ndim
        for dim in range(value.ndim - 2, 0, -1):
            strides[dim] = 3 + 2 * dim
        rest = sum((size - 1) * stride for size, stride in zip(value.shape[1:], strides[1:], strict=True))
        strides[0] = max(1, (POOL - 1 - rest) // max(1, value.shape[0] - 1))
        out[key] = pools[std].as_strided(value.shape, strides, 0)
    return out


def write_annotators(folder: Path) -> None:
    """Line art's and open pose's files as lllyasviel/Annotators holds them (open pose's body and hand files keep
    the original Caffe names, without the stage prefix, as controlnet_aux's `transfer` expects)."""
    from controlnet_aux.lineart import Generator
    from controlnet_aux.open_pose.body import bodypose_model
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.hand import handpose_model

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(tiny.SEED + 20)
    lineart, coarse = registry.ANNOTATOR_FILES["annotator_lineart"]
    body, hand, face = registry.ANNOTATOR_FILES["annotator_openpose"]
    for name, model, prefixed in [
        (lineart, Generator(3, 1, 3), False),
        (coarse, Generator(3, 1, 3), False),
        (body, bodypose_model(), True),
        (hand, handpose_model(), True),
        (face, FaceNet(), False),
    ]:
        state = compact_state(model.state_dict(), generator)
        if prefixed:
            state = {key.split(".", 1)[1]: value for key, value in state.items()}
        torch.save(state, folder / name)


def write_control(out_dir: Path) -> None:
    """Every further tiny ControlNet (registry.CONTROL_COMPANIONS) and the annotators' files in `annotator/`."""
    for offset, slot in enumerate(registry.CONTROL_COMPANIONS, start=1):
        tiny.write_controlnet(out_dir / registry.TINY_FOLDERS[slot], seed=tiny.SEED + 20 + 2 * offset)
    write_annotators(out_dir / registry.TINY_FOLDERS["annotator"])
