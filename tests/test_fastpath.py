"""The GPU fast path, checked on CPU: it is applied once per load, changes no image beyond float rounding, keeps
compiled graphs across mode switches and tiling contexts, and rescues fp16 VAE decodes that overflow."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
from torch._dynamo.testing import CompileCounter, CompileCounterWithBackend

from studio import fastpath
from studio.cache import ModelCache
from studio.engine.contract import Studio
from studio.engine.refine import RefineRequest, refine
from studio.engine.textile import TextileRequest, textile
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.outputs import Outputs
from studio.settings import Settings, SettingsError
from tests.conftest import make_settings, pixels

PROMPT = "a quilted jacket in navy nylon"
REQ = Txt2ImgRequest(PROMPT, num_inference_steps=3, seed=5, scheduler="Euler a")


def channels_last(module: torch.nn.Module) -> bool:
    return all(p.is_contiguous(memory_format=torch.channels_last) for p in module.parameters() if p.ndim == 4)


def test_fast_path_settings_come_from_the_environment_and_bad_values_are_refused():
    settings = Settings.from_env({"STUDIO_COMPILE": "1", "STUDIO_CHANNELS_LAST": "off", "STUDIO_PREVIEW_EVERY": "3"})
    assert (settings.compile, settings.channels_last, settings.preview_every) == (True, "off", 3)
    defaults = Settings.from_env({})
    assert (defaults.compile, defaults.channels_last) == (False, "auto")
    assert fastpath.wants_channels_last("auto", torch.device("cuda")) and not fastpath.wants_channels_last(
        "auto", torch.device("cpu")
    )
    with pytest.raises(SettingsError, match="CHANNELS_LAST"):
        Settings.from_env({"STUDIO_CHANNELS_LAST": "maybe"})
    with pytest.raises(SettingsError, match="PREVIEW_EVERY"):
        Settings.from_env({"STUDIO_PREVIEW_EVERY": "-1"})


def test_loading_applies_channels_last_and_compile_to_base_and_controlnet_once(tiny_dir: Path, tmp_path: Path):
    settings = make_settings(tiny_dir, tmp_path, channels_last="on", compile=True, controlnet_model="tiny")
    cache = ModelCache(settings)
    process_limit = torch._dynamo.config.recompile_limit
    pipe = cache.base()
    assert channels_last(pipe.unet) and channels_last(pipe.vae) and fastpath.is_compiled(pipe.unet)
    assert not fastpath.compile_module(pipe.unet)  # once: a second request finds it compiled
    assert torch._dynamo.config.recompile_limit == process_limit  # the modules get theirs; the process keeps its own
    controlnet = cache.slot("controlnet")
    assert channels_last(controlnet) and fastpath.is_compiled(controlnet)
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {AttnProcessor2_0}
    plain = ModelCache(make_settings(tiny_dir, tmp_path / "plain")).base()  # CPU defaults: the plain path
    assert not channels_last(plain.unet) and not fastpath.is_compiled(plain.unet)


def test_ensure_sdpa_replaces_only_the_classic_attention_processor(tiny_dir: Path):
    unet = UNet2DConditionModel.from_pretrained(tiny_dir / "base", subfolder="unet")
    names = list(unet.attn_processors)
    custom = SlicedAttnProcessor(slice_size=2)  # any non-classic processor (as LoRA or IP-Adapter bring)
    unet.set_attn_processor({n: custom if i == 0 else AttnProcessor() for i, n in enumerate(names)})
    assert fastpath.ensure_sdpa(unet) == len(names) - 1
    processors = unet.attn_processors
    assert processors[names[0]] is custom and all(type(processors[n]) is AttnProcessor2_0 for n in names[1:])
    assert fastpath.ensure_sdpa(unet) == 0


class Affine(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 + 1


@pytest.mark.parametrize(("process_limit", "ours", "graphs"), [(2, 5, 5), (5, 3, 5)])
def test_a_compiled_module_gets_its_own_recompile_limit_and_the_process_keeps_its_own(
    monkeypatch, process_limit, ours, graphs
):
    """Dynamo checks the limit when a guard fails on a later call, long after `compile_module` returned: the
    module's own limit must hold then, and the process-wide one must stay what it was. A higher process-wide limit
    is kept. A two-line module, static shapes (each new shape a recompile) and dynamo's frame counter as the
    backend: capture only, no code generation, well under a second."""
    monkeypatch.setattr(fastpath, "RECOMPILE_LIMIT", ours)
    counter, module = CompileCounter(), Affine()
    with torch._dynamo.config.patch(recompile_limit=process_limit, automatic_dynamic_shapes=False):
        torch._dynamo.reset()
        try:
            assert fastpath.compile_module(module, backend=counter)
            assert torch._dynamo.config.recompile_limit == process_limit  # nothing set process-wide
            for rows in range(1, 8):  # seven shapes: more graphs than either limit allows
                assert torch.equal(module(torch.ones(rows, 2)), torch.full((rows, 2), 3.0))
            assert counter.frame_count == graphs  # max(process, ours) graphs, then eager (still the right values)
            assert torch._dynamo.config.recompile_limit == process_limit
        finally:
            torch._dynamo.reset()


# ---- torch.compile + channels-last on the tiny studio ----------------------------------------------------------
def compiled_studio(settings: Settings, backend: object, memory_format: torch.memory_format) -> Studio:
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))
    torch._dynamo.reset()  # no graph cached by an earlier test
    fastpath.compile_module(studio.cache.base().unet, backend=backend, memory_format=memory_format)
    return studio


@pytest.fixture
def fast(tiny_dir: Path, tmp_path: Path) -> tuple[Studio, CompileCounterWithBackend]:
    """A studio with channels-last on and its UNet compiled with `aot_eager` (dynamo capture, AOT autograd and
    decompositions, run by eager kernels): inductor's C++ code generation for the tiny UNet takes minutes on two
    CPU cores. The counter records each frame dynamo compiles."""
    counter = CompileCounterWithBackend("aot_eager")
    settings = make_settings(tiny_dir, tmp_path, channels_last="on")
    return compiled_studio(settings, counter, torch.channels_last), counter


@pytest.fixture
def counted(tiny_dir: Path, tmp_path: Path) -> tuple[Studio, CompileCounter]:
    """A default studio whose UNet is compiled with dynamo's frame counter as the backend: recompiles are decided by
    dynamo's guards, whatever the backend, and this one adds no compile time of its own."""
    counter = CompileCounter()
    return compiled_studio(make_settings(tiny_dir, tmp_path), counter, torch.contiguous_format), counter


