"""Train a style: DreamBooth-LoRA on the tiny checkpoint (CPU, offline): the loss falls on a fixed evaluation batch
while the base weights stay bit-identical, the written kohya LoRA loads through the personal-styles loader, cancel
leaves nothing in the LoRA folder and resume reaches the weights of an uninterrupted run, generation runs while a
training job does, and bad input is answered in words."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image
from safetensors import safe_open

from studio import training
from studio.cache import ModelCache
from studio.engine.contract import Cancelled, Job, Studio
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.errors import RequestError
from studio.outputs import Outputs
from tests.conftest import free_port, make_settings, pixels

TRIGGER = "ohwx"


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: one thread is ~10x faster than two fighting over the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def photos(count: int = 5, seed: int = 0, size: tuple[int, int] = (96, 80)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)) for _ in range(count)]


def settings_for(tiny_dir: Path, root: Path, **extra: object):
    return make_settings(tiny_dir, root / "outputs", lora_dir=root / "loras", embeddings_dir=root / "embeddings",
                         train_dir=root / "training", **{"train_on_cpu": True, **extra})  # fmt: skip


@pytest.fixture(scope="module")
def trainer_studio(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Studio:
    settings = settings_for(tiny_dir, tmp_path_factory.mktemp("train"))
    return Studio(ModelCache(settings), Outputs(settings.outputs))


def request(name: str = "House Jacket", steps: int = 6, **extra: object) -> training.TrainRequest:
    fields: dict[str, object] = {
        "name": name, "trigger": TRIGGER, "images": tuple(photos()), "num_train_steps": steps,
        "learning_rate": 1e-2, "rank": 16, "prior_preservation": False, "train_text_encoder": False,
        "sample_steps": 1, "checkpoint_every": 0, "seed": 7, **extra,
    }  # fmt: skip
    return training.TrainRequest(**fields)  # type: ignore[arg-type]


def weights_hash(*modules: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode() + tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118  # safe_open is no dict


# ---- the method ------------------------------------------------------------------------------------------------------
def test_forty_steps_lower_the_loss_on_a_fixed_batch_and_the_base_weights_stay_bit_identical(trainer_studio):
    base = trainer_studio.cache.base()
    before = weights_hash(base.unet, base.text_encoder, base.vae)
    plan = training.plan(trainer_studio, request(steps=40))
    trainer = training.Trainer(base, plan)
    start = trainer.evaluate()
    assert trainer.evaluate() == start  # the evaluation batch is fixed: same noise, same timesteps
    for step in range(40):
        trainer.step(step)
    end = trainer.evaluate()
    assert end < 0.9 * start, f"loss on the fixed batch went {start:.4f} -> {end:.4f}"
    assert weights_hash(base.unet, base.text_encoder, base.vae) == before
    assert not any(isinstance(m, BaseTunerLayer) for m in base.unet.modules()), "the adapter reached the base UNet"
    assert any(isinstance(m, BaseTunerLayer) for m in trainer.unet.modules())
    shared = {p.data_ptr() for p in base.unet.parameters()}
    assert {p.data_ptr() for n, p in trainer.unet.named_parameters() if "lora_" not in n} <= shared  # no copy


def test_gradient_checkpointing_changes_no_weight_and_stays_off_the_base(trainer_studio):
    """What a GPU run switches on (to fit 512 px in 24 GB) runs here too: the same three steps with and without
    gradient checkpointing end on the very same LoRA weights, and the base UNet is never switched."""
    base = trainer_studio.cache.base()
    plan = training.plan(trainer_studio, request(steps=3))
    weights = []
    for checkpointing in (False, True):
        trainer = training.Trainer(base, plan, checkpointing=checkpointing)
        assert trainer.unet.is_gradient_checkpointing is checkpointing
        for step in range(3):
            trainer.step(step)
        weights.append({name: param.detach().clone() for name, param in trainer.params.items()})
    assert not base.unet.is_gradient_checkpointing
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=0, atol=1e-6, msg=name)


def test_a_half_precision_base_trains_under_autocast(tiny_dir, tmp_path):
    """The GPU's recipe (a bf16 base, float32 LoRA weights, autocast) on the CPU: the loss on the fixed batch falls
    and the base's bf16 weights stay as they were."""
    settings = settings_for(tiny_dir, tmp_path, dtype="bf16")
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    base = studio.cache.base()
    assert base.unet.dtype == torch.bfloat16
    before = weights_hash(base.unet)
    trainer = training.Trainer(base, training.plan(studio, request(steps=20)), checkpointing=True)
    assert trainer.autocast and all(p.dtype == torch.float32 for p in trainer.params.values())
    start = trainer.evaluate()
    for step in range(20):
        trainer.step(step)
    assert trainer.evaluate() < 0.95 * start
    assert weights_hash(base.unet) == before


