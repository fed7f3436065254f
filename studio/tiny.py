"""Tiny offline checkpoints: the real SD1.5 / ControlNet / HED architectures at tiny size, in the Hub layouts.

Weights are random but deterministic (fixed seeds), so every machine writes identical files. They let the whole
studio run offline on a CPU in seconds, and let tests load them through the very `from_pretrained` calls used for
the real hub ids — either from a folder, or installed into a Hugging Face cache under the real ids.

    python -m studio.tiny OUT_DIR   # base/, inpaint/, controlnet*/, annotator/, lcm_lora/, taesd/, upscaler/,
                                    # ip_adapter/, ...
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from studio.tiny_ipadapter import write_ip_adapter
from studio.tiny_styles import write_styles
from studio.tiny_upscaler import write_upscaler

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, ControlNetModel, PNDMScheduler
    from transformers import CLIPTextModel

log = logging.getLogger(__name__)

# Bump when the layout or the seeds change: folders written by an older version are rewritten.
VERSION = "atelier-tiny-10"
NATIVE_SIZE = 64  # px; latents 8x8
SEED = 20260101

_UNET = dict(
    sample_size=NATIVE_SIZE // 8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 32, 64, 64),
    layers_per_block=2,
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=8,
)
# Hub ids whose tiny twins `install_in_hf_cache` provides, and which tiny folder stands in for each.
HUB_TWINS = {
    "dreamlike-art/dreamlike-photoreal-2.0": "base",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "base",
    "stable-diffusion-v1-5/stable-diffusion-inpainting": "inpaint",
    "lllyasviel/sd-controlnet-hed": "controlnet",
    "lllyasviel/control_v11p_sd15_lineart": "controlnet_lineart",
    "lllyasviel/control_v11p_sd15_canny": "controlnet_canny",
    "lllyasviel/control_v11p_sd15_openpose": "controlnet_openpose",
    "lllyasviel/Annotators": "annotator",
    "latent-consistency/lcm-lora-sdv1-5": "lcm_lora",
    "madebyollin/taesd": "taesd",
    "h94/IP-Adapter": "ip_adapter",
}
# The UNet layers LCM-LoRA adapts (its training script's target modules), and the file name it ships.
LCM_LORA_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
    "time_emb_proj",
)
LORA_FILE = "pytorch_lora_weights.safetensors"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters (byte order as CLIP uses it)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes), strict=True))


def clip_vocabulary() -> tuple[dict[str, int], list[str]]:
    """CLIP's BPE vocabulary and merges, rebuilt from the file `open_clip_torch` ships (49,408 entries)."""
    source = resources.files("open_clip").joinpath("bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.decompress(source.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    byte_tokens = list(bytes_to_unicode().values())
    tokens = byte_tokens + [t + "</w>" for t in byte_tokens]
    tokens += ["".join(merge.split()) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, merges


def write_tokenizer(folder: Path) -> None:
    """The SD1.5 `tokenizer/` folder: vocab.json, merges.txt and the CLIPTokenizer config."""
    vocab, merges = clip_vocabulary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": 77,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))


def _text_encoder() -> CLIPTextModel:
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        projection_dim=32,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )
    return CLIPTextModel(config)


def _vae() -> AutoencoderKL:
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=2,
        norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 16, 32, 32),
        sample_size=NATIVE_SIZE,
        scaling_factor=0.18215,
    )


def _scheduler() -> PNDMScheduler:
    from diffusers import PNDMScheduler

    # SD1.5's own scheduler config.
    return PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def _randomize_zero_convs(controlnet: ControlNetModel, generator: torch.Generator) -> None:
    """A fresh ControlNet's output convs are zero ("zero convs") and would change nothing; randomise them."""
    zero_convs = [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]
    with torch.no_grad():
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.05)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.05)


def _tiny_unet() -> Any:
    """The tiny base UNet's architecture (the IP-Adapter twin's layers are shaped after it)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(in_channels=4, out_channels=4, **_UNET)


def write_base(folder: Path, in_channels: int = 4) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    tok_dir = folder / "_tokenizer_src"
    write_tokenizer(tok_dir)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(in_channels=in_channels, out_channels=4, **_UNET)
    torch.manual_seed(SEED + 1)
    vae = _vae()
    torch.manual_seed(SEED + 2)
    text_encoder = _text_encoder()
    if in_channels != 4:  # the inpainting twin: a different UNet, same VAE and text encoder weights
        torch.manual_seed(SEED + 3)
        unet = UNet2DConditionModel(in_channels=in_channels, out_channels=4, **_UNET)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tok_dir),
        unet=unet,
        scheduler=_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    shutil.rmtree(tok_dir)
    shutil.rmtree(folder / "tokenizer")
    write_tokenizer(folder / "tokenizer")  # the exact files the Hub's SD1.5 tokenizer folder holds


def write_controlnet(folder: Path, seed: int = SEED + 4) -> None:
    """A tiny SD1.5 ControlNet (HED's by default; studio.tiny_control writes the others with their own seeds)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    unet_keys = (
        "in_channels",
        "down_block_types",
        "block_out_channels",
        "layers_per_block",
        "cross_attention_dim",
        "attention_head_dim",
        "norm_num_groups",
    )
    controlnet = ControlNetModel(
        **{k: _UNET[k] for k in unet_keys if k in _UNET},
        conditioning_embedding_out_channels=(16, 16, 32, 32),
    )
    _randomize_zero_convs(controlnet, torch.Generator().manual_seed(seed + 1))
    controlnet.save_pretrained(folder, safe_serialization=True)


