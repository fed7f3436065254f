"""Studio txt2img vs plain diffusers, same checkpoint, same process, alternating runs; medians and ratios.

    .venv/bin/python benchmarks/bench_txt2img.py                # tiny checkpoint + SD1.5 architecture at 256 px
    .venv/bin/python benchmarks/bench_txt2img.py --skip-full    # tiny only (seconds)
    .venv/bin/python benchmarks/bench_txt2img.py --device cuda --full-size 512 --steps 25   # on a GPU

1. Whole-request time on the tiny checkpoint: `studio.engine.txt2img` (validation, seed handling, metadata, atomic
   PNG save included) vs `StableDiffusionPipeline.__call__` alone. Target ratio <= 1.05.
2. UNet step time of the full SD1.5 architecture (random weights from configs: weights do not change speed) at
   256 px on CPU, through the studio's derived pipeline and through a plain pipeline holding the same modules.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from diffusers import StableDiffusionPipeline  # noqa: E402

from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Job, Studio  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest, txt2img  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.schedulers import get_sampler  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tiny import write_all  # noqa: E402

PROMPT = "photo of a tailored wool coat, studio light"


def alternate(runs: int, first: Callable[[], Any], second: Callable[[], Any]) -> tuple[float, float]:
    """Median seconds of each callable, run alternately (after one warm-up each) so drift hits both alike."""
    first(), second()
    a: list[float] = []
    b: list[float] = []
    for _ in range(runs):
        for fn, sink in ((first, a), (second, b)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)


def studio_on(model_dir: Path, device: str) -> Studio:
    out = Path(tempfile.mkdtemp(prefix="bench-"))
    settings = Settings.from_env({}, model=str(model_dir), outputs=out, preload=False, device=device)
    return Studio(cache=ModelCache(settings), outputs=Outputs(out))


def plain_call(pipe: StableDiffusionPipeline, size: int, steps: int, on_step: Callable | None = None) -> Any:
    callback = (lambda p, i, t, kw: (on_step(), kw)[1]) if on_step else None
    return pipe(
        PROMPT,
        num_inference_steps=steps,
        guidance_scale=7.0,
        width=size,
        height=size,
        generator=torch.Generator("cpu").manual_seed(1),
        callback_on_step_end=callback,
    )


def bench_tiny(runs: int, steps: int, device: str) -> None:
    tiny = write_all(REPO / ".cache" / "tiny")
    studio = studio_on(tiny / "base", device)
    base = studio.cache.base()
    plain = StableDiffusionPipeline(
        **{**base.components, "scheduler": get_sampler("DPM++ 2M Karras").build(base.scheduler.config)}
    )
    plain.set_progress_bar_config(disable=True)
    req = Txt2ImgRequest(prompt=PROMPT, num_inference_steps=steps, seed=1, width=64, height=64)
    ours, theirs = alternate(runs, lambda: txt2img(studio, req), lambda: plain_call(plain, 64, steps))
    print(
        f"tiny 64px {steps} steps, median of {runs}: studio {ours * 1000:.1f} ms, plain diffusers "
        f"{theirs * 1000:.1f} ms, ratio {ours / theirs:.3f} (target <= 1.05)"
    )


def full_size_pipeline(device: str) -> StableDiffusionPipeline:
    """The SD1.5 architecture at full size with random weights (859.5 M-parameter UNet)."""
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(cross_attention_dim=768, sample_size=64)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(write_all(REPO / ".cache" / "tiny") / "base" / "tokenizer")
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe.to(device)


def bench_full(size: int, steps: int, runs: int, device: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="bench-sd15-"))
    full_size_pipeline("cpu").save_pretrained(folder)  # the studio loads it through its own from_pretrained path
    studio = studio_on(folder, device)
    base = studio.cache.base()
    plain = StableDiffusionPipeline(
        **{**base.components, "scheduler": get_sampler("DPM++ 2M Karras").build(base.scheduler.config)}
    )
    plain.set_progress_bar_config(disable=True)
    print(f"SD1.5 architecture: UNet {sum(p.numel() for p in base.unet.parameters()) / 1e6:.1f} M parameters")

    def per_step(run: Callable[[Callable[[], None]], Any]) -> float:
        stamps: list[float] = []
        start = time.perf_counter()
        run(lambda: stamps.append(time.perf_counter()))
        deltas = [b - a for a, b in zip([start, *stamps], stamps, strict=False)]
        return statistics.median(deltas[1:])  # first step includes text encoding

    req = Txt2ImgRequest(prompt=PROMPT, num_inference_steps=steps, seed=1, width=size, height=size)
    ours: list[float] = []
    theirs: list[float] = []
    for _ in range(runs):
        ours.append(per_step(lambda tick: txt2img(studio, req, Job(on_step=lambda i, n: tick()))))
        theirs.append(per_step(lambda tick: plain_call(plain, size, steps, tick)))
    o, t = statistics.median(ours), statistics.median(theirs)
    print(
        f"SD1.5 {size}px UNet step (CFG, batch 1) on {device}, median of {runs}: studio {o * 1000:.0f} ms, "
        f"plain diffusers {t * 1000:.0f} ms, ratio {o / t:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--full-size", type=int, default=256)
    parser.add_argument("--full-steps", type=int, default=4)
    parser.add_argument("--full-runs", type=int, default=2)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device}")
    bench_tiny(args.runs, args.steps, args.device)
    if not args.skip_full:
        bench_full(args.full_size, args.full_steps, args.full_runs, args.device)


if __name__ == "__main__":
    main()
