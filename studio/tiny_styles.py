"""Tiny personal styles for the tiny checkpoint: LoRAs and textual-inversion embeddings in the layouts people have.

Written by `python -m studio.tiny` beside the tiny checkpoints (`loras/`, `embeddings/`), so the studio's LoRA and
embedding paths run offline on the same diffusers loaders as real files:

- `house-florals.safetensors`: kohya/A1111 keys (`lora_unet_<path>.lora_down.weight`, `.lora_up.weight`, `.alpha`,
  `lora_te_<path>...`) converted from the module names peft really targets in the tiny UNet and text encoder,
  with `ss_tag_frequency` metadata (trigger words) and a preview PNG beside it.
- `house-silhouette.safetensors`: the diffusers layout `save_lora_weights` writes (`unet.<path>.lora_A.weight`),
  UNet only, with `modelspec.trigger_phrase`.
- `sdxl-style.safetensors` (SDXL keys: `lora_te2_`), `not-a-lora.safetensors`: listed as unusable.
- `houseprint.pt` (A1111 `string_to_param {'*': 1 vector}`), `housemodel.safetensors` (`emb_params`, 3 vectors),
  `sdxl-embedding.safetensors` (`clip_g`/`clip_l`): the last listed as unusable.

Weights are random but seeded, and both LoRA matrices are non-zero, so an applied LoRA visibly changes the output.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from studio.style_modules import TEXT_TARGETS, UNET_TARGETS, kohya_state

SEED = 20261116
RANK = 4


def _lora_modules(model: torch.nn.Module, targets: list[str], seed: int) -> dict[str, torch.Tensor]:
    """peft's own LoRA state dict (`<module>.lora_A.weight` / `.lora_B.weight`) for `targets`, both random."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    config = LoraConfig(r=RANK, lora_alpha=RANK, target_modules=targets, init_lora_weights=False)
    model = inject_adapter_in_model(config, model)
    generator = torch.Generator().manual_seed(seed)
    state = get_peft_model_state_dict(model)
    return {key: torch.randn(value.shape, generator=generator) * 0.3 for key, value in sorted(state.items())}


def _models() -> tuple[torch.nn.Module, torch.nn.Module]:
    from diffusers import UNet2DConditionModel

    from studio.tiny import _UNET, _text_encoder

    return UNet2DConditionModel(in_channels=4, out_channels=4, **_UNET), _text_encoder()


def kohya_lora(unet: torch.nn.Module, text_encoder: torch.nn.Module, seed: int = SEED) -> dict[str, torch.Tensor]:
    """A random kohya-layout LoRA for any SD1.5-family UNet and text encoder (modules may live on the meta device:
    only their shapes are read). They get peft layers injected: pass throwaway copies."""
    unet_state = _lora_modules(unet, UNET_TARGETS, seed)
    text_state = _lora_modules(text_encoder, TEXT_TARGETS, seed + 1)
    return {**kohya_state(unet_state, "lora_unet", RANK), **kohya_state(text_state, "lora_te", RANK)}


def write_loras(folder: Path) -> None:
    from diffusers import StableDiffusionPipeline
    from PIL import Image
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    kohya = kohya_lora(*_models())
    tags = {"15_house florals": {"house florals": 15, "botanical print": 9}}
    save_file(kohya, folder / "house-florals.safetensors", metadata={"ss_tag_frequency": json.dumps(tags)})
    Image.new("RGB", (32, 32), (190, 60, 90)).save(folder / "house-florals.png")

    unet2, _ = _models()
    second = _lora_modules(unet2, UNET_TARGETS, SEED + 2)
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=second, weight_name="house-silhouette.safetensors", safe_serialization=True
    )
    _add_metadata(folder / "house-silhouette.safetensors", {"modelspec.trigger_phrase": "long silhouette"})

    sdxl = {f"lora_te2_{k[len('lora_te_') :]}": v for k, v in kohya.items() if k.startswith("lora_te_")}
    unet_keys = {k: v for k, v in kohya.items() if k.startswith("lora_unet_")}
    save_file({**sdxl, **unet_keys}, folder / "sdxl-style.safetensors")
    save_file({"weight": torch.zeros(4, 4)}, folder / "not-a-lora.safetensors")


def _add_metadata(path: Path, extra: dict[str, str]) -> None:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  # safe_open is no dict
        metadata = {**(handle.metadata() or {}), **extra}
    save_file(tensors, path, metadata=metadata)


def write_embeddings(folder: Path, dim: int = 32) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(SEED + 3)
    single = torch.randn(1, dim, generator=generator)
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": single}, "name": "houseprint", "step": 500},
               folder / "houseprint.pt")  # fmt: skip
    save_file({"emb_params": torch.randn(3, dim, generator=generator)}, folder / "housemodel.safetensors")
    xl = {"clip_g": torch.randn(2, 1280, generator=generator), "clip_l": torch.randn(2, 768, generator=generator)}
    save_file(xl, folder / "sdxl-embedding.safetensors")


def write_styles(out_dir: Path) -> None:
    """`loras/` and `embeddings/` under `out_dir` (the tiny checkpoints' folder)."""
    write_loras(Path(out_dir) / "loras")
    write_embeddings(Path(out_dir) / "embeddings")
