"""Named checkpoints, and how a model reference (name, hub id, folder, file) resolves to a source to load."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}/[\w.\-]{1,95}$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")

ANNOTATORS_REPO = "lllyasviel/Annotators"
HED_ANNOTATOR_FILE = "ControlNetHED.pth"
HED_CONTROLNET = "lllyasviel/sd-controlnet-hed"
# More ControlNets (Restyle's units): each a lazy companion slot of its own, SD1.5 ControlNet v1.1.
CONTROL_COMPANIONS = {
    "controlnet_lineart": "lllyasviel/control_v11p_sd15_lineart",
    "controlnet_canny": "lllyasviel/control_v11p_sd15_canny",
    "controlnet_openpose": "lllyasviel/control_v11p_sd15_openpose",
}
# Annotators beside HED, all from lllyasviel/Annotators (the "annotator" companion): slot -> its files there.
ANNOTATOR_FILES = {
    "annotator_lineart": ("sk_model.pth", "sk_model2.pth"),
    "annotator_openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
}
SD15_INPAINTING = "stable-diffusion-v1-5/stable-diffusion-inpainting"
LCM_LORA = "latent-consistency/lcm-lora-sdv1-5"  # draft mode: 4-8 step LCM sampling on any SD1.5 checkpoint
LCM_LORA_FILE = "pytorch_lora_weights.safetensors"
TAESD = "madebyollin/taesd"  # live previews: a tiny SD1.5 latent decoder (AutoencoderTiny), used when cached
IP_ADAPTER = "h94/IP-Adapter"  # image prompts: models/ip-adapter*_sd15.safetensors and models/image_encoder/


@dataclass(frozen=True)
class Checkpoint:
    """Where a base model comes from. `kind` is "hub", "folder" or "file"."""

    name: str
    source: str
    kind: str
    label: str
    note: str = ""
    native: int = 512  # px; used only until the UNet config can be read (e.g. not yet downloaded)
    # Where each companion (controlnet, annotator, inpaint, lcm_lora, taesd) comes from; the SD1.5 family's hub
    # repositories unless the entry ships its own.
    companions: Mapping[str, str] = field(default_factory=lambda: dict(SD15_COMPANIONS))
    # Makes the files exist before loading (a checkpoint the studio writes itself); None: nothing to do.
    prepare: Callable[[], object] | None = field(default=None, compare=False)

    @property
    def is_local(self) -> bool:
        return self.kind in ("folder", "file")


SD15_COMPANIONS: dict[str, str] = {
    "controlnet": HED_CONTROLNET,
    "annotator": ANNOTATORS_REPO,
    "inpaint": SD15_INPAINTING,
    "lcm_lora": LCM_LORA,
    "taesd": TAESD,
    **CONTROL_COMPANIONS,
    "ip_adapter": IP_ADAPTER,
}
TINY_FOLDERS = {
    "controlnet": "controlnet",
    "annotator": "annotator",
    "inpaint": "inpaint",
    "lcm_lora": "lcm_lora",
    "taesd": "taesd",
    **{slot: slot for slot in CONTROL_COMPANIONS},
    "ip_adapter": "ip_adapter",
}

REGISTRY: dict[str, Checkpoint] = {
    "dreamlike-photoreal-2.0": Checkpoint(
        name="dreamlike-photoreal-2.0",
        source="dreamlike-art/dreamlike-photoreal-2.0",
        kind="hub",
        label="Dreamlike Photoreal 2.0 (768 px)",
        native=768,
        note="SD1.5 fine-tune trained at 768x768; add 'photo' to prompts. Its licence restricts commercial hosting.",
    ),
    "sd15": Checkpoint(
        name="sd15",
        source="stable-diffusion-v1-5/stable-diffusion-v1-5",
        kind="hub",
        label="Stable Diffusion 1.5 (512 px)",
    ),
}
ALIASES = {
    "dreamlike": "dreamlike-photoreal-2.0",
    "dreamlike-art/dreamlike-photoreal-2.0": "dreamlike-photoreal-2.0",
    "sd1.5": "sd15",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15",
}


class UnknownModelError(ValueError):
    pass


def tiny(tiny_dir: Path) -> Checkpoint:
    """The offline test model: real SD1.5-family architectures at tiny size, written by `studio.tiny` on first use
    into `tiny_dir`, with a tiny twin of every companion beside it."""

    def write() -> object:
        from studio import tiny as writer  # torch-heavy: only when the tiny model is really used

        return writer.write_all(tiny_dir)

    return Checkpoint(
        "tiny",
        str(tiny_dir / "base"),
        "folder",
        "Tiny offline test model (64 px)",
        native=64,
        companions={slot: str(tiny_dir / folder) for slot, folder in TINY_FOLDERS.items()},
        prepare=write,
    )


def named(tiny_dir: Path) -> dict[str, Checkpoint]:
    """Every checkpoint known by name (the tiny model's folder follows the settings)."""
    return {**REGISTRY, "tiny": tiny(tiny_dir)}


def resolve(ref: str, tiny_dir: Path) -> Checkpoint:
    """Turn what an operator typed (flag, env var, settings choice) into a Checkpoint.

    Only operator configuration reaches this function; the UI offers a fixed list of choices built from it,
    so no string from a browser is ever used as a path.
    """
    ref = ref.strip()
    name = ALIASES.get(ref, ref)
    known = named(tiny_dir)
    if name in known:
        return known[name]
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UnknownModelError(f"{ref} is a folder but not a diffusers pipeline (no model_index.json).")
        return Checkpoint(path.name, str(path), "folder", f"{path.name} (local folder)")
    if path.suffix.lower() in SINGLE_FILE_SUFFIXES:
        if not path.is_file():
            raise UnknownModelError(f"Checkpoint file {ref} does not exist.")
        return Checkpoint(path.stem, str(path), "file", f"{path.stem} (single file)")
    if HUB_ID.match(ref):
        return Checkpoint(ref, ref, "hub", ref)
    raise UnknownModelError(
        f"Model {ref!r} is not a known name ({', '.join(sorted(known))}), an existing diffusers "
        "folder, a .safetensors/.ckpt file, or a Hugging Face hub id (owner/name)."
    )


def native_size(ckpt: Checkpoint) -> int:
    """Native resolution from the UNet config alone (no weights): sample_size x 8."""
    import json

    config: str | None = None
    if ckpt.kind == "folder":
        config = str(Path(ckpt.source) / "unet" / "config.json")
    elif ckpt.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ckpt.source, "unet/config.json")
        config = found if isinstance(found, str) else None
    if config and Path(config).is_file():
        return int(json.loads(Path(config).read_text())["sample_size"]) * 8
    return ckpt.native
