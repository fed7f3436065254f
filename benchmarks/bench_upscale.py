"""Print-ready upscaling (issue 18): seconds and peak memory of the model upscale and of the detail pass.

    .venv/bin/python benchmarks/bench_upscale.py --quick            # CPU: 128 -> 512 and 192 -> 885 px (same ratios)
    .venv/bin/python benchmarks/bench_upscale.py                    # 512 -> 2,048 and 768 -> 3,543 px
    python benchmarks/bench_upscale.py --device cuda --out benchmarks/RESULTS.md   # when a GPU is lent

Each size runs the studio's own path (`studio.engine.upscale.enlarge`: the GPU lock, 256 px model tiles with 32 px
of context, a full-drop repeat's wrapped neighbourhood, seamless Lanczos to the exact size), once without and once
with the detail pass (img2img in native-size tiles, 64 px overlap, blended). Models have random weights, which do
not change speed: a full-size 4x ESRGAN (RealESRGAN_x4plus's RRDBNet: 64 features, 23 blocks, 16.7 M parameters,
saved in its .pth key layout and loaded by spandrel) and the SD1.5 architecture from the folder
benchmarks/bench_studio.py writes (`.cache/bench-sd15-v1`; without it the detail pass runs on the tiny checkpoint
and says so). Peak memory: on CUDA `torch.cuda.max_memory_allocated` above what was allocated before the call; on
CPU the process's peak resident memory above its level before the call (sampled every 10 ms).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Studio  # noqa: E402
from studio.engine.upscale import DetailPass, enlarge  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tiny import write_all  # noqa: E402
from studio.tiny_upscaler import state_dict  # noqa: E402

SD15_DIR = REPO / ".cache" / "bench-sd15-v1"
ESRGAN_FILE = "esrgan-x4-fullsize-random.pth"


def write_esrgan(folder: Path) -> Path:
    """RealESRGAN_x4plus's architecture (64 features, 23 RRDB blocks) with random weights, in its .pth layout."""
    path = folder / ESRGAN_FILE
    if not path.is_file():
        torch.save({"params_ema": state_dict(features=64, blocks=23)}, path)
    return path


def make_studio(device: str, upscalers: Path) -> tuple[Studio, str]:
    tiny = write_all(REPO / ".cache" / "tiny")
    model, label = "tiny", "tiny checkpoint (no .cache/bench-sd15-v1: run benchmarks/bench_studio.py once)"
    if (SD15_DIR / "complete").is_file():
        model, label = str(SD15_DIR / "base"), "SD1.5 architecture (random weights)"
    settings = Settings.from_env(
        {}, model=model, tiny_dir=tiny, device=device, upscalers_dir=upscalers, preload=False,
        outputs=Path(tempfile.mkdtemp(prefix="bench-upscale-")),
    )  # fmt: skip
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs)), label


def rss() -> int:
    """This process's resident memory in bytes (Linux)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    """Peak memory above the level at the start: CUDA allocations, or this process's resident memory."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __enter__(self) -> Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
        else:
            self.start = self.top = rss()
            self.running = True
            self.sampler = threading.Thread(target=self._sample, daemon=True)
            self.sampler.start()
        return self

    def _sample(self) -> None:
        while self.running:
            self.top = max(self.top, rss())
            time.sleep(0.01)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.sampler.join()
            self.bytes = self.top - self.start


def picture(side: int) -> Image.Image:
    rng = np.random.default_rng(side)
    coarse = Image.fromarray(rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8))
    return coarse.resize((side, side), Image.Resampling.BICUBIC)


def measure(device: torch.device, run: Callable[[], Any]) -> tuple[float, int]:
    with Peak(device) as peak:
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return seconds, peak.bytes


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--quick", action="store_true", help="128 -> 512 and 192 -> 885 px, 4 steps at 0.25 (CPU)")
    parser.add_argument("--steps", type=int, help="detail pass steps (default 20; quick: 4)")
    parser.add_argument("--strength", type=float, help="detail strength (default 0.3; quick: 0.25)")
    parser.add_argument("--sizes", nargs="+", help="SOURCE:TARGET sides in px, e.g. 512:2048 (overrides --quick's)")
    parser.add_argument("--skip-detail", action="store_true", help="the model upscale alone")
    parser.add_argument("--out", type=Path, help="append a markdown record to this file")
    args = parser.parse_args(argv)
    sizes = [(128, 512), (192, 885)] if args.quick else [(512, 2048), (768, 3543)]
    if args.sizes:
        sizes = [(int(a), int(b)) for a, b in (size.split(":") for size in args.sizes)]
    steps = args.steps or (4 if args.quick else 20)
    strength = args.strength or (0.25 if args.quick else 0.3)
    upscalers = REPO / ".cache" / "bench-upscalers"
    upscalers.mkdir(parents=True, exist_ok=True)
    write_esrgan(upscalers)
    studio, model_label = make_studio(args.device, upscalers)
    device = studio.cache.device
    studio.cache.base()  # loaded before timing
    studio.cache.upscaler(str(upscalers / ESRGAN_FILE))
    warm = picture(64)
    enlarge(studio, warm, (256, 256), "full", ESRGAN_FILE, None)  # first-call costs out of the way
    detail = DetailPass(strength, "a floral print", "", num_inference_steps=steps, guidance_scale=7.0, seed=1)
    rows = []
    for source, target in sizes:
        image = picture(source)
        passes = [("model only", None), (f"+ detail pass ({steps} steps at {strength:g})", detail)]
        for label, pass_ in passes[:1] if args.skip_detail else passes:

            def run(image: Image.Image = image, side: int = target, pass_: DetailPass | None = pass_) -> object:
                return enlarge(studio, image, (side, side), "full", ESRGAN_FILE, pass_)

            seconds, peak = measure(device, run)
            row = f"| {source} → {target} px | {label} | {seconds:.1f} s | {peak / 2**20:,.0f} MiB |"
            print(row, flush=True)
            rows.append(row)
    native = studio.cache.native_size()
    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()}, {os.cpu_count()} CPUs"
    )
    command = "python benchmarks/bench_upscale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = "\n".join([
        f"\n## Print-ready upscaling (`benchmarks/bench_upscale.py`, {time.strftime('%Y-%m-%d')})",
        f"- Machine: {where}; torch {torch.__version__}; device {device}, {studio.cache.dtype}",
        f"- Command: `{command.strip()}`",
        f"- Models (random weights): 4x ESRGAN, RealESRGAN_x4plus's RRDBNet (64 features, 23 blocks) via spandrel, "
        f"256 px tiles + 32 px context; detail pass on the {model_label}, {native} px tiles, 64 px overlap, CFG 7",
        "- Repeat: full drop (the wrapped neighbourhood is included); peak memory above the level before the call "
        + ("(CUDA allocations)" if device.type == "cuda" else "(process RSS, sampled every 10 ms)"),
        "",
        "| size | path | time | peak memory |",
        "| --- | --- | --- | --- |",
        *rows,
    ])  # fmt: skip
    print(record)
    if args.out:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(record + "\n")


if __name__ == "__main__":
    main()
