"""Image prompts (IP-Adapter, issue 17): weight 0 is no image prompt, pixel for pixel; a weight changes the image;
pictures mix with a weight each; the base UNet is never touched; the adapter costs exactly its own bytes; every mode
takes an image prompt through its real API door; the infotext units restore."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import make_settings, pixels
from diffusers import StableDiffusionPipeline
from PIL import Image
from safetensors import safe_open

from studio import image_prompt, ip_adapter
from studio.cache import ModelCache
from studio.engine.checks import RequestError
from studio.engine.contract import Studio
from studio.engine.restyle import RestyleRequest, restyle
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.modes import BUILTIN
from studio.outputs import Outputs
from studio.restore import Restorer
from studio.tensors import module_tensors

PROMPT = "a tailored wool coat"
FAST = {"num_inference_steps": 2, "seed": 11, "width": 64, "height": 64}


def picture(seed: int, size: tuple[int, int] = (48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def make(studio: Studio, **fields: Any) -> np.ndarray:
    result = txt2img(studio, Txt2ImgRequest(PROMPT, **{**FAST, **fields}))
    return pixels(result.images[0].image)


def test_weight_0_is_no_image_prompt_pixel_for_pixel(studio: Studio) -> None:
    plain = make(studio)
    assert np.array_equal(make(studio, ip_adapter_image=(picture(1),), ip_adapter_scale=(0.0,)), plain)
    # ...and so is the adapted UNet itself at weight 0 (the request above takes the plain path)
    base = studio.cache.base()
    adapted = studio.cache.image_prompt_unet(base.unet, image_prompt.DEFAULT_MODEL)
    pipe = studio.cache.derive(StableDiffusionPipeline, scheduler="DDIM", unet=adapted)
    encoder = studio.cache.slot("image_encoder")
    embeds = ip_adapter.image_embeds([ip_adapter.encode(encoder, picture(1), plus=False)], cfg=True)
    pipe.set_ip_adapter_scale([0.0] * ip_adapter.MAX_IMAGES)
    run = {"num_inference_steps": 2, "output_type": "np", "height": 64, "width": 64}
    out = pipe(PROMPT, generator=torch.Generator().manual_seed(3), ip_adapter_image_embeds=embeds, **run).images
    plain_pipe = studio.cache.derive(StableDiffusionPipeline, scheduler="DDIM")
    expected = plain_pipe(PROMPT, generator=torch.Generator().manual_seed(3), **run).images
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("model", image_prompt.MODELS)
def test_a_weight_changes_the_image_and_no_image_prompt_afterwards_is_unchanged(studio: Studio, model: str) -> None:
    before = make(studio)
    guided = make(studio, ip_adapter_image=(picture(1),), ip_adapter_scale=(0.8,), ip_adapter_model=model)
    assert np.abs(guided - before).max() > 10
    base = studio.cache.base().unet
    assert not any("IPAdapter" in type(p).__name__ for p in base.attn_processors.values())
    assert base.config.encoder_hid_dim_type is None and getattr(base, "encoder_hid_proj", None) is None
    assert np.array_equal(make(studio), before)


def test_two_pictures_weighted_1_and_0_equal_the_first_alone(studio: Studio) -> None:
    alone = make(studio, ip_adapter_image=(picture(1),), ip_adapter_scale=(1.0,))
    mixed = make(studio, ip_adapter_image=(picture(1), picture(2)), ip_adapter_scale=(1.0, 0.0))
    other = make(studio, ip_adapter_image=(picture(1), picture(2)), ip_adapter_scale=(1.0, 0.5))
    assert np.array_equal(mixed, alone)
    assert np.abs(other - alone).max() > 0  # the second picture's weight is wired


def test_the_adapter_costs_exactly_its_own_bytes_and_shares_every_base_weight(fresh_studio: Studio) -> None:
    cache = fresh_studio.cache
    base = cache.base()
    before = cache.resident_bytes()
    adapted = cache.image_prompt_unet(base.unet, "ip-adapter-plus_sd15")
    encoder = cache.slot("image_encoder")
    folder = Path(cache.checkpoint().companions["ip_adapter"]) / ip_adapter.WEIGHTS_SUBFOLDER
    with safe_open(str(folder / ip_adapter.MODELS["ip-adapter-plus_sd15"]), "pt") as file:
        adapter_file = sum(file.get_tensor(key).nbytes for key in file.keys())  # noqa: SIM118
    encoder_bytes = sum(t.nbytes for t in module_tensors(encoder))
    assert cache.resident_bytes() - before == adapter_file + encoder_bytes
    base_storages = {t.untyped_storage().data_ptr() for t in module_tensors(base.unet)}
    for name, tensor in [*adapted.named_parameters(), *adapted.named_buffers()]:
        own = any(part in name for part in ip_adapter.ADAPTER_PARTS)
        assert (tensor.untyped_storage().data_ptr() in base_storages) != own, name


def test_bad_image_prompts_are_refused_in_words(studio: Studio) -> None:
    cases = [
        ({"ip_adapter_image": (picture(1), picture(2)), "ip_adapter_scale": (0.5, 0.5, 0.5)}, "one weight per"),
        ({"ip_adapter_image": (picture(1),), "ip_adapter_scale": (3.0,)}, "between 0 and 2"),
        ({"ip_adapter_image": (picture(1),), "ip_adapter_model": "ip-adapter_sdxl"}, "Choose one of"),
        ({"ip_adapter_image": tuple(picture(i) for i in range(5))}, "at most 4"),
        ({"ip_adapter_image": (b"not an image",)}, "image prompt picture 1"),
    ]
    for fields, words in cases:
        with pytest.raises(RequestError, match=words):
            make(studio, **fields)


def test_units_follow_the_requests_controlnet_units_and_restore(studio: Studio) -> None:
    two = {"ip_adapter_image": (picture(1), picture(2)), "ip_adapter_scale": (0.7, 0.3)}
    made = txt2img(studio, Txt2ImgRequest(PROMPT, **FAST, **two, ip_adapter_model="ip-adapter-plus_sd15"))
    text = made.images[0].infotext
    assert 'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter-plus_sd15, Weight: 0.7' in text
    assert "ControlNet 1: " in text and "Weight: 0.3" in text
    restorer = Restorer(BUILTIN)
    restored = restorer.from_text(text)
    assert restored.mode == "txt2img" and not restored.ignored
    assert restored.values["ip_adapter_scale"] == "0.7, 0.3"
    assert restored.values["ip_adapter_model"] == "ip-adapter-plus_sd15"
    assert "drop them again" in restored.note
    sketch = Image.new("RGB", (64, 64), "white")
    styled = restyle(studio, RestyleRequest(sketch, PROMPT, preprocessor="none", **FAST, **two))
    text = styled.images[0].infotext
    assert "ControlNet 0: " in text and "Module: softedge" not in text.split("ControlNet 1")[1]
    assert "ControlNet 1: " in text and "ControlNet 2: " in text and "Weight: 0.3" in text
    restored = restorer.from_text(text)
    assert restored.mode == "restyle" and restored.values["ip_adapter_scale"] == "0.7, 0.3", restored.ignored
    assert restored.values["preprocessor"] == "none"


def test_an_a1111_png_with_only_image_prompt_units_restores_into_create() -> None:
    text = (
        "a coat\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, "
        'ControlNet 0: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15 [6a3f6166], Weight: 0.8, '
        "Resize Mode: Crop and Resize, Processor Res: 512, Guidance Start: 0, Guidance End: 1, "
        'Pixel Perfect: False, Control Mode: Balanced"'
    )
    restored = Restorer(BUILTIN).from_text(text)
    assert restored.mode == "txt2img" and not restored.ignored
    assert restored.values["ip_adapter_scale"] == "0.8" and restored.values["ip_adapter_model"] == "ip-adapter_sd15"


def test_the_inpainting_unet_gets_its_own_adapter_copy(tiny_dir: Path, tmp_path: Path) -> None:
    """With a 9-channel inpainting UNet, the image prompt adapts a copy of that UNet; the UNet itself is untouched."""
    from studio.engine.inpaint import InpaintRequest, inpaint

    settings = make_settings(tiny_dir, tmp_path, inpaint_model=str(tiny_dir / "inpaint"))
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))
    photo, mask = picture(4, (64, 64)), Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    run = {"mask_image": mask, "prompt": PROMPT, "num_inference_steps": 2, "seed": 3, "mask_blur": 0}
    plain = pixels(inpaint(studio, InpaintRequest(photo, **run)).images[0].image)
    guided = inpaint(studio, InpaintRequest(photo, **run, ip_adapter_image=(picture(1),), ip_adapter_scale=(1.0,)))
    assert np.abs(pixels(guided.images[0].image) - plain).max() > 0 and "ControlNet 0" in guided.images[0].infotext
    own = studio.cache.slot("inpaint_unet")
    assert own.config.in_channels == 9 and studio.cache.image_prompt_unet(own, image_prompt.DEFAULT_MODEL) is not own
    assert not any("IPAdapter" in type(p).__name__ for p in own.attn_processors.values())
    assert np.array_equal(pixels(inpaint(studio, InpaintRequest(photo, **run)).images[0].image), plain)


def test_a_lora_and_an_image_prompt_together(tiny_dir: Path, tmp_path: Path) -> None:
    """The LoRA goes into the style copy of the IP-Adapter copy (derive(prompts=) over it): both act."""
    settings = make_settings(tiny_dir, tmp_path, lora_dir=tiny_dir / "loras")
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))
    guided = {"ip_adapter_image": (picture(1),), "ip_adapter_scale": (0.8,)}
    with_lora = txt2img(studio, Txt2ImgRequest(PROMPT + " <lora:house-florals:1>", **FAST, **guided))
    without = make(studio, **guided)
    assert np.abs(pixels(with_lora.images[0].image) - without).max() > 0
    plain_lora = txt2img(studio, Txt2ImgRequest(PROMPT + " <lora:house-florals:1>", **FAST))
    assert np.abs(pixels(with_lora.images[0].image) - pixels(plain_lora.images[0].image)).max() > 0
    assert "Lora hashes" in with_lora.images[0].infotext and "ControlNet 0" in with_lora.images[0].infotext


# ---- through the real doors: one launched app, each mode's endpoint takes an image prompt ------------------------
@pytest.fixture(scope="module")
def client_and_files(running_app: tuple[str, Studio], tmp_path_factory: pytest.TempPathFactory) -> Any:
    from gradio_client import Client, handle_file

    url, _ = running_app
    folder = tmp_path_factory.mktemp("image-prompt")
    for name, image in {"a": picture(1), "b": picture(2, (30, 60)), "photo": picture(3, (64, 64))}.items():
        image.save(folder / f"{name}.png")
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    mask.save(folder / "mask.png")
    files = {name: handle_file(str(folder / f"{name}.png")) for name in ("a", "b", "photo", "mask")}
    return Client(url, verbose=False), files


MODE_ARGS: dict[str, dict[str, Any]] = {
    "txt2img": {"width": 64, "height": 64},
    "refine": {"strength": 0.5, "loops": 1},
    "textile": {"width": 64, "height": 64, "image": None},
    "inpaint": {"editor": None, "strength": 0.75},
    "restyle": {"preprocessor": "none", "width": 64, "height": 64},
}


@pytest.mark.parametrize("mode", list(MODE_ARGS))
def test_every_mode_takes_an_image_prompt_through_its_api(client_and_files: Any, mode: str) -> None:
    client, files = client_and_files
    inputs = {"image": files["photo"]} if mode in ("refine", "restyle", "inpaint") else {}
    if mode == "inpaint":
        inputs["mask_image"] = files["mask"]
    common = {**MODE_ARGS[mode], **inputs, "prompt": PROMPT, "num_inference_steps": 2, "seed": 5}
    outputs = client.predict(
        **common,
        ip_adapter_image=[files["a"], files["b"]],
        ip_adapter_scale="0.9, 0.4",
        ip_adapter_model="ip-adapter_sd15",
        api_name=f"/{mode}",
    )
    gallery, infotext = outputs[0], outputs[-1 if mode == "textile" else 2]
    first = 1 if mode == "restyle" else 0
    assert f'ControlNet {first}: "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15, Weight: 0.9' in infotext
    assert f"ControlNet {first + 1}: " in infotext and "Weight: 0.4" in infotext
    plain = client.predict(**common, ip_adapter_image=None, ip_adapter_scale="0.6", api_name=f"/{mode}")
    assert "ip-adapter" not in plain[-1 if mode == "textile" else 2]
    assert np.abs(pixels(first_image(gallery)) - pixels(first_image(plain[0]))).max() > 0
    if mode == "inpaint":  # fabric onto a garment: the swatch repaints the brushed region and nothing else
        from studio import masks

        folder = Path(files["photo"]["path"]).parent
        outside = np.asarray(masks.feather(Image.open(folder / "mask.png"), 4)) == 0  # the default mask blur
        assert np.array_equal(pixels(first_image(gallery))[outside], pixels(folder / "photo.png")[outside])


def first_image(gallery: list[Any]) -> str:
    item = gallery[0]
    image = item["image"] if isinstance(item, dict) else item[0]
    return str(image["path"] if isinstance(image, dict) else image)


def test_mismatched_weights_through_the_api_are_a_clear_error(client_and_files: Any) -> None:
    client, files = client_and_files
    with pytest.raises(Exception, match="one weight per picture"):
        client.predict(prompt=PROMPT, num_inference_steps=2, ip_adapter_image=[files["a"], files["b"]],
                       ip_adapter_scale="0.5, 0.5, 0.5", api_name="/txt2img")  # fmt: skip
    with pytest.raises(Exception, match="5 pictures in the image prompt; at most 4"):  # refused before decoding
        client.predict(prompt=PROMPT, num_inference_steps=2, ip_adapter_image=[files["a"]] * 5, api_name="/txt2img")


def test_a_file_that_is_not_a_picture_is_refused_in_words_by_the_api(client_and_files: Any, tmp_path: Path) -> None:
    from gradio_client import handle_file

    client, files = client_and_files
    bad = tmp_path / "swatch.png"
    bad.write_text("not a picture")
    with pytest.raises(Exception, match="image prompt picture 2"):
        client.predict(prompt=PROMPT, num_inference_steps=2, ip_adapter_image=[files["a"], handle_file(str(bad))],
                       api_name="/txt2img")  # fmt: skip


def test_request_fields_are_declared_once() -> None:
    names = {f.name for f in dataclasses.fields(image_prompt.ImagePromptFields)}
    for mode in BUILTIN[:5]:
        assert names <= {f.name for f in dataclasses.fields(mode.request)}, mode.name
        assert set(image_prompt.fields()) <= set(mode.fields(studio_limits())), mode.name


def studio_limits() -> Any:
    from studio.settings import Limits

    return Limits()
