"""Seconds per "Train a style" step (studio.training): the tiny checkpoint, and the SD1.5 architecture.

Each step is what a training job does per step: the GPU lock, one optimizer step of DreamBooth-LoRA (UNet LoRA,
rank 8, batch 1, no prior preservation unless `--prior`), on weight-sharing copies of the resident base. The SD1.5
architecture has random weights (`bench_studio.py` writes it once to .cache/bench-sd15-v1; weights do not change
speed). One warm-up step, then `--steps` timed steps; the median is printed and, with `--out`, appended as Markdown.

    .venv/bin/python benchmarks/bench_training.py --model tiny --resolution 64 --steps 10
    .venv/bin/python benchmarks/bench_training.py --model sd15 --resolution 256 --steps 3
    python benchmarks/bench_training.py --model sd15 --device cuda --resolution 512 --steps 50 \
        --out benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
FULL_DIR = REPO / ".cache" / "bench-sd15-v1"  # shared with bench_studio.py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["tiny", "sd15"], default="tiny")
    parser.add_argument("--resolution", type=int, default=0, help="px (0: the model's own)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--text-encoder", action="store_true", help="train the text encoder's LoRA too")
    parser.add_argument("--prior", action="store_true", help="prior preservation (one class image per step)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, help="append a Markdown record here")
    args = parser.parse_args()

    import numpy as np
    import torch
    from PIL import Image

    from studio import tiny, training
    from studio.cache import ModelCache
    from studio.engine.contract import Studio
    from studio.outputs import Outputs
    from studio.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    tiny_dir = tiny.write_all(REPO / ".cache" / "tiny")
    if args.model == "sd15":
        if not (FULL_DIR / "complete").exists():
            sys.exit(f"{FULL_DIR} is missing: run benchmarks/bench_studio.py once (it writes the SD1.5 architecture)")
        model = str(FULL_DIR / "base")
    else:
        model = "tiny"
    root = Path(tempfile.mkdtemp(prefix="bench-training-"))
    settings = Settings.from_env({}, model=model, preload=False, tiny_dir=tiny_dir, outputs=root / "outputs",
                                 lora_dir=root / "loras", train_dir=root / "training", device=args.device,
                                 train_on_cpu=True)  # fmt: skip
    studio = Studio(ModelCache(settings), Outputs(settings.outputs))
    base = studio.cache.base()
    native = int(base.unet.config.sample_size) * int(base.vae_scale_factor)
    size = args.resolution or native
    rng = np.random.default_rng(0)
    photos = tuple(Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(5))
    req = training.TrainRequest(name="bench", trigger="ohwx", images=photos, num_train_steps=args.steps + 1,
                                rank=args.rank, resolution=size, prior_preservation=args.prior,
                                train_text_encoder=args.text_encoder, class_images=2, sample_steps=2)  # fmt: skip
    plan = training.plan(studio, req)
    with studio.cache.gpu():
        classes = training._class_images(studio, base, plan) if args.prior else []
        trainer = training.Trainer(base, plan, classes)
    times = []
    for step in range(args.steps + 1):
        start = time.perf_counter()
        with studio.cache.gpu():
            trainer.step(step)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        if step:  # the first is the warm-up
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    params = sum(p.numel() for p in base.unet.parameters())
    extras = f"{' + text encoder' if args.text_encoder else ''}{' + prior' if args.prior else ''}"
    dtype = str(base.unet.dtype).replace("torch.", "")
    line = (f"| {args.model} ({params / 1e6:.1f} M UNet parameters) | {size} px | rank {args.rank}{extras} | "
            f"{args.device} {dtype} | {median:.3f} s | {1000 * median / 60:.1f} min |")  # fmt: skip
    print(f"median {median:.3f} s/step over {len(times)} steps (min {min(times):.3f}, max {max(times):.3f})")
    print(line)
    if args.out:
        machine = (
            f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}"
        )
        command = "python benchmarks/bench_training.py " + " ".join(sys.argv[1:])
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(f"\n- `{command}` ({machine}, load average {os.getloadavg()[0]:.1f})\n\n")
            handle.write(
                "| model | size | LoRA | device | s/step | 1,000 steps |\n| --- | --- | --- | --- | --- | --- |\n"
            )
            handle.write(line + "\n")


if __name__ == "__main__":
    main()
