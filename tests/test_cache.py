"""The shared model cache: real loading path by hub id offline, no duplicated weights, rollback on failure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from diffusers import (
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
)

from studio.cache import ModelCache, ModelLoadError
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.tensors import unique_param_bytes
from studio.tiny import install_in_hf_cache
from tests.conftest import REPO, make_settings, pixels

LOAD_BY_HUB_ID = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numpy as np
    from studio.cache import ModelCache, ModelLoadError
    from studio.engine.contract import Studio
    from studio.engine.txt2img import Txt2ImgRequest, txt2img
    from studio.outputs import Outputs
    from studio.settings import Settings

    out = {}
    for model in ("sd15", "dreamlike-art/dreamlike-photoreal-2.0"):
        settings = Settings.from_env({}, model=model, outputs=sys.argv[1], preload=False)
        studio = Studio(ModelCache(settings), Outputs(settings.outputs))
        result = txt2img(studio, Txt2ImgRequest(prompt="a pleated skirt", num_inference_steps=2, seed=3))
        out[model] = {"path": str(result.paths[0]), "source": studio.cache.checkpoint().source,
                      "controlnet": type(studio.cache.slot("controlnet")).__name__,
                      "annotator": type(studio.cache.slot("annotator")).__name__,
                      "preview": type(studio.cache.preview_decoder()).__name__}
    # the further ControlNets and annotators, and an image prompt through h94/IP-Adapter, by their real ids
    from PIL import Image

    from studio.registry import ANNOTATOR_FILES, CONTROL_COMPANIONS
    studio = Studio(ModelCache(Settings.from_env({}, model="sd15", outputs=sys.argv[1], preload=False)),
                    Outputs(sys.argv[1]))
    out["further"] = {slot: type(studio.cache.slot(slot)).__name__ for slot in (*CONTROL_COMPANIONS, *ANNOTATOR_FILES)}
    swatch = Image.new("RGB", (64, 64), (180, 40, 90))
    result = txt2img(studio, Txt2ImgRequest(prompt="a pleated skirt", num_inference_steps=2, seed=3,
                                            ip_adapter_image=(swatch,), ip_adapter_scale=(0.8,)))
    out["image_prompt"] = result.images[0].infotext
    settings = Settings.from_env({}, model="some-org/missing-model", outputs=sys.argv[1], preload=False)
    try:
        ModelCache(settings).base()
    except ModelLoadError as exc:
        out["missing"] = str(exc)
    print(json.dumps(out))
""")


