"""Fast drafts: LCM-LoRA sampling that is really applied, in a draft UNet that shares the base weights, and
rendered in full by seed."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import textwrap
import time

import gradio as gr
import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, StableDiffusionPipeline
from gradio_client import Client
from safetensors.torch import load_file

from studio.cache import ModelCache
from studio.engine.checks import RequestError
from studio.engine.contract import Cancelled, Job, Studio
from studio.engine.draft import DraftRequest, draft, draft_choices, render_draft
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.metadata import parse_infotext
from studio.outputs import Outputs
from studio.registry import LCM_LORA, LCM_LORA_FILE
from studio.tiny import install_in_hf_cache
from tests.conftest import REPO, free_port, make_settings, pixels

PROMPT = "photo of a cropped denim jacket, studio light"
PLAIN = Txt2ImgRequest(
    prompt=PROMPT, negative_prompt="blurry", num_inference_steps=2, guidance_scale=7.0, scheduler="Euler", seed=21
)


@pytest.fixture(scope="module")
def drafting(tiny_dir, tmp_path_factory):
    """A studio of its own, and its txt2img output for PLAIN made before any draft was ever run in it."""
    settings = make_settings(tiny_dir, tmp_path_factory.mktemp("draft-outputs"))
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    return studio, pixels(txt2img(studio, PLAIN).paths[0])


def reference_lcm(tiny_dir, with_lora: bool, seed: int, **call):
    """Plain diffusers, as its LCM-LoRA docs use it: from_pretrained + load_lora_weights + LCMScheduler."""
    pipe = StableDiffusionPipeline.from_pretrained(tiny_dir / "base", safety_checker=None)
    pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if with_lora:
        pipe.load_lora_weights(tiny_dir / "lcm_lora", weight_name=LCM_LORA_FILE, adapter_name="lcm")
    return pipe(**call, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def test_draft_is_diffusers_lcm_lora_sampling_and_the_lora_changes_the_image(drafting, tiny_dir):
    studio, _ = drafting
    result = draft(studio, DraftRequest(prompt=PROMPT, seed=7))
    call = dict(prompt=PROMPT, num_inference_steps=4, guidance_scale=1.0, seed=7)
    with_lora, without_lora = reference_lcm(tiny_dir, True, **call), reference_lcm(tiny_dir, False, **call)
    ours = pixels(result.paths[0])
    assert np.array_equal(ours, pixels(with_lora))
    assert np.abs(ours - pixels(without_lora)).mean() > 2  # same seed, scheduler and steps: only the LoRA differs
    params = parse_infotext(result.images[0].infotext).params
    data = (tiny_dir / "lcm_lora" / LCM_LORA_FILE).read_bytes()  # A1111's LoRA hash: the tensors after the header
    file_hash = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little") :]).hexdigest()[:12]
    assert params["Draft"] == "LCM-LoRA" and params["Lora hashes"] == f"lcm_lora: {file_hash}"
    assert (params["Sampler"], params["Steps"], params["CFG scale"], params["Seed"]) == ("LCM", "4", "1.0", "7")


def lora_layers(module: torch.nn.Module) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return sum(isinstance(m, BaseTunerLayer) for m in module.modules())


def test_the_base_unet_never_carries_the_draft_lora_and_non_draft_calls_are_unchanged(drafting):
    """Drafts run a UNet of their own over the same weights: the UNet every other mode runs holds no LoRA layer
    (so nothing to switch off, and no wrapper on its path), and txt2img equals its output from before any draft."""
    studio, before = drafting
    draft(studio, DraftRequest(prompt=PROMPT, num_inference_steps=2, seed=21))
    base, drafting_unet = studio.cache.base().unet, studio.cache.draft_unet()
    assert lora_layers(base) == 0 and lora_layers(drafting_unet) > 0
    shared = dict(drafting_unet.named_parameters())
    for name, weight in base.named_parameters():  # every base weight is the draft UNet's own, not a copy
        key = (
            name
            if name in shared
            else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        )
        assert shared[key].data_ptr() == weight.data_ptr(), name
    assert np.array_equal(pixels(txt2img(studio, PLAIN).paths[0]), before)


def test_an_error_or_cancel_inside_a_draft_leaves_every_mode_as_it_was(drafting):
    studio, before = drafting
    again = DraftRequest(prompt=PROMPT, num_inference_steps=2, seed=3)
    first = pixels(draft(studio, again).paths[0])

    def fail(module, args):
        raise RuntimeError("UNet failed")

    hook = studio.cache.draft_unet().register_forward_pre_hook(fail)
    try:
        with pytest.raises(RuntimeError, match="UNet failed"):
            draft(studio, DraftRequest(prompt=PROMPT, seed=3))
    finally:
        hook.remove()
    job = Job()
    job.cancel.set()
    with pytest.raises(Cancelled):
        draft(studio, again, job)
    assert lora_layers(studio.cache.base().unet) == 0
    assert np.array_equal(pixels(txt2img(studio, PLAIN).paths[0]), before)
    assert np.array_equal(pixels(draft(studio, again).paths[0]), first)


def test_a_compiled_base_gives_the_draft_unet_a_plain_forward(tiny_dir, tmp_path):
    """A compiled forward is bound to the base UNet: the draft UNet must not call it (it would skip the LoRA)."""
    from studio import fastpath

    cache = ModelCache(make_settings(tiny_dir, tmp_path, compile=True))
    base = cache.base().unet
    assert fastpath.is_compiled(base)
    drafting_unet = cache.draft_unet()
    assert not fastpath.is_compiled(drafting_unet) and "forward" not in drafting_unet.__dict__


def test_rendering_a_draft_is_txt2img_with_the_drafts_seed_and_prompt(drafting):
    studio, _ = drafting
    started = time.perf_counter()
    drafts = draft(studio, DraftRequest(prompt=PROMPT, negative_prompt="blurry", seed=40, batch_size=2))
    draft_s = time.perf_counter() - started
    chosen = draft_choices(drafts)[1]
    assert (chosen.seed, chosen.prompt, chosen.negative_prompt) == (41, PROMPT, "blurry")
    full = Txt2ImgRequest(
        prompt="ignored: the draft's prompt wins",
        num_inference_steps=4,
        guidance_scale=7.0,
        scheduler="DPM++ 2M Karras",
        seed=-1,
        batch_size=3,
    )
    started = time.perf_counter()
    rendered = render_draft(studio, chosen, full)
    full_s = time.perf_counter() - started
    plain = txt2img(
        studio,
        Txt2ImgRequest(
            prompt=PROMPT,
            negative_prompt="blurry",
            num_inference_steps=4,
            guidance_scale=7.0,
            scheduler="DPM++ 2M Karras",
            seed=41,
        ),
    )
    assert rendered.seed == 41 and len(rendered.images) == 1
    assert np.array_equal(pixels(rendered.paths[0]), pixels(plain.paths[0]))
    assert not np.array_equal(pixels(rendered.paths[0]), pixels(drafts.paths[1]))
    print(f"\ntiny CPU: 2 drafts (4 LCM steps, CFG 1) {draft_s:.2f} s; 1 full render (4 steps, CFG 7) {full_s:.2f} s")


def test_lora_bytes_are_counted_once_and_exactly(fresh_studio, tiny_dir):
    cache = fresh_studio.cache
    cache.base()
    base_bytes = cache.resident_bytes()
    cache.draft_unet("lcm_lora")
    tensors = load_file(tiny_dir / "lcm_lora" / LCM_LORA_FILE)
    lora_bytes = sum(t.numel() * cache.dtype.itemsize for key, t in tensors.items() if not key.endswith(".alpha"))
    assert cache.resident_bytes() == base_bytes + lora_bytes
    rows = {row.kind: row for row in cache.resident()}
    assert rows["adapter"].param_bytes == lora_bytes and rows["base"].param_bytes == base_bytes
    assert cache.draft_unet("lcm_lora") is cache.draft_unet("lcm_lora")  # built once
    assert cache.resident_bytes() == base_bytes + lora_bytes


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_inference_steps", 25, "1 to 8 steps"),
        ("guidance_scale", 7.0, "between 1 and 2"),
        ("prompt", "  ", "prompt is empty"),
    ],
)
def test_bad_draft_requests_say_what_to_do(studio, field, value, message):
    req = DraftRequest(**{"prompt": PROMPT, field: value})
    with pytest.raises(RequestError, match=message):
        draft(studio, req)


LOAD_BY_HUB_ID = textwrap.dedent("""
    import json, sys
    from studio.cache import ModelCache
    from studio.engine.contract import Studio
    from studio.engine.draft import DraftRequest, draft
    from studio.outputs import Outputs
    from studio.settings import Settings

    settings = Settings.from_env({}, model="sd15", outputs=sys.argv[1], preload=False)
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    result = draft(studio, DraftRequest(prompt="a pleated skirt", num_inference_steps=1, seed=3))
    print(json.dumps({"source": studio.cache.adapter_source(), "path": str(result.paths[0]),
                      "infotext": result.images[0].infotext}))
