"""ControlNet units: time per denoising step with 1, 2 and 3 units vs plain txt2img at the same size.

    .venv/bin/python benchmarks/bench_controlnets.py                # tiny checkpoint through the studio + SD1.5 @256
    .venv/bin/python benchmarks/bench_controlnets.py --skip-full    # tiny only
    .venv/bin/python benchmarks/bench_controlnets.py --device cuda  # when a GPU is lent

Per-step time is taken between step callbacks (text encoding, annotators and VAE decoding excluded; the units use
ready-made maps), first step of each run dropped. The tiny part runs Restyle through the studio (its own
ControlNet per kind: lineart, canny, openpose). The full part loads the SD1.5 architecture with random weights
from .cache/bench-sd15-v1 (benchmarks/bench_studio.py writes it) and runs diffusers' ControlNet pipeline with
Restyle's `WindowedControlNet` over 1, 2 or 3 units of that one ControlNet (the same module in each unit: the
same work per step as three different ControlNets of the SD1.5 architecture, without 3x the memory).
Expected: each unit adds one ControlNet forward (~35 % of a UNet's FLOPs per the field notes).
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_restyle import sketch, step_times  # noqa: E402

from studio.engine.restyle import WindowedControlNet  # noqa: E402

FULL_DIR = REPO / ".cache" / "bench-sd15-v1"  # written by bench_studio.py
EXTRA = [{"preprocessor": "none", "model": "canny"}, {"preprocessor": "none", "model": "openpose"}]


def bench_tiny(steps: int, repeats: int, device: str) -> list[float]:
    """Median seconds per step: txt2img, then Restyle with 1, 2, 3 units."""
    from studio.cache import ModelCache
    from studio.engine.contract import Job, Studio
    from studio.engine.restyle import RestyleRequest, restyle
    from studio.engine.txt2img import Txt2ImgRequest, txt2img
    from studio.outputs import Outputs
    from studio.settings import Settings

    out = Path(tempfile.mkdtemp(prefix="bench-controlnets-"))
    settings = Settings.from_env(
        {}, model="tiny", tiny_dir=REPO / ".cache" / "tiny", outputs=out, preload=False, device=device
    )
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(out))
    common = {"prompt": "a coat", "num_inference_steps": steps, "scheduler": "Euler", "seed": 1}
    map_ = sketch((64, 64))

    def units(count: int) -> RestyleRequest:
        extra = EXTRA[: count - 1]
        return RestyleRequest(image=map_, preprocessor="none", model="lineart", controlnet_units=extra,
                              control_image=[map_] * len(extra), width=64, height=64, **common)  # fmt: skip

    def median(run: Callable[[Job], Any]) -> float:
        times: list[float] = []
        for _ in range(repeats):
            times += step_times(lambda on_step: run(Job(on_step=on_step)))
        return statistics.median(times)

    restyle(studio, units(3), None)  # warm-up: loads every ControlNet
    plain = median(lambda job: txt2img(studio, Txt2ImgRequest(width=64, height=64, **common), job))
    return [plain, *(median(lambda job, n=n: restyle(studio, units(n), job)) for n in (1, 2, 3))]


def bench_sd15(size: int, steps: int, device: str) -> list[float]:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline, StableDiffusionPipeline

    if not (FULL_DIR / "complete").is_file():
        raise SystemExit(f"{FULL_DIR} is missing: run benchmarks/bench_studio.py once (it writes it), or --skip-full")
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = StableDiffusionPipeline.from_pretrained(FULL_DIR / "base", torch_dtype=dtype).to(device)
    controlnet = ControlNetModel.from_pretrained(FULL_DIR / "controlnet", torch_dtype=dtype).to(device)
    base.set_progress_bar_config(disable=True)
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

    times = [statistics.median(step_times(run(base)))]
    for count in (1, 2, 3):
        pipe = StableDiffusionControlNetPipeline.from_pipe(
            base, controlnet=WindowedControlNet([controlnet] * count), torch_dtype=dtype
        )
        pipe.set_progress_bar_config(disable=True)
        times.append(statistics.median(step_times(run(pipe, image=[sketch((size, size))] * count))))
    return times


def report(name: str, times: list[float]) -> None:
    plain, *units = times
    parts = "   ".join(
        f"{n} unit{'s' if n > 1 else ''} {t * 1000:8.1f} ms ({t / plain:4.2f}x)" for n, t in enumerate(units, start=1)
    )
    print(f"{name:<30} txt2img {plain * 1000:8.1f} ms/step   {parts}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=8, help="tiny: steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="tiny: runs per configuration")
    parser.add_argument("--full-size", type=int, default=256, help="SD1.5 architecture: image side in px")
    parser.add_argument("--full-steps", type=int, default=3, help="SD1.5 architecture: steps per run")
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    report("tiny (64 px, CFG, Euler)", bench_tiny(args.steps, args.repeats, args.device))
    if not args.skip_full:
        started = time.perf_counter()
        report(f"SD1.5 arch ({args.full_size} px, CFG)", bench_sd15(args.full_size, args.full_steps, args.device))
        print(f"(full-size part took {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
