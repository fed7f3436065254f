"""Personal styles: LoRAs (kohya and diffusers layouts) and textual-inversion embeddings from the operator's folders,
in every mode, in weight-sharing copies that leave the base modules and plain requests untouched."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

from studio.cache import ModelCache
from studio.engine.checks import RequestError
from studio.engine.contract import Result, Studio
from studio.engine.draft import DraftRequest, draft
from studio.engine.inpaint import InpaintRequest, inpaint
from studio.engine.refine import RefineRequest, refine
from studio.engine.restyle import RestyleRequest, restyle
from studio.engine.textile import TextileRequest, textile
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import format_infotext, parse_infotext, pnginfo, read_parameters
from studio.outputs import Outputs
from studio.restore import Restorer
from studio.styles import StyleLibrary
from tests.conftest import free_port, make_settings, pixels

PROMPT = "a wrap dress, botanical print"
FLORALS, SILHOUETTE = "house-florals", "house-silhouette"  # kohya layout (UNet + text encoder); diffusers (UNet)


def request(prompt: str = PROMPT, negative: str = "blurry", seed: int = 5) -> Txt2ImgRequest:
    return Txt2ImgRequest(prompt=prompt, negative_prompt=negative, num_inference_steps=2, seed=seed, batch_size=1)


def style_settings(tiny_dir: Path, outputs: Path, **extra: object):
    return make_settings(
        tiny_dir, outputs, lora_dir=tiny_dir / "loras", embeddings_dir=tiny_dir / "embeddings", **extra
    )


@pytest.fixture(scope="module")
def styled(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Studio, np.ndarray]:
    """A studio of its own, and its plain txt2img image made before any style was ever loaded in it."""
    settings = style_settings(tiny_dir, tmp_path_factory.mktemp("styles-out"))
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    return studio, pixels(txt2img(studio, request()).paths[0])


def image(studio: Studio, prompt: str, **fields: object) -> np.ndarray:
    return pixels(txt2img(studio, request(prompt, **fields)).paths[0])  # type: ignore[arg-type]


def base_untouched(studio: Studio) -> None:
    base = studio.cache.base()
    for module in (base.unet, base.text_encoder):
        assert not any(isinstance(m, BaseTunerLayer) for m in module.modules()), "a LoRA reached a base module"
    assert base.text_encoder.get_input_embeddings().weight.shape[0] == len(base.tokenizer) == 49408


# ---- the library ----------------------------------------------------------------------------------------------
def addnet_sha256(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()


def test_the_library_lists_every_file_with_a1111_hashes_triggers_previews_or_why_it_cannot_be_used(tiny_dir):
    library = StyleLibrary(tiny_dir / "loras", tiny_dir / "embeddings")
    loras = {e.name: e for e in library.loras()}
    embeddings = {e.name: e for e in library.embeddings()}
    assert set(loras) == {FLORALS, SILHOUETTE, "sdxl-style", "not-a-lora"}
    florals, silhouette = loras[FLORALS], loras[SILHOUETTE]
    assert (
        florals.usable and florals.unet and florals.text and florals.preview == tiny_dir / "loras" / "house-florals.png"
    )
    assert silhouette.usable and silhouette.unet and not silhouette.text and silhouette.preview is None
    assert "house florals" in florals.triggers and silhouette.triggers == ("long silhouette",)
    for entry in (florals, silhouette):  # A1111's Lora hashes: sha256 of the tensor bytes after the header
        assert entry.short_hash == addnet_sha256(entry.path)[:12]
        assert entry.short_hash != hashlib.sha256(entry.path.read_bytes()).hexdigest()[:12]
    assert "SDXL" in loras["sdxl-style"].problem and "not a LoRA" in loras["not-a-lora"].problem
    assert embeddings["houseprint"].vectors == 1 and embeddings["housemodel"].vectors == 3
    assert (
        embeddings["houseprint"].short_hash
        == hashlib.sha256((tiny_dir / "embeddings/houseprint.pt").read_bytes()).hexdigest()[:12]
    )
    assert "SDXL" in embeddings["sdxl-embedding"].problem


def test_a_file_added_while_serving_is_listed_without_a_restart(tiny_dir, tmp_path):
    library = StyleLibrary(tmp_path / "loras", tmp_path / "embeddings")
    assert library.loras() == []
    (tmp_path / "loras").mkdir()
    shutil.copy(tiny_dir / "loras" / f"{SILHOUETTE}.safetensors", tmp_path / "loras" / "new-look.safetensors")
    (tmp_path / "loras" / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    listed = {e.name: e for e in library.loras()}
    assert listed["new-look"].usable and "unreadable" in listed["broken"].problem


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ("dress <lora:no-such-look:1>", "No LoRA named 'no-such-look'"),
        ("dress <lora:../../etc/passwd:1>", "No LoRA named '../../etc/passwd'"),  # a name, never a path
        ("dress <lora:sdxl-style:1>", "SDXL"),
        ("dress <lora:not-a-lora:1>", "not a LoRA"),
        ("dress <lora:house-florals:heavy>", "no number as its weight"),
        ("dress <hypernet:x:1>", "only <lora:NAME:WEIGHT>"),
    ],
)
def test_a_tag_the_studio_cannot_use_is_refused_in_words(styled, prompt, message):
    studio, _ = styled
    with pytest.raises(RequestError, match=message.replace("(", r"\(")):
        txt2img(studio, request(prompt))


# ---- LoRA: weight, composition, reproduction, and nothing left behind ------------------------------------------
def test_lora_weight_0_is_no_lora_more_changes_two_compose_and_a_plain_request_after_is_unchanged(styled):
    studio, before = styled
    assert np.array_equal(image(studio, f"{PROMPT} <lora:{FLORALS}:0>"), before)  # the wrapped copy at scale 0
    florals = image(studio, f"{PROMPT} <lora:{FLORALS}:0.8>")
    silhouette = image(studio, f"{PROMPT} <lora:{SILHOUETTE}:1>")  # diffusers layout
    both = image(studio, f"{PROMPT} <lora:{FLORALS}:0.8> <lora:{SILHOUETTE}:1>")
    assert np.abs(florals - before).max() > 8 and np.abs(silhouette - before).max() > 8
    assert np.abs(both - florals).max() > 8 and np.abs(both - silhouette).max() > 8
    assert np.array_equal(image(studio, f"{PROMPT} <lora:{FLORALS}:0.8>"), florals)  # same request, same image
    assert np.array_equal(image(studio, PROMPT), before)  # after every LoRA request: pixel for pixel
    base_untouched(studio)


def test_a_kohya_lora_reaches_the_text_encoder_too(styled):
    studio, before = styled
    text_only = image(studio, f"{PROMPT} <lora:{FLORALS}:1:0>")  # A1111's te weight 1, UNet weight 0
    assert np.abs(text_only - before).max() > 0
    assert np.array_equal(image(studio, PROMPT), before)


def test_a_tag_in_the_negative_prompt_applies_and_stays_in_the_png(styled):
    studio, before = styled
    result = txt2img(studio, request(PROMPT, negative=f"blurry <lora:{SILHOUETTE}:1>"))
    assert np.abs(pixels(result.paths[0]) - before).max() > 8
    info = parse_infotext(result.images[0].infotext)
    assert info.negative_prompt == f"blurry <lora:{SILHOUETTE}:1>"
    assert info.params["Lora hashes"].startswith(f"{SILHOUETTE}: ")


def test_resident_bytes_grow_by_the_loras_own_tensors_only(styled):
    studio, _ = styled
    image(studio, f"{PROMPT} <lora:{SILHOUETTE}:1>")
    grown = studio.cache.resident_bytes()
    lora_bytes = Path(studio.cache.styles.lora_dir / f"{SILHOUETTE}.safetensors").stat().st_size
    image(studio, f"{PROMPT} <lora:{SILHOUETTE}:0.5>")  # the same LoRA again: nothing more
    assert studio.cache.resident_bytes() == grown
    base = studio.cache.base()
    copy_unet = studio.cache.derive(type(base), prompts={"prompt": f"x <lora:{SILHOUETTE}:1>"}).unet
    assert copy_unet is not base.unet
    shared = {p.data_ptr() for p in base.unet.parameters()}
    own = [p for p in copy_unet.parameters() if p.data_ptr() not in shared]
    assert all("lora_" in n for n, p in copy_unet.named_parameters() if p.data_ptr() not in shared)
    assert 0 < sum(p.numel() * p.element_size() for p in own) <= 2 * lora_bytes


# ---- textual inversion ------------------------------------------------------------------------------------------
def test_an_embeddings_word_changes_the_image_and_a_prompt_without_it_stays_bit_identical(styled):
    studio, before = styled
    single = image(studio, f"{PROMPT}, houseprint")
    multi = image(studio, f"{PROMPT}, housemodel")  # 3 vectors
    assert np.abs(single - before).max() > 0 and np.abs(multi - before).max() > 0
    assert np.array_equal(image(studio, PROMPT), before)
    base = studio.cache.base()
    pipe = studio.cache.derive(type(base), prompts={"prompt": "houseprint"})  # the copies holding the embeddings
    assert pipe.text_encoder is not base.text_encoder and "housemodel_2" in pipe.tokenizer.get_vocab()
    ids = base.tokenizer(PROMPT, padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(ids)[0], base.text_encoder(ids)[0])  # same words, same conditioning
    shared = {p.data_ptr() for p in base.text_encoder.parameters()}
    own = {n: p for n, p in pipe.text_encoder.named_parameters() if p.data_ptr() not in shared}
    assert all(n.endswith("token_embedding.extra") or ".lora_" in n for n in own), sorted(own)  # nothing else
    assert own["embeddings.token_embedding.extra"].shape[0] == 1 + 3  # houseprint's vector, housemodel's three
    base_untouched(studio)


def test_the_png_records_lora_and_ti_hashes_as_a1111_writes_them(styled):
    studio, _ = styled
    prompt = f"{PROMPT}, houseprint <lora:{FLORALS}:0.7>"
    [saved] = txt2img(studio, request(prompt)).images
    library = studio.cache.styles
    info = parse_infotext(read_parameters(Image.open(saved.path)))
    hashes = {e.name: e.short_hash for e in library.entries()}
    assert info.prompt == prompt  # the tag stays in the prompt
    assert info.params["Lora hashes"] == f"{FLORALS}: {hashes[FLORALS]}"
    assert info.params["TI hashes"] == f"houseprint: {hashes['houseprint']}"


# ---- every mode -------------------------------------------------------------------------------------------------
def colourful(size: int = 64) -> Image.Image:
    y, x = np.mgrid[0:size, 0:size] * (255 / (size - 1))
    return Image.fromarray(np.stack([x, y, 255 - (x + y) / 2], -1).round().astype(np.uint8))


def box_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (16, 16, 48, 48))
    return mask


MODES = {
    "refine": lambda s, p: refine(
        s, RefineRequest(image=colourful(), prompt=p, strength=0.6, num_inference_steps=3, guidance_scale=1.0, seed=3)
    ),  # fmt: skip
    "textile": lambda s, p: textile(s, TextileRequest(p, num_inference_steps=2, guidance_scale=1.0, seed=3)),
    "inpaint": lambda s, p: inpaint(
        s, InpaintRequest(image=colourful(), mask_image=box_mask(), prompt=p, num_inference_steps=2, seed=3)
    ),  # fmt: skip
    "restyle": lambda s, p: restyle(s, RestyleRequest(image=colourful(), prompt=p, num_inference_steps=2, seed=3)),
    "draft": lambda s, p: draft(s, DraftRequest(prompt=p, seed=3)),
}


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_accepts_a_lora_tag_and_records_its_hash(styled, mode):
    studio, _ = styled
    plain = MODES[mode](studio, PROMPT)
    styled_result = MODES[mode](studio, f"{PROMPT} <lora:{FLORALS}:1>")
    first, second = plain.images[-1], styled_result.images[-1]
    assert np.abs(pixels(second.path) - pixels(first.path)).max() > 0, f"{mode}: the LoRA changed nothing"
    hashes = parse_infotext(second.infotext).params["Lora hashes"]
    assert f"{FLORALS}: " in hashes
    again = MODES[mode](studio, PROMPT)
    assert np.array_equal(pixels(again.images[-1].path), pixels(first.path)), f"{mode}: plain changed after LoRA"


# ---- batching: only requests with equal styles share a call ----------------------------------------------------
def test_concurrent_requests_are_batched_only_with_equal_loras_and_weights(styled, monkeypatch):
    import threading

    from studio import batching

    studio, _ = styled
    calls: list[set[str]] = []

    def many(studio_, requests, jobs, on_done=None):  # records who shares a call; nothing is generated
        calls.append({r.prompt for r in requests})
        for index in range(len(requests)):
            on_done(index, Result([], 0, {}))

    def alone(studio_, req, job=None):
        calls.append({req.prompt})
        return Result([], 0, {})

    monkeypatch.setattr(batching, "txt2img_many", many)
    monkeypatch.setattr(batching, "txt2img", alone)
    batcher = batching.Txt2ImgBatcher(studio, window_ms=1500, max_images=8)
    prompts = [f"a <lora:{FLORALS}:1>", f"b <lora:{FLORALS}:1>", f"c <lora:{FLORALS}:0.5>", "d", "e houseprint"]
    threads = [threading.Thread(target=batcher, args=(request(p),)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(sorted, calls)) == sorted(map(sorted, [prompts[:2], [prompts[2]], [prompts[3]], [prompts[4]]]))


# ---- restore ----------------------------------------------------------------------------------------------------
A1111_PROMPT = "a wrap dress, florals_v2 <lora:florals_v2:0.8> <lora:old-look:0.5>, hp-emb"
RESTORED_PROMPT = f"a wrap dress, florals_v2 <lora:{FLORALS}:0.8> <lora:old-look:0.5>, houseprint"


def a1111_png(library: StyleLibrary, path: Path) -> Path:
    """A PNG as A1111 1.10 writes it, whose LoRA and embedding have other names there than here (and one LoRA
    this studio does not have)."""
    hashes = {e.name: e.short_hash for e in library.entries()}
    params = {  # Lora hashes / TI hashes after Model, as A1111 writes them
        "Steps": 20, "Sampler": "DPM++ 2M", "Schedule type": "Karras", "CFG scale": 7, "Seed": 42, "Size": "64x64",
        "Model hash": "6ce0161689", "Model": "v1-5-pruned-emaonly",
        "Lora hashes": f"florals_v2: {hashes[FLORALS]}, old-look: 0123456789ab, lcm-lora-sdv1-5: 00ff00ff00ff",
        "TI hashes": f"hp-emb: {hashes['houseprint']}", "Version": "v1.10.1",
    }  # fmt: skip
    colourful().save(path, pnginfo=pnginfo(format_infotext(A1111_PROMPT, "blurry", params)))
    return path


def test_an_a1111_png_restores_its_loras_by_hash_and_names_the_missing_ones(styled, tmp_path):
    studio, _ = styled
    restored = Restorer_for(studio).from_png(a1111_png(studio.cache.styles, tmp_path / "a1111.png"))
    assert restored.values["prompt"] == RESTORED_PROMPT
    assert "old-look (0123456789ab)" in restored.note and "Missing" in restored.note
    assert "lcm-lora" not in restored.note  # recorded but never tagged (a draft's adapter): nothing to select
    assert "Lora hashes" not in restored.ignored and "TI hashes" not in restored.ignored


def Restorer_for(studio: Studio) -> Restorer:  # noqa: N802  # reads like the class it builds
    from studio.modes import BUILTIN

    return Restorer(BUILTIN, studio.limits, studio.cache.styles)


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    import app

    settings = style_settings(tiny_dir, tmp_path_factory.mktemp("styles-app"), port=free_port())
    demo = app.build_demo(app.create_studio(settings))
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
    finally:
        demo.close()


def test_txt2img_with_a_lora_tag_through_the_api_and_pngs_restore_through_restore(served, tiny_dir, tmp_path):
    library = StyleLibrary(tiny_dir / "loras", tiny_dir / "embeddings")
    prompt = f"a wrap dress <lora:{FLORALS}:0.6>, houseprint"
    gallery, seed, infotext = served.predict(prompt=prompt, num_inference_steps=2, seed=9, api_name="/txt2img")
    params = parse_infotext(infotext).params
    assert params["Lora hashes"].startswith(f"{FLORALS}: ") and params["TI hashes"].startswith("houseprint: ")
    mode, values, note = served.predict(png=handle_file(gallery[0]["image"]), api_name="/restore")
    assert (mode, values["prompt"]) == ("txt2img", prompt), note
    assert "Styles found by hash" in note
    mode, values, note = served.predict(png=handle_file(a1111_png(library, tmp_path / "a.png")), api_name="/restore")
    assert (mode, values["prompt"]) == ("txt2img", RESTORED_PROMPT) and "old-look (0123456789ab)" in note
    with pytest.raises(Exception, match="No LoRA named 'nowhere'"):
        served.predict(prompt="coat <lora:nowhere:1>", num_inference_steps=2, api_name="/txt2img")


# ---- ZeroGPU: every style is loaded before serving ---------------------------------------------------------------
def test_on_zero_gpu_every_lora_and_embedding_is_loaded_before_serving(tiny_dir, tmp_path, monkeypatch):
    from studio import style_modules
    from studio.modes import BUILTIN
    from studio.zerogpu import preload_everything

    settings = style_settings(tiny_dir, tmp_path / "out", zero_gpu=True, batch_window_ms=0)
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    preload_everything(studio, [c for m in BUILTIN for c in m.companions])

    def no_loading(*args: object) -> None:
        raise AssertionError("a LoRA was loaded after serving began (a forked worker would lose it)")

    monkeypatch.setattr(style_modules, "_load", no_loading)
    both = f"{PROMPT}, housemodel <lora:{FLORALS}:0.7> <lora:{SILHOUETTE}:0.5>"
    assert txt2img(studio, request(both)).images and draft(studio, DraftRequest(prompt=both, seed=1)).images
    base_untouched(studio)


# ---- the picker -------------------------------------------------------------------------------------------------
def test_the_picker_inserts_a_lora_tag_or_an_embeddings_word_and_lists_the_unusable_with_reasons(tiny_dir):
    from studio.ui.styles_picker import insert, thumbnail, unusable_note

    library = StyleLibrary(tiny_dir / "loras", tiny_dir / "embeddings")
    entries = {e.name: e for e in library.entries()}
    florals, model = entries[FLORALS], entries["housemodel"]
    assert insert("a dress", florals, 0.8) == f"a dress <lora:{FLORALS}:0.8>"
    assert insert(f"a dress <lora:{FLORALS}:0.8>, red", florals, 0.5) == f"a dress <lora:{FLORALS}:0.5>, red"
    assert insert("a dress", model, 1.0) == "a dress, housemodel" and insert("", model, 1.0) == "housemodel"
    note = unusable_note(library.entries())
    assert "sdxl-style.safetensors: made for SDXL" in note and "not-a-lora.safetensors: not a LoRA" in note
    assert thumbnail(florals).size == (32, 32) and thumbnail(entries[SILHOUETTE]) is None


def test_every_tab_with_a_prompt_has_the_picker(served):
    labels = [c.get("props", {}).get("label") for c in served.config["components"]]
    assert labels.count("Styles: LoRAs and embeddings") == 5  # txt2img, Refine, Textile, Inpaint, Restyle
