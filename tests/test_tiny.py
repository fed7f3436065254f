"""The tiny checkpoints: deterministic files in the Hub layout, with CLIP's real tokenizer."""

from __future__ import annotations

import hashlib
import json

from transformers import CLIPTokenizer

from studio import tiny


def test_writing_the_tiny_base_twice_gives_identical_files(tmp_path):
    tiny.write_base(tmp_path / "a")
    tiny.write_base(tmp_path / "b")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files, "nothing written"
    for rel in files:
        a, b = (tmp_path / "a" / rel).read_bytes(), (tmp_path / "b" / rel).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), rel


def test_layout_matches_the_hub_repositories(tiny_dir):
    index = json.loads((tiny_dir / "base" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_dir / "base" / part).is_dir()
    assert json.loads((tiny_dir / "inpaint" / "unet" / "config.json").read_text())["in_channels"] == 9
    assert (tiny_dir / "controlnet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_dir / "annotator" / "ControlNetHED.pth").is_file()
    taesd = json.loads((tiny_dir / "taesd" / "config.json").read_text())  # madebyollin/taesd keeps it at the root
    assert taesd["_class_name"] == "AutoencoderTiny" and taesd["latent_channels"] == 4
    unet = json.loads((tiny_dir / "base" / "unet" / "config.json").read_text())
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]


def test_tokenizer_reproduces_clips_token_ids(tiny_dir):
    tokenizer = CLIPTokenizer.from_pretrained(tiny_dir / "base" / "tokenizer")
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    # CLIP ViT-L/14's ids for this sentence (the tokenizer every SD1.5 checkpoint ships).
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
