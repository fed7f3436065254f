"""Batching of concurrent txt2img requests: throughput of N designers' requests batched vs one by one.

    .venv/bin/python benchmarks/bench_batching.py                  # tiny 64 px, then the SD1.5 architecture at 256 px
    .venv/bin/python benchmarks/bench_batching.py --skip-full      # tiny only (seconds)
    .venv/bin/python benchmarks/bench_batching.py --device cuda --full-size 512 --full-steps 25 --full-runs 5 \
        --out benchmarks/RESULTS.md                                # on a GPU

On 2 busy CPU cores the tiny part takes ~30 s and the SD1.5 part ~4 minutes (`--skip-full` for the tiny part).

N requests (different prompts and seeds, one image each) are submitted at once from N threads, as N browser
sessions would be by Gradio's worker threads. "one by one" is the studio with batching off (each thread runs
`txt2img`, serialised by the GPU lock); "batched" is `Txt2ImgBatcher` (one UNet batch of N images). Both sides run
in worker threads (a fair comparison on CPU, where a thread's OpenMP behaviour can differ from the main thread's),
include validation, metadata and the PNG saves, and alternate after a one-step warm-up each; medians are reported.
Throughput = images / wall time until the last request returns. The SD1.5 architecture has random weights
(weights do not change speed); it is the folder bench_studio.py writes, or written here in the same way.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Each Python thread that calls torch on CPU gets its own OpenMP team; with the default (spinning) wait policy the
# idle teams of the waiting threads steal the cores from the one that computes (measured here: 4 tiny requests one
# by one from 4 threads took 61 s instead of 2.6 s on 2 cores). PASSIVE makes idle OpenMP threads sleep.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import diffusers  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from studio.batching import Txt2ImgBatcher  # noqa: E402
from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Studio  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tiny import write_all  # noqa: E402

PROMPTS = (
    "photo of a tailored wool coat, studio light",
    "photo of an embroidered silk slip dress",
    "photo of a chunky cable-knit cardigan, flat lay",
    "photo of pleated linen trousers, runway",
    "photo of a quilted satin bomber jacket",
    "photo of a beaded evening gown, dark background",
    "photo of a denim trucker jacket, street",
    "photo of a houndstooth blazer, editorial",
)
FULL_DIR = REPO / ".cache" / "bench-sd15-v1"  # shared with bench_studio.py
OWN_FULL_DIR = REPO / ".cache" / "bench-sd15-batching"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (
        f"python {platform.python_version()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"CPU {cpu} x{os.cpu_count()} (torch threads {torch.get_num_threads()}), GPU {gpu}"
    )


def studio_on(model: str, device: str, dtype: str) -> Studio:
    out = Path(tempfile.mkdtemp(prefix="bench-batching-"))
    settings = Settings.from_env(
        {},
        model=model,
        tiny_dir=write_all(REPO / ".cache" / "tiny"),
        outputs=out,
        preload=False,
        device=device,
        dtype=dtype,
    )
    return Studio(cache=ModelCache(settings), outputs=Outputs(out))


def full_size_model() -> str:
    if (FULL_DIR / "complete").is_file():
        return str(FULL_DIR / "base")
    if not (OWN_FULL_DIR / "model_index.json").is_file():
        from bench_txt2img import full_size_pipeline

        print(f"writing the SD1.5-architecture folder (random weights) to {OWN_FULL_DIR} ...", flush=True)
        full_size_pipeline("cpu").to(torch.float16).save_pretrained(OWN_FULL_DIR)
    return str(OWN_FULL_DIR)


def concurrently(call: Callable[[Txt2ImgRequest], object], requests: list[Txt2ImgRequest]) -> float:
    """Seconds from submitting every request at once (one thread each) until the last one returns."""
    errors: list[BaseException] = []

    def run(req: Txt2ImgRequest) -> None:
        try:
            call(req)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(req,)) for req in requests]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


def compare(studio: Studio, label: str, size: int, steps: int, n: int, runs: int, window_ms: int) -> str:
    requests = [
        Txt2ImgRequest(
            prompt=PROMPTS[i % len(PROMPTS)], num_inference_steps=steps, seed=100 + i, width=size, height=size
        )
        for i in range(n)
    ]
    one_by_one = Txt2ImgBatcher(studio, window_ms=0)
    batched = Txt2ImgBatcher(studio, window_ms=window_ms, max_images=max(n, studio.limits.max_batch_size))
    sides = {"one by one": one_by_one, "batched": batched}
    warm = [dataclasses.replace(req, num_inference_steps=1) for req in requests]
    for call in sides.values():  # warm-up: the same batch shapes, one step
        concurrently(call, warm)
    times: dict[str, list[float]] = {name: [] for name in sides}
    for run in range(runs):
        order = list(sides) if run % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(concurrently(sides[name], requests))
    alone, together = statistics.median(times["one by one"]), statistics.median(times["batched"])
    line = (
        f"{label} {size}px {steps} steps, {n} concurrent requests, median of {runs}: "
        f"one by one {n / alone:.2f} images/s ({alone * 1000:.0f} ms), batched {n / together:.2f} images/s "
        f"({together * 1000:.0f} ms, window {window_ms} ms), throughput ratio {alone / together:.2f}x"
    )
    print(line, flush=True)
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--window-ms", type=int, default=40)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--out", type=Path, help="append a markdown record (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--full-size", type=int, default=256)
    parser.add_argument("--full-steps", type=int, default=2)
    parser.add_argument("--full-runs", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    lines = [machine(), f"command: {' '.join([Path(sys.executable).name, *sys.argv])}"]
    print(*lines, sep="\n", flush=True)
    if not args.skip_tiny:
        tiny = studio_on("tiny", args.device, args.dtype)
        lines.append(compare(tiny, "tiny", 64, args.steps, args.requests, args.runs, args.window_ms))
    if not args.skip_full:
        full = studio_on(full_size_model(), args.device, args.dtype)
        lines.append(
            compare(
                full,
                "SD1.5 architecture",
                args.full_size,
                args.full_steps,
                args.requests,
                args.full_runs,
                args.window_ms,
            )
        )
    if args.out:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with args.out.open("a", encoding="utf-8") as out:
            out.write(f"\n## bench_batching.py, {stamp}\n\n" + "".join(f"- {line}\n" for line in lines))


if __name__ == "__main__":
    main()