def write_annotator(folder: Path) -> None:
    """`ControlNetHED.pth` as in lllyasviel/Annotators: the HED network's (fixed-size) state dict."""
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.manual_seed(SEED + 6)
    net = ControlNetHED_Apache2()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "ControlNetHED.pth")


def write_lcm_lora(folder: Path, rank: int = 4) -> None:
    """`pytorch_lora_weights.safetensors` as latent-consistency/lcm-lora-sdv1-5 ships it: kohya-style keys
    (`lora_unet_<module_path>.lora_down/.lora_up/.alpha`) over the UNet's attention, feed-forward, resnet and
    resampler layers. Both matrices are random (a trained LoRA's `lora_up` is not zero), so the adapter visibly
    changes the output when enabled and a test can tell whether it is applied."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file

    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(in_channels=4, out_channels=4, **_UNET)
    generator = torch.Generator().manual_seed(SEED + 7)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in unet.named_modules():
        if not name.endswith(LCM_LORA_TARGETS) or not isinstance(module, torch.nn.Linear | torch.nn.Conv2d):
            continue
        key = "lora_unet_" + name.replace(".", "_")
        down_shape: tuple[int, ...]
        up_shape: tuple[int, ...]
        if isinstance(module, torch.nn.Linear):
            down_shape, up_shape = (rank, module.in_features), (module.out_features, rank)
        else:
            down_shape = (rank, module.in_channels, *module.kernel_size)
            up_shape = (module.out_channels, rank, 1, 1)
        tensors[key + ".lora_down.weight"] = torch.randn(down_shape, generator=generator) * 0.1
        tensors[key + ".lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.1
        tensors[key + ".alpha"] = torch.tensor(float(rank))
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / LORA_FILE)


def write_taesd(folder: Path) -> None:
    """madebyollin/taesd's layout (an `AutoencoderTiny`: config.json + diffusion_pytorch_model.safetensors at the
    repo root) at tiny width: the live-preview decoder."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(SEED + 11)
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
    ).save_pretrained(folder)


def write_all(out_dir: Path) -> Path:
    """Write every tiny checkpoint into out_dir (atomically: a half-written folder is never visible)."""
    from studio.tiny_control import write_control  # it builds on this module's ControlNet writer

    out_dir = Path(out_dir)
    if (out_dir / "VERSION").is_file() and (out_dir / "VERSION").read_text().strip() == VERSION:
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=out_dir.parent))
    try:
        write_base(tmp / "base")
        write_base(tmp / "inpaint", in_channels=9)
        write_controlnet(tmp / "controlnet")
        write_annotator(tmp / "annotator")
        write_control(tmp)  # lineart, canny, openpose ControlNets and annotators (studio.tiny_control)
        write_lcm_lora(tmp / "lcm_lora")
        write_taesd(tmp / "taesd")
        write_styles(tmp)  # loras/ and embeddings/ (studio.tiny_styles)
        write_upscaler(tmp / "upscaler")  # a 4x ESRGAN in Real-ESRGAN's .pth layout (studio.tiny_upscaler)
        write_ip_adapter(tmp / "ip_adapter", _tiny_unet())  # h94/IP-Adapter's layout (studio.tiny_ipadapter)
        (tmp / "VERSION").write_text(VERSION + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir, ignore_errors=True)
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished first
            if not (out_dir / "VERSION").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Tiny checkpoints written to %s", out_dir)
    return out_dir


def install_in_hf_cache(tiny_dir: Path, hub_cache: Path) -> dict[str, Path]:
    """Lay the tiny twins out under their real hub ids in a Hugging Face hub cache (the `HF_HUB_CACHE` layout:
    models--org--name/refs/main + snapshots/<revision>/...), so `from_pretrained("org/name")` finds them with
    `HF_HUB_OFFLINE=1`. Returns each repo's snapshot folder."""
    revision = "0" * 40
    snapshots: dict[str, Path] = {}
    for repo_id, twin in HUB_TWINS.items():
        repo_dir = Path(hub_cache) / ("models--" + repo_id.replace("/", "--"))
        snapshot = repo_dir / "snapshots" / revision
        if not snapshot.exists():
            shutil.copytree(Path(tiny_dir) / twin, snapshot)
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(revision)
        snapshots[repo_id] = snapshot
    return snapshots


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m studio.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = write_all(args.out_dir)
    print(
        f"Wrote tiny checkpoints to {path}: base/, inpaint/, controlnet/, controlnet_lineart/, controlnet_canny/, "
        "controlnet_openpose/, annotator/ (HED, line art, open pose), lcm_lora/, taesd/, upscaler/, loras/, "
        "embeddings/, ip_adapter/"
    )


if __name__ == "__main__":
    main()
