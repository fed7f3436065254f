"""The torch side of image prompts: the CLIP vision encoder, a weight-sharing UNet copy holding an IP-Adapter, and
image embeddings. Nothing here knows requests or the UI (studio.image_prompt does); the cache holds what this makes.

`load_ip_adapter` replaces a UNet's attention processors (diffusers issue #6088), so it is loaded into a copy of the
UNet over the very same weight tensors (`tensors.shared_copy`, as the draft UNet is built): the base UNet keeps its
processors, and requests without an image prompt run exactly as before.

Several pictures, each with its own weight, are A1111's several IP-Adapter units: the attention output of each
picture's tokens is added with that picture's weight. diffusers gives each *adapter* its own scale
(`set_ip_adapter_scale([w1, w2, ...])`), so the copy holds the same adapter file `MAX_IMAGES` times — loaded
through `load_ip_adapter` as a list of weight names — and then ties every copy to the first one's tensors
(`tie`): one set of adapter weights in memory, `MAX_IMAGES` scales. A slot without a picture has scale 0, which
diffusers' processor skips.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from studio.tensors import shared_copy

WEIGHTS_SUBFOLDER = "models"  # h94/IP-Adapter's SD1.5 files
ENCODER_SUBFOLDER = "models/image_encoder"  # the OpenCLIP ViT-H/14 both SD1.5 adapters were trained with
MODELS = {
    "ip-adapter_sd15": "ip-adapter_sd15.safetensors",
    "ip-adapter-plus_sd15": "ip-adapter-plus_sd15.safetensors",
}
PLUS = frozenset({"ip-adapter-plus_sd15"})  # fed CLIP's penultimate hidden states instead of its image embedding
MAX_IMAGES = 4  # pictures per request: the adapter slots of a copy
ADAPTER_PARTS = ("to_k_ip", "to_v_ip", "encoder_hid_proj")  # parameter names only an IP-Adapter adds


def load_encoder(source: str, dtype: torch.dtype, device: torch.device) -> Any:
    """The CLIP vision encoder, loaded from where `load_ip_adapter` would load it."""
    from transformers import CLIPVisionModelWithProjection

    encoder: Any = CLIPVisionModelWithProjection.from_pretrained(source, subfolder=ENCODER_SUBFOLDER, dtype=dtype)
    return encoder.to(device).eval()


def adapted_unet(components: dict[str, Any], unet: Any, encoder: Any, source: str, model: str) -> Any:
    """A copy of `unet` sharing every weight, with the IP-Adapter `model` loaded `MAX_IMAGES` times and tied.

    `components`: the base pipeline's, to build the throwaway pipeline `load_ip_adapter` is a method of; it is
    given the encoder already held, so the encoder is not loaded again."""
    from diffusers import StableDiffusionPipeline

    adapted = shared_copy(unet)
    holder = StableDiffusionPipeline(
        **{**components, "unet": adapted, "image_encoder": encoder, "feature_extractor": None, "safety_checker": None},
        requires_safety_checker=False,
    )
    holder.load_ip_adapter(source, subfolder=WEIGHTS_SUBFOLDER, weight_name=[MODELS[model]] * MAX_IMAGES)
    tie(adapted)
    return adapted


def tie(unet: Any) -> None:
    """Every adapter slot of `unet` uses the first slot's modules (the same file was loaded into each)."""
    layers = unet.encoder_hid_proj.image_projection_layers
    for i in range(1, len(layers)):
        layers[i] = layers[0]
    for processor in unet.attn_processors.values():
        if hasattr(processor, "to_k_ip"):
            for i in range(1, len(processor.to_k_ip)):
                processor.to_k_ip[i] = processor.to_k_ip[0]
                processor.to_v_ip[i] = processor.to_v_ip[0]


def adapter_bytes(unet: Any) -> int:
    """Bytes of the tensors the IP-Adapter added to a copy (its slots share them: counted once)."""
    seen = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for name, t in unet.named_parameters()
            if any(part in name for part in ADAPTER_PARTS)}  # fmt: skip
    return sum(seen.values())


@torch.no_grad()
def encode(encoder: Any, image: Image.Image, plus: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One picture's image embedding and its unconditional twin, exactly as diffusers' `encode_image` makes them
    (the processor `load_ip_adapter` registers: resize and centre crop to the encoder's size)."""
    from transformers import CLIPImageProcessor

    size = int(encoder.config.image_size)
    processor = CLIPImageProcessor(size=size, crop_size=size)
    pixels = processor(image, return_tensors="pt").pixel_values.to(device=encoder.device, dtype=encoder.dtype)
    if plus:
        cond = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        uncond = encoder(torch.zeros_like(pixels), output_hidden_states=True).hidden_states[-2]
        return cond, uncond
    cond = encoder(pixels).image_embeds
    return cond, torch.zeros_like(cond)


def image_embeds(embeddings: list[tuple[torch.Tensor, torch.Tensor]], cfg: bool) -> list[torch.Tensor]:
    """The pipeline's `ip_adapter_image_embeds`: one tensor per adapter slot ([uncond, cond] with CFG); slots
    without a picture get zeros (their scale is 0, so they are skipped)."""
    slots = []
    for cond, uncond in embeddings:
        slots.append(torch.cat([uncond[None], cond[None]]) if cfg else cond[None])
    slots += [torch.zeros_like(slots[0])] * (MAX_IMAGES - len(slots))
    return slots
