"""Tiny IP-Adapter twins for the tiny checkpoint, in the `h94/IP-Adapter` layout, loaded by diffusers' own
`load_ip_adapter` exactly as the real repository is:

    ip_adapter/models/ip-adapter_sd15.safetensors        image_proj.proj / .norm, ip_adapter.<n>.to_k_ip / .to_v_ip
    ip_adapter/models/ip-adapter-plus_sd15.safetensors   image_proj.latents, proj_in, layers.<i>.<0|1>..., proj_out
    ip_adapter/models/image_encoder/                     a tiny CLIPVisionModelWithProjection (config + safetensors)

Keys follow the original Tencent releases (`ip_adapter.1.to_k_ip.weight`, ... numbered over every attention
processor, the cross-attention ones odd), so the same key conversion runs as for the real files. Weights are
random but seeded, and no layer is zero, so an image prompt visibly changes the output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

SEED = 20261201
PLAIN_FILE = "ip-adapter_sd15.safetensors"
PLUS_FILE = "ip-adapter-plus_sd15.safetensors"
TOKENS = 4  # the plain IP-Adapter's image tokens (as in h94's SD1.5 file)
PLUS_QUERIES = 16  # the plus Resampler's queries (as in h94's SD1.5 file)
PLUS_WIDTH = 64  # the Resampler's width; heads = width // 64 (diffusers reads heads from to_q's rows)
PLUS_DEPTH = 4  # diffusers builds the Resampler with 4 layers
VISION: dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=37,
    projection_dim=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=32,
    patch_size=8,
)


def _rand(gen: torch.Generator, *shape: int) -> torch.Tensor:
    fan_in = shape[-1]
    return torch.randn(*shape, generator=gen) / fan_in**0.5


def _norm(state: dict[str, torch.Tensor], name: str, width: int, gen: torch.Generator) -> None:
    state[f"{name}.weight"] = 1 + 0.1 * torch.randn(width, generator=gen)
    state[f"{name}.bias"] = 0.1 * torch.randn(width, generator=gen)


def cross_attention_widths(unet: Any) -> dict[int, int]:
    """The h94 number of each cross-attention processor (odd, counted over every processor in diffusers' order)
    -> its layer width (what `to_k_ip` maps the image tokens to)."""
    widths = {}
    for index, name in enumerate(unet.attn_processors):
        if name.endswith("attn2.processor"):
            widths[index] = unet.get_submodule(name.removesuffix(".processor")).to_k.out_features
    return widths


def adapter_layers(widths: dict[int, int], cross_dim: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {}
    for number, width in widths.items():
        state[f"ip_adapter.{number}.to_k_ip.weight"] = _rand(gen, width, cross_dim)
        state[f"ip_adapter.{number}.to_v_ip.weight"] = _rand(gen, width, cross_dim)
    return state


def plain_state(widths: dict[int, int], cross_dim: int, embed_dim: int, seed: int = SEED) -> dict[str, torch.Tensor]:
    """ip-adapter_sd15: one linear projection of CLIP's image embedding to `TOKENS` tokens, and the layers."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        "image_proj.proj.weight": _rand(gen, cross_dim * TOKENS, embed_dim),
        "image_proj.proj.bias": 0.1 * torch.randn(cross_dim * TOKENS, generator=gen),
    }
    _norm(state, "image_proj.norm", cross_dim, gen)
    return {**state, **adapter_layers(widths, cross_dim, gen)}


def plus_state(
    widths: dict[int, int], cross_dim: int, hidden_dim: int, seed: int = SEED + 1, width: int = PLUS_WIDTH
) -> dict[str, torch.Tensor]:
    """ip-adapter-plus_sd15: a perceiver Resampler over CLIP's penultimate hidden states, and the layers (`width`
    768 and `hidden_dim` 1280 give the real file's shapes)."""
    gen = torch.Generator().manual_seed(seed)
    state = {
        "image_proj.latents": torch.randn(1, PLUS_QUERIES, width, generator=gen) / width**0.5,
        "image_proj.proj_in.weight": _rand(gen, width, hidden_dim),
        "image_proj.proj_in.bias": 0.1 * torch.randn(width, generator=gen),
        "image_proj.proj_out.weight": _rand(gen, cross_dim, width),
        "image_proj.proj_out.bias": 0.1 * torch.randn(cross_dim, generator=gen),
    }
    _norm(state, "image_proj.norm_out", cross_dim, gen)
    for i in range(PLUS_DEPTH):
        layer = f"image_proj.layers.{i}"
        _norm(state, f"{layer}.0.norm1", width, gen)
        _norm(state, f"{layer}.0.norm2", width, gen)
        state[f"{layer}.0.to_q.weight"] = _rand(gen, width, width)
        state[f"{layer}.0.to_kv.weight"] = _rand(gen, 2 * width, width)
        state[f"{layer}.0.to_out.weight"] = _rand(gen, width, width)
        _norm(state, f"{layer}.1.0", width, gen)
        state[f"{layer}.1.1.weight"] = _rand(gen, 4 * width, width)
        state[f"{layer}.1.3.weight"] = _rand(gen, width, 4 * width)
    return {**state, **adapter_layers(widths, cross_dim, gen)}


def write_ip_adapter(folder: Path, unet: Any) -> Path:
    """Write the h94 layout into `folder` for the layers of `unet` (the tiny base UNet)."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    models = folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED + 2)
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION))
    encoder.save_pretrained(models / "image_encoder", safe_serialization=True)
    widths = cross_attention_widths(unet)
    cross_dim = int(unet.config.cross_attention_dim)
    save_file(plain_state(widths, cross_dim, VISION["projection_dim"]), str(models / PLAIN_FILE))
    save_file(plus_state(widths, cross_dim, VISION["hidden_size"]), str(models / PLUS_FILE))
    return folder