@pytest.mark.slow  # dynamo traces the tiny UNet: ~20-40 s each on two cores
def test_compiled_channels_last_txt2img_equals_the_default_within_float_rounding(studio: Studio, fast):
    fast_studio, counter = fast
    default = pixels(txt2img(studio, REQ).paths[0])
    compiled = pixels(txt2img(fast_studio, REQ).paths[0])
    assert counter.frame_count >= 1 and channels_last(fast_studio.cache.base().unet)  # the fast path really ran
    assert np.abs(default - compiled).max() <= 2  # 8-bit PNG pixels: rounding of last float bits
    other_seed = pixels(
        txt2img(studio, Txt2ImgRequest(PROMPT, num_inference_steps=3, seed=6, scheduler="Euler a")).paths[0]
    )
    assert np.abs(default - other_seed).max() > 20  # a tolerance that would hide a different image fails


@pytest.mark.slow  # dynamo traces the tiny UNet: ~20-40 s each on two cores
def test_compiled_unet_survives_mode_switches_and_compiles_once_per_tiling_repeat(counted):
    studio, counter = counted
    txt2img(studio, REQ)
    plain = counter.frame_count
    source = txt2img(studio, REQ).paths[0]
    assert counter.frame_count == plain  # a repeat in the same mode: no recompile
    # another tab: img2img latents in another memory layout, and DPM++'s int64 timesteps (Euler's are float)
    refine(studio, RefineRequest(source, prompt=PROMPT, strength=0.7, num_inference_steps=3, seed=5))
    assert counter.frame_count == plain  # the same shared UNet, given uniform inputs: no recompile
    tile = TextileRequest(PROMPT, repeat="full", width=64, height=64, num_inference_steps=2, seed=5)
    textile(studio, tile)
    wrapped = counter.frame_count
    assert wrapped > plain  # the wrapped convs' instance `forward`s fail dynamo's guards: one more compile
    txt2img(studio, REQ)
    textile(studio, tile)
    assert counter.frame_count == wrapped  # both graphs are cached: leaving and re-entering tiling is free


# ---- fp16: NaN-safe VAE decode --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def overflowing_vae(tiny_dir: Path) -> AutoencoderKL:
    """The tiny VAE with a decoder input layer so large that fp16 activations overflow while fp32 ones do not
    (the decoder's group norms bring them back), as real SD VAEs do on some latents."""
    vae = AutoencoderKL.from_pretrained(tiny_dir / "base", subfolder="vae")
    with torch.no_grad():
        vae.decoder.conv_in.weight.mul_(1e5)
        vae.decoder.conv_in.bias.mul_(1e5)
    return vae


LATENTS = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def test_an_fp16_decode_that_overflows_is_decoded_again_in_fp32(overflowing_vae: AutoencoderKL, caplog):
    reference = overflowing_vae.decode(LATENTS).sample
    half = copy.deepcopy(overflowing_vae).to(torch.float16)
    assert not torch.isfinite(half.decode(LATENTS.half()).sample).all()  # the failure the guard exists for
    assert fastpath.guard_fp16_decode(half) and not fastpath.guard_fp16_decode(half)  # once per VAE
    with caplog.at_level(logging.WARNING, logger="studio.fastpath"):
        guarded = half.decode(LATENTS.half()).sample
    assert "decoding again in fp32" in caplog.text
    assert guarded.dtype == torch.float16 and torch.allclose(guarded.float(), reference, atol=5e-3)
    assert {p.dtype for p in half.parameters()} == {torch.float16}  # the decoder went back to fp16


@torch.no_grad()
def test_nan_latents_are_reported_and_not_retried(tiny_dir: Path, caplog):
    half = AutoencoderKL.from_pretrained(tiny_dir / "base", subfolder="vae", torch_dtype=torch.float16)
    fastpath.guard_fp16_decode(half)
    latents = LATENTS.half().clone()
    latents[0, 0, 0, 0] = float("nan")
    finite = half.decode(LATENTS.half()).sample
    with caplog.at_level(logging.WARNING, logger="studio.fastpath"):
        assert torch.isfinite(finite).all() and not caplog.text  # healthy decodes pass through untouched
        half.decode(latents)
    assert "not finite" in caplog.text and "decoding again" not in caplog.text


def test_fp16_models_get_the_decode_guard_and_others_do_not(tiny_dir: Path, tmp_path: Path):
    fp16 = ModelCache(make_settings(tiny_dir, tmp_path / "a", dtype="fp16")).base()
    fp32 = ModelCache(make_settings(tiny_dir, tmp_path / "b")).base()
    assert getattr(fp16.vae.decoder, fastpath._FP32_RETRY, None) is not None
    assert getattr(fp32.vae.decoder, fastpath._FP32_RETRY, None) is None