# ---- the job: result, cancel, resume ---------------------------------------------------------------------------------
def test_the_lora_loads_as_a_personal_style_and_resume_after_cancel_reaches_the_same_weights(trainer_studio):
    folder = Path(trainer_studio.cache.settings.lora_dir)
    whole = training.train(trainer_studio, request("House Jacket", sample_every=3))
    path = folder / "house-jacket.safetensors"
    assert whole.params["LoRA"] == "house-jacket" and path.is_file()
    assert [p.name for p in folder.iterdir()] == [path.name]  # nothing half-written beside it
    # a sample with the trigger word at step 3 and at the end (sampling does not disturb training: see below)
    assert len(whole.images) == 2 and all(g.path.is_file() and TRIGGER in g.infotext for g in whole.images)

    with safe_open(str(path), "pt") as handle:
        meta = handle.metadata()
        keys = list(handle.keys())
    assert json.loads(meta["ss_tag_frequency"]) and TRIGGER in meta["ss_tag_frequency"]
    assert meta["ss_network_dim"] == "16" and meta["ss_steps"] == "6" and meta["ss_base_model_version"] == "sd_v1"
    assert len(json.loads(meta["atelier_image_hashes"])) == 5
    assert all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
               for k in keys)  # fmt: skip

    entry = {e.name: e for e in trainer_studio.cache.styles.loras()}["house-jacket"]
    assert entry.usable and entry.unet and TRIGGER in entry.triggers

    def image(prompt: str) -> np.ndarray:
        req = Txt2ImgRequest(prompt=prompt, num_inference_steps=2, seed=3, batch_size=1)
        return pixels(txt2img(trainer_studio, req).paths[0])

    plain = image(f"a jacket, {TRIGGER}")
    assert np.array_equal(image(f"a jacket, {TRIGGER} <lora:house-jacket:0>"), plain)  # weight 0 is the base
    assert not np.array_equal(image(f"a jacket, {TRIGGER} <lora:house-jacket:1>"), plain)

    # the same training, cancelled after step 3 and run again: it resumes there and ends on the same weights
    job = Job()
    job.on_step = lambda step, total: job.cancel.set() if step == 3 else None
    cancelled = request("Resumed Jacket")
    with pytest.raises(Cancelled):
        training.train(trainer_studio, cancelled, job)
    assert not (folder / "resumed-jacket.safetensors").exists() and [p.name for p in folder.iterdir()] == [path.name]
    checkpoint = training.checkpoint_folder(trainer_studio, training.plan(trainer_studio, cancelled).key)
    assert (checkpoint / "checkpoint.pt").is_file()
    started: list[int] = []
    training.train(trainer_studio, cancelled, on_trainer=lambda t: started.append(t.steps_done))
    assert started == [3] and not checkpoint.exists()
    resumed, reference = lora_tensors(folder / "resumed-jacket.safetensors"), lora_tensors(path)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)

    # a crash (not a cancel) after step 5: the run starts again from the last periodic checkpoint, step 4
    def power_cut(step: int, total: int) -> None:
        if step == 5:
            raise RuntimeError("power cut")

    crashed = request("Crashed Jacket", checkpoint_every=2)
    with pytest.raises(RuntimeError, match="power cut"):
        training.train(trainer_studio, crashed, Job(on_step=power_cut))
    assert not (folder / "crashed-jacket.safetensors").exists()
    started.clear()
    training.train(trainer_studio, crashed, on_trainer=lambda t: started.append(t.steps_done))
    assert started == [4]
    again = lora_tensors(folder / "crashed-jacket.safetensors")
    assert all(torch.equal(again[k], reference[k]) for k in reference)


