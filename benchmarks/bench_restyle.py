"""Restyle vs txt2img: time per denoising step at the same size (published anchor on GPUs: 1.38-1.52x).

    .venv/bin/python benchmarks/bench_restyle.py                 # tiny checkpoint through the studio + SD1.5 @256
    .venv/bin/python benchmarks/bench_restyle.py --skip-full     # tiny only
    .venv/bin/python benchmarks/bench_restyle.py --device cuda   # when a GPU is lent

Per-step time is taken between step callbacks (text encoding, edge detection and VAE decoding excluded), and the
first step of each run is dropped as warm-up. The full-size run builds the SD1.5 architecture (UNet with
cross_attention_dim=768, the matching ControlNet, the SD VAE, a CLIP ViT-L/14 text encoder) from configs with
random weights: weights do not change speed.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.engine.restyle import WindowedControlNet  # noqa: E402

log = logging.getLogger("bench_restyle")


def step_times(run: Callable[[Callable[..., Any]], None]) -> list[float]:
    """Seconds per step from a run that calls `on_step` after every step (first step dropped)."""
    stamps: list[float] = []

    def on_step(*_: Any) -> None:
        stamps.append(time.perf_counter())

    start = time.perf_counter()
    run(on_step)
    stamps.insert(0, start)
    deltas = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return deltas[1:] if len(deltas) > 1 else deltas


def sketch(size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, "white")
    w, h = size
    ImageDraw.Draw(image).polygon(
        [(w * 0.4, h * 0.1), (w * 0.6, h * 0.1), (w * 0.85, h * 0.9), (w * 0.15, h * 0.9)],
        outline="black",
        width=max(1, w // 64),
    )
    return image


def bench_tiny(steps: int, repeats: int, device: str) -> tuple[float, float]:
    from studio.cache import ModelCache
    from studio.engine.contract import Job, Studio
    from studio.engine.restyle import RestyleRequest, restyle
    from studio.engine.txt2img import Txt2ImgRequest, txt2img
    from studio.outputs import Outputs
    from studio.settings import Settings

    out = Path(tempfile.mkdtemp(prefix="bench-restyle-"))
    settings = Settings.from_env(
        {}, model="tiny", tiny_dir=REPO / ".cache" / "tiny", outputs=out, preload=False, device=device
    )
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(out))
    common = {"prompt": "a coat", "num_inference_steps": steps, "scheduler": "Euler", "seed": 1}
    plain = Txt2ImgRequest(width=64, height=64, **common)
    styled = RestyleRequest(image=sketch((64, 64)), width=64, height=64, **common)

    def median(run: Callable[[Job], Any]) -> float:
        times: list[float] = []
        for _ in range(repeats):
            times += step_times(lambda on_step: run(Job(on_step=on_step)))
        return statistics.median(times)

    median(lambda job: restyle(studio, styled, job))  # warm-up: loads the ControlNet and the annotator
    return median(lambda job: txt2img(studio, plain, job)), median(lambda job: restyle(studio, styled, job))


def sd15_pipelines(device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    started = time.perf_counter()
    unet = UNet2DConditionModel(cross_attention_dim=768)
    controlnet = ControlNetModel(cross_attention_dim=768)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        sample_size=512,
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
    tokenizer = CLIPTokenizer.from_pretrained(REPO / ".cache" / "tiny" / "base" / "tokenizer")
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    base = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).to(device, dtype)
    controlnet.to(device, dtype)
    styled = StableDiffusionControlNetPipeline.from_pipe(
        base, controlnet=WindowedControlNet([controlnet]), torch_dtype=base.dtype
    )
    for pipe in (base, styled):
        pipe.set_progress_bar_config(disable=True)
    log.info(
        "SD1.5 architecture built in %.1f s (UNet %.1f M params, ControlNet %.1f M)",
        time.perf_counter() - started,
        sum(p.numel() for p in unet.parameters()) / 1e6,
        sum(p.numel() for p in controlnet.parameters()) / 1e6,
    )
    return base, styled


def bench_sd15(size: int, steps: int, device: str) -> tuple[float, float]:
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base, styled = sd15_pipelines(device, dtype)
    common = {"prompt": "a coat", "num_inference_steps": steps, "width": size, "height": size, "output_type": "latent"}

    def run(pipe: Any, **extra: Any) -> Callable[[Callable[..., Any]], None]:
        def go(on_step: Callable[..., Any]) -> None:
            def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
                if device != "cpu":
                    torch.cuda.synchronize()
                on_step()
                return kwargs

            pipe(**common, **extra, generator=torch.Generator().manual_seed(0), callback_on_step_end=callback)

        return go

    plain = statistics.median(step_times(run(base)))
    restyled = statistics.median(step_times(run(styled, image=[sketch((size, size))])))
    return plain, restyled


def report(name: str, plain: float, restyled: float) -> None:
    print(
        f"{name:<34} txt2img {plain * 1000:9.1f} ms/step   restyle {restyled * 1000:9.1f} ms/step   "
        f"ratio {restyled / plain:5.2f}x"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=12, help="tiny: steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="tiny: runs per mode")
    parser.add_argument("--full-size", type=int, default=256, help="SD1.5 architecture: image side in px")
    parser.add_argument("--full-steps", type=int, default=3, help="SD1.5 architecture: steps per run")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    report("tiny (64 px, CFG, Euler)", *bench_tiny(args.steps, args.repeats, args.device))
    if not args.skip_full:
        started = time.perf_counter()
        plain, restyled = bench_sd15(args.full_size, args.full_steps, args.device)
        report(f"SD1.5 arch ({args.full_size} px, CFG, Euler)", plain, restyled)
        print(f"(full-size part took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
