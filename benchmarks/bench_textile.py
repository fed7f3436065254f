"""Textile vs plain txt2img at the same settings: what the seamless wrapping costs (target: a few percent).

    .venv/bin/python benchmarks/bench_textile.py                   # tiny checkpoint, 128 px, every repeat
    .venv/bin/python benchmarks/bench_textile.py --full 256        # + SD1.5-architecture UNet forward at 256 px
    .venv/bin/python benchmarks/bench_textile.py --device cuda --full 512   # when a GPU is lent

1. Whole request on the tiny checkpoint: `studio.engine.textile` (wrapping, metadata, tile PNG and 3 x 3 repeat
   preview saved) vs `studio.engine.txt2img`, runs alternating, medians and ratio.
2. Denoising alone: the same derived pipeline with the same latents, inside `tiling.wrapped` vs not, per repeat.
3. (--full N) One UNet forward of the SD1.5 architecture (random weights from the config: weights do not change
   speed) at N px, wrapped vs not.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio import tiling  # noqa: E402


def alternate(a: Callable[[], object], b: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median seconds of a and b, run alternately after one warm-up each."""
    a(), b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((a, times_a), (b, times_b)):
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return statistics.median(times_a), statistics.median(times_b)


def report(label: str, wrapped_s: float, plain_s: float) -> None:
    print(f"{label:<38} {wrapped_s * 1000:9.1f} ms vs {plain_s * 1000:9.1f} ms   ratio {wrapped_s / plain_s:.3f}")


def bench_tiny(size: int, steps: int, repeats: int, device: str) -> None:
    from diffusers import StableDiffusionPipeline

    from studio.cache import ModelCache
    from studio.engine.contract import Studio
    from studio.engine.textile import TextileRequest, textile
    from studio.engine.txt2img import Txt2ImgRequest, txt2img
    from studio.outputs import Outputs
    from studio.settings import Settings

    settings = Settings.from_env(
        {},
        model="tiny",
        tiny_dir=REPO / ".cache" / "tiny",
        device=device,
        outputs=Path(tempfile.mkdtemp(prefix="bench-textile-")),
        preload=False,
    )
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))
    same = {
        "prompt": "a floral print",
        "num_inference_steps": steps,
        "width": size,
        "height": size,
        "seed": 1,
        "scheduler": "DPM++ 2M",
    }
    print(f"tiny checkpoint, {size} px, {steps} steps, CFG 7, median of {repeats} ({device})")
    tex, plain = alternate(
        lambda: textile(studio, TextileRequest(repeat="full", **same)),
        lambda: txt2img(studio, Txt2ImgRequest(**same)),
        repeats,
    )
    report("whole request: textile vs txt2img", tex, plain)

    pipe = studio.cache.derive(StableDiffusionPipeline, scheduler="DPM++ 2M")
    latents = torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0))

    def denoise(repeat: str | None) -> Callable[[], object]:
        def run() -> object:
            scope = tiling.wrapped([pipe.unet, pipe.vae], repeat) if repeat else contextlib.nullcontext()
            with studio.cache.gpu(), scope:
                return pipe(
                    "a floral print",
                    num_inference_steps=steps,
                    width=size,
                    height=size,
                    latents=latents.to(pipe.device),
                    output_type="latent",
                )

        return run

    for repeat in tiling.REPEATS:
        report(f"denoising, {repeat} vs unwrapped", *alternate(denoise(repeat), denoise(None), repeats))


def bench_full(size: int, repeats: int, device: str) -> None:
    from diffusers import UNet2DConditionModel

    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = UNet2DConditionModel(cross_attention_dim=768).to(device, dtype).eval()
    sample = torch.randn((2, 4, size // 8, size // 8), device=device, dtype=dtype)
    text = torch.randn((2, 77, 768), device=device, dtype=dtype)

    def forward(repeat: str | None) -> Callable[[], object]:
        def run() -> object:
            scope = tiling.wrapped([unet], repeat) if repeat else contextlib.nullcontext()
            with torch.no_grad(), scope:
                return unet(sample, 500, encoder_hidden_states=text)

        return run

    print(f"SD1.5-architecture UNet, {size} px, batch 2 (CFG), median of {repeats} ({device}, {dtype})")
    for repeat in ("full", "half_drop"):
        report(f"UNet forward, {repeat} vs unwrapped", *alternate(forward(repeat), forward(None), repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="tiny tile size in px (a multiple of 128)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--full", type=int, default=0, metavar="PX", help="also time the SD1.5 UNet at PX px")
    args = parser.parse_args()
    torch.manual_seed(0)
    bench_tiny(args.size, args.steps, args.repeats, args.device)
    if args.full:
        bench_full(args.full, max(3, args.repeats // 2), args.device)


if __name__ == "__main__":
    main()