""")


def test_lcm_lora_loads_by_its_real_hub_id_from_an_offline_cache(drafting, tiny_dir, tmp_path):
    studio, _ = drafting
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
    assert out["source"] == LCM_LORA == "latent-consistency/lcm-lora-sdv1-5"
    assert "lcm-lora-sdv1-5: " in parse_infotext(out["infotext"]).params["Lora hashes"]
    here = draft(studio, DraftRequest(prompt="a pleated skirt", num_inference_steps=1, seed=3))
    assert np.array_equal(pixels(out["path"]), pixels(here.paths[0]))


def test_draft_endpoint_and_render_action_in_the_app(tiny_dir, tmp_path):
    """/draft answers like /txt2img (gallery, seed, infotext); "Render this draft" renders the clicked draft's seed
    and prompt at the form's steps, sampler and CFG."""
    import app

    settings = make_settings(tiny_dir, tmp_path / "outputs", port=free_port())
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    named = {dep.api_name: dep for dep in demo.fns.values() if dep.api_name}
    render = next(dep.fn for dep in demo.fns.values() if getattr(dep.fn, "__name__", "") == "render_chosen")
    assert list(inspect.signature(named["draft"].fn).parameters)[:4] == [
        "prompt",
        "negative_prompt",
        "num_inference_steps",
        "guidance_scale",
    ]
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
        gallery, seed, infotext = client.predict(
            prompt=PROMPT, num_inference_steps=2, seed=9, batch_size=2, api_name="/draft"
        )
        with pytest.raises(Exception, match="multiple of 8"):  # checked by the engine, said in words
            client.predict(prompt=PROMPT, width=100, num_inference_steps=2, api_name="/draft")
        rendered, rendered_seed, _ = client.predict(  # the same draft rendered in full by API, by name
            prompt=PROMPT, negative_prompt="", seed=10, width=64, height=64, num_inference_steps=2,
            guidance_scale=7.0, scheduler="Euler", api_name="/render_draft",
        )  # fmt: skip
    finally:
        demo.close()
    assert seed == 9 and len(gallery) == 2 and parse_infotext(infotext).params["Draft"] == "LCM-LoRA"
    choices = [{"prompt": PROMPT, "negative_prompt": "", "seed": s, "width": 64, "height": 64} for s in (9, 10)]
    with pytest.raises(gr.Error, match="press Draft first"):
        list(render([], None, 2, 7.0, "Euler", request=None))
    *_, (paths, used, info, _, _), (_, _, _, left, chosen) = render(choices, 1, 2, 7.0, "Euler", request=None)
    assert used == 10 and len(paths) == 1 and (left, chosen) == ([], None)
    assert rendered_seed == 10 and np.array_equal(pixels(rendered[0]["image"]), pixels(paths[0]))
    params = parse_infotext(info).params
    assert (params["Seed"], params["Steps"], params["Sampler"], params["Mode"]) == ("10", "2", "Euler", "txt2img")
    assert parse_infotext(info).prompt == PROMPT