def test_prior_preservation_and_text_encoder_training_write_a_lora_for_both_that_loads(trainer_studio):
    base = trainer_studio.cache.base()
    before = weights_hash(base.unet, base.text_encoder)
    made: list[training.Trainer] = []
    req = request("Person Look", steps=2, kind="person", prior_preservation=True, train_text_encoder=True,
                  class_images=2)  # fmt: skip
    training.train(trainer_studio, req, on_trainer=made.append)
    [trainer] = made
    assert trainer.class_latents is not None and trainer.class_latents[0].shape[0] == 2  # made by the base itself
    path = Path(trainer_studio.cache.settings.lora_dir) / "person-look.safetensors"
    keys = list(lora_tensors(path))
    assert any(k.startswith("lora_te_text_model_") for k in keys) and any(k.startswith("lora_unet_") for k in keys)
    entry = {e.name: e for e in trainer_studio.cache.styles.loras()}["person-look"]
    assert entry.usable and entry.unet and entry.text
    assert weights_hash(base.unet, base.text_encoder) == before
    assert not any(isinstance(m, BaseTunerLayer) for m in base.text_encoder.modules())
    path.unlink()


def test_a_write_that_fails_leaves_nothing_in_the_lora_folder(trainer_studio, monkeypatch):
    import studio.outputs

    def disk_full(source: object, target: object) -> None:
        raise OSError("disk full")

    folder = Path(trainer_studio.cache.settings.lora_dir)
    monkeypatch.setattr(studio.outputs.os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        training.train(trainer_studio, request("Full Disk", steps=1))
    monkeypatch.undo()
    assert not (folder / "full-disk.safetensors").exists() and not (folder / ".atelier-partial").exists()
    assert not [p for p in folder.iterdir() if not p.name.endswith(".safetensors")]


def test_the_four_kinds_presets_are_the_kinds_defaults() -> None:
    from studio.modes import BUILTIN
    from studio.presets import load_presets
    from studio.settings import Limits

    presets = load_presets(Path(__file__).resolve().parent.parent / "presets", Limits(), BUILTIN)[training.MODE]
    assert sorted(p.values["kind"] for p in presets) == sorted(training.KINDS)
    assert all(p.values == {"kind": p.values["kind"], **training.preset_fields(p.values["kind"])} for p in presets)


# ---- sharing the GPU -------------------------------------------------------------------------------------------------
def test_through_the_api_training_runs_while_txt2img_requests_complete_unchanged_and_cancel_leaves_no_file(
    tiny_dir, tmp_path
):
    from gradio_client import Client, handle_file

    import app

    settings = settings_for(tiny_dir, tmp_path, port=free_port())
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    uploads = []
    for number, photo in enumerate(photos()):
        photo.save(tmp_path / f"photo-{number}.png")
        uploads.append(handle_file(str(tmp_path / f"photo-{number}.png")))
    form = {"images": uploads, "trigger": TRIGGER, "kind": "texture", "captions": "", "learning_rate": 0.01,
            "rank": 16, "resolution": 0, "seed": 7, "prior_preservation": False, "train_text_encoder": False,
            "sample_every": 0, "checkpoint_every": 0, "overwrite": False}  # fmt: skip
    lora_dir = Path(settings.lora_dir)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)

        def generate() -> np.ndarray:
            out = client.predict(prompt="a linen shirt", num_inference_steps=2, seed=11, batch_size=1,
                                 api_name="/txt2img")  # fmt: skip
            return pixels(out[0][0]["image"])

        before = generate()
        busy = client.submit(**form, name="Busy Jacket", num_train_steps=400, api_name="/train_style")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(s.total == 400 and s.step >= 2 for s in running()):
            time.sleep(0.05)
        assert running(), "training did not start"
        during = generate()
        [status] = running()
        assert 2 <= status.step < 400 and not busy.done(), "the training job ended before the generation"
        assert np.array_equal(during, before)
        busy.cancel()
        while time.monotonic() < deadline + 30 and running():
            time.sleep(0.05)
        assert not running() and not list(lora_dir.glob("*.safetensors"))  # cancelled: nothing written

        with pytest.raises(Exception, match="Upload 5 to 30 images"):  # in words, and the app keeps serving
            client.predict(**{**form, "images": uploads[:4]}, name="Few", num_train_steps=3, api_name="/train_style")
        status_text, samples, use = client.predict(**form, name="Door Jacket", num_train_steps=3,
                                                   api_name="/train_style")  # fmt: skip
        assert use.startswith("<lora:door-jacket:") and TRIGGER in use and "3 steps" in status_text
        assert samples and [p.name for p in lora_dir.iterdir()] == ["door-jacket.safetensors"]
        assert {e.name: e for e in studio.cache.styles.loras()}["door-jacket"].usable
    finally:
        demo.close()