def test_models_load_by_real_hub_id_from_an_offline_cache(studio, tiny_dir, tmp_path):
    """The production loading path (`from_pretrained("org/name")`) runs against a Hugging Face cache holding the
    tiny twins under the real ids, with HF_HUB_OFFLINE=1 (in a subprocess: the hub cache path is read at import)."""
    install_in_hf_cache(tiny_dir, tmp_path / "hub")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_BY_HUB_ID, str(tmp_path / "out")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    reference = txt2img(studio, Txt2ImgRequest(prompt="a pleated skirt", num_inference_steps=2, seed=3)).paths[0]
    for model in ("sd15", "dreamlike-art/dreamlike-photoreal-2.0"):
        assert np.array_equal(pixels(out[model]["path"]), pixels(reference))
        assert out[model]["controlnet"] == "ControlNetModel" and out[model]["annotator"] == "HEDdetector"
        assert out[model]["preview"] == "AutoencoderTiny"  # madebyollin/taesd, found in the cache
    assert out["sd15"]["source"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert out["further"] == {"controlnet_lineart": "ControlNetModel", "controlnet_canny": "ControlNetModel",
                              "controlnet_openpose": "ControlNetModel", "annotator_lineart": "LineartDetector",
                              "annotator_openpose": "OpenposeDetector"}  # fmt: skip
    assert "Module: ip-adapter_clip_sd15, Model: ip-adapter_sd15, Weight: 0.8" in out["image_prompt"]
    missing = out["missing"]
    assert "some-org/missing-model" in missing and "--model tiny" in missing and "download" in missing


def test_derived_pipelines_share_every_weight_with_the_base_in_its_own_dtype(tiny_dir, tmp_path):
    """On a bf16 base: `from_pipe` converts the modules it is given to its `torch_dtype` (fp32 unless told), in
    place, and they are the base's very modules, so a derivation without the base's dtype would turn the resident
    base itself to fp32 (and double its memory). An fp32 base could not show that: fp32 is from_pipe's default."""
    cache = ModelCache(make_settings(tiny_dir, tmp_path, dtype="bf16"))
    base = cache.base()
    base_bytes = unique_param_bytes(base)
    modules = {name: m for name, m in base.components.items() if isinstance(m, torch.nn.Module)}
    assert {name: m.dtype for name, m in modules.items()} == dict.fromkeys(modules, torch.bfloat16)
    controlnet = cache.slot("controlnet")
    assert controlnet.dtype == torch.bfloat16
    derived = [
        cache.derive(StableDiffusionImg2ImgPipeline, scheduler="Euler a"),
        cache.derive(StableDiffusionInpaintPipeline, scheduler="DDIM"),
        cache.derive(StableDiffusionControlNetPipeline, scheduler="UniPC", controlnet=controlnet),
    ]
    for pipe in derived:
        own = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
        assert own.keys() - {"controlnet"} == modules.keys()
        for name, module in own.items():
            assert module is (controlnet if name == "controlnet" else modules[name]), name  # the very same module
            assert module.dtype == torch.bfloat16, (type(pipe).__name__, name, module.dtype)
        assert pipe.dtype == torch.bfloat16
        assert pipe.scheduler is not base.scheduler  # each run gets its own scheduler state
    assert {name: m.dtype for name, m in modules.items()} == dict.fromkeys(modules, torch.bfloat16)  # base unchanged
    assert unique_param_bytes(base, *derived) == base_bytes + unique_param_bytes(controlnet)
    assert cache.resident_bytes() == base_bytes + unique_param_bytes(controlnet)


def test_failed_switch_keeps_the_previous_model_serving(fresh_studio):
    req = Txt2ImgRequest(prompt="a denim jacket", num_inference_steps=2, seed=11)
    before = pixels(txt2img(fresh_studio, req).paths[0])
    with pytest.raises(ModelLoadError, match="some-org/not-there.*--model tiny"):
        fresh_studio.cache.switch("some-org/not-there")
    assert fresh_studio.cache.current == "tiny"
    assert [r.name for r in fresh_studio.cache.resident()] == ["tiny"]
    assert np.array_equal(pixels(txt2img(fresh_studio, req).paths[0]), before)


def test_loading_the_resident_model_again_returns_early(fresh_studio):
    first = fresh_studio.cache.base()
    assert fresh_studio.cache.base("tiny") is first
    assert fresh_studio.cache.switch("tiny").name == "tiny"
    assert fresh_studio.cache.base() is first


def test_unknown_model_reference_says_what_is_accepted(fresh_studio):
    with pytest.raises(ModelLoadError, match="not a known name"):
        fresh_studio.cache.switch("no such model!")


def test_each_request_gets_a_fresh_scheduler_over_the_same_modules_without_deriving_again(fresh_studio, monkeypatch):
    cache = fresh_studio.cache
    base = cache.base()
    made: list[type] = []
    real = StableDiffusionImg2ImgPipeline.from_pipe.__func__  # type: ignore[attr-defined]

    def counting(cls: type, *args: object, **kwargs: object) -> object:
        made.append(cls)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "from_pipe", classmethod(counting))
    first = cache.derive(StableDiffusionImg2ImgPipeline, scheduler="Euler")
    second = cache.derive(StableDiffusionImg2ImgPipeline, scheduler="DDIM")
    assert made == [StableDiffusionImg2ImgPipeline]  # built once; every later request reuses it
    assert first is not second and first.scheduler is not second.scheduler
    assert (
        type(first.scheduler).__name__ == "EulerDiscreteScheduler"
        and type(second.scheduler).__name__ == "DDIMScheduler"
    )
    assert first.unet is second.unet is base.unet and first.vae is base.vae and first.text_encoder is base.text_encoder
    assert base.scheduler is not first.scheduler  # the base's own scheduler is never handed out
    first._guidance_scale = 99.0  # what a pipeline call sets on itself stays on that request's pipeline
    assert getattr(cache.derive(StableDiffusionImg2ImgPipeline, scheduler="Euler"), "_guidance_scale", None) != 99.0