def running() -> list[training.Status]:
    return [training.STATUS[key] for key in list(training._RUNNING) if key in training.STATUS]


# ---- bad input -------------------------------------------------------------------------------------------------------
def refused(studio: Studio, req: training.TrainRequest, *words: str) -> str:
    with pytest.raises(RequestError) as info:
        training.plan(studio, req)
    message = str(info.value)
    for word in words:
        assert word in message, message
    return message


def test_bad_input_is_answered_in_words_and_nothing_is_written(trainer_studio, tiny_dir, tmp_path):
    studio = trainer_studio
    refused(studio, request(images=tuple(photos(4))), "5 to 30", "got 4")
    refused(studio, request(images=tuple(photos(31))), "5 to 30", "got 31")
    twice = photos(5)
    refused(studio, request(images=(*twice[:4], twice[1])), "2 and 5", "same picture")
    refused(studio, request(images=(*photos(4), *photos(1, size=(20, 20)))), "20x20", "at least 32")
    huge = Image.new("L", (9000, 5000))
    refused(studio, request(images=(*photos(4), huge)), "9000x5000", "Resize")
    refused(studio, request(trigger="  "), "trigger word")
    message = refused(studio, request(trigger="dress"), "'dress' is already a common word")
    proposed = message.split("such as '")[1].split("'")[0]
    assert training.trigger_problem(studio.cache.base().tokenizer, proposed) is None
    refused(studio, request(name="///"), "name")
    refused(studio, request(captions="one\ntwo"), "one line per image")
    captioned = training.plan(studio, request(name="Captioned", captions="red jacket\nOHWX in blue\n\nlinen\nwool"))
    assert captioned.prompts[:3] == [f"{TRIGGER}, red jacket", "OHWX in blue", f"a photo of {TRIGGER} garment"]
    assert all(image.size == (64, 64) for image in captioned.images)  # centre-cropped to the training size
    assert training.slug("../../etc/Passwd Florals!") == "etc-passwd-florals"

    existing = Path(studio.cache.settings.lora_dir) / "taken.safetensors"
    existing.parent.mkdir(parents=True, exist_ok=True)
    existing.write_bytes(b"x")
    refused(studio, request(name="Taken"), "already in the LoRA folder", "Replace")
    training.plan(studio, request(name="Taken", overwrite=True))
    existing.unlink()

    no_gpu = settings_for(tiny_dir, tmp_path, train_on_cpu=False)
    cpu_only = Studio(ModelCache(no_gpu), Outputs(no_gpu.outputs))
    refused(cpu_only, request(steps=1600), "No GPU", "STUDIO_TRAIN_ON_CPU=1", "1600 steps")
    assert not list(Path(no_gpu.lora_dir).glob("*")) if Path(no_gpu.lora_dir).exists() else True


def test_the_train_form_reads_an_unticked_box_as_off_and_an_emptied_number_as_the_kinds_default():
    """The tab builds its request with `form_request` like every tab: an unticked optional flag is False (not "the
    kind's default"), 0 in a number field is the kind's default, and the uploaded files become the request's tuple."""
    from studio.ui.widgets import form_request

    form = {"kind": "person", "images": ["a.png", "b.png"], "num_train_steps": 0.0, "rank": None, "seed": 3.0}
    off = form_request(training.TrainRequest, {**form, "prior_preservation": False, "train_text_encoder": False})
    on = form_request(training.TrainRequest, {**form, "prior_preservation": True, "train_text_encoder": True})
    person = training.KINDS["person"]
    assert person.prior_preservation and person.train_text_encoder  # so "off" below is the form's, not the kind's
    assert (off.settings()["prior_preservation"], off.settings()["train_text_encoder"]) == (False, False)
    assert (on.settings()["prior_preservation"], on.settings()["train_text_encoder"]) == (True, True)
    assert off.images == ("a.png", "b.png") and off.seed == 3
    assert off.settings()["num_train_steps"] == person.steps and off.settings()["rank"] == person.rank
