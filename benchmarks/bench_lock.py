"""How long each mode holds the GPU lock beyond the pipeline's own call, per image; and the throughput of 8
concurrent txt2img requests (issue 22).

    .venv/bin/python benchmarks/bench_lock.py                         # tiny checkpoint, 64 px (a minute)
    .venv/bin/python benchmarks/bench_lock.py --full 512 768          # + the SD1.5 architecture, 1 step (CPU: long)
    .venv/bin/python benchmarks/bench_lock.py --skip-throughput --runs 3

While the cache's lock is held, every other request waits for the GPU. What the lock covers beyond the pipeline's
own `__call__` (deriving the pipeline, metadata, hashing, PNG encoding, fsync, exports...) is time the GPU could
have spent on the next request. This figure does not depend on the device: it is CPU work (and the text
encoder, VAE encode or HED annotator where a mode runs them itself, which are model calls and are named).

How: the cache's lock is replaced by a recorder (same RLock inside) that times each outermost hold per thread,
and each pipeline class's `__call__` is timed while its thread holds the lock. Per mode: one warm-up request
(companions load, templates, the model hash's first read: reported as "first request"), then `--runs` requests;
medians of (hold - pipeline call) / images. The SD1.5 architecture (random weights, the folder bench_studio.py
writes) runs 1 denoising step per request by default: the figure does not depend on the number of steps.

Throughput: 8 requests (different prompts and seeds, 1 image each) submitted at once from 8 threads, with batching
off (each request its own `txt2img`, serialised by the lock) and through `Txt2ImgBatcher`; images per second until
the last returns, median of `--throughput-runs`. On a CPU the denoising itself takes the cores the writers need;
`--simulate-gpu-ms 270 --throughput-sizes 512` replaces each image's pipeline call by a 270 ms wait that leaves the
CPU free (an H100-class SD1.5 512 px image) and a 512 px photo, as serving from a GPU would.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP teams of waiting threads sleep (bench_batching.py)

import diffusers  # noqa: E402
import numpy as np  # noqa: E402
import skimage  # noqa: E402
import torch  # noqa: E402
from diffusers.image_processor import VaeImageProcessor  # noqa: E402
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_batching import PROMPTS  # noqa: E402  # eight garments, as the batching benchmark sends them
from bench_studio import full_size_folder, mask, photo, sketch  # noqa: E402  # the same inputs as the speed benchmark
from diffusers import (  # noqa: E402
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from studio import tiling  # noqa: E402
from studio.batching import Txt2ImgBatcher  # noqa: E402
from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Studio  # noqa: E402
from studio.engine.draft import DraftRequest, draft  # noqa: E402
from studio.engine.inpaint import InpaintRequest, inpaint  # noqa: E402
from studio.engine.refine import RefineRequest, refine  # noqa: E402
from studio.engine.restyle import RestyleRequest, restyle  # noqa: E402
from studio.engine.textile import TextileRequest, textile  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest, txt2img, txt2img_many  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tiny import write_all  # noqa: E402

PROMPT = "photo of a tailored wool coat, studio light"
PIPELINES = (
    StableDiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionControlNetPipeline,
)
TINY_DIR = Path(os.environ.get("ATELIER_TINY_DIR") or os.environ.get("STUDIO_TINY_DIR") or REPO / ".cache" / "tiny")


# ---- the recorder -----------------------------------------------------------------------------------------------
PARTS = ("pipeline", "annotator", "tiling")  # timed calls made under the lock; the rest of a hold is "other"


@dataclass
class Hold:
    seconds: float
    parts: dict[str, float]  # seconds inside each timed call (PARTS) during this hold


@dataclass
class LockRecorder:
    """The cache's re-entrant lock, with each outermost hold timed per thread."""

    inner: Any
    holds: list[Hold] = field(default_factory=list)
    local: threading.local = field(default_factory=threading.local)

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        got = self.inner.acquire(blocking, timeout)
        if got:
            depth = getattr(self.local, "depth", 0)
            if depth == 0:
                self.local.start, self.local.parts = time.perf_counter(), dict.fromkeys(PARTS, 0.0)
            self.local.depth = depth + 1
        return bool(got)

    def release(self) -> None:
        self.local.depth -= 1
        if self.local.depth == 0:
            self.holds.append(Hold(time.perf_counter() - self.local.start, self.local.parts))
        self.inner.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def held(self) -> bool:
        return getattr(self.local, "depth", 0) > 0

    def add(self, part: str, seconds: float) -> None:
        if self.held():
            self.local.parts[part] += seconds


RECORDERS: list[LockRecorder] = []  # every studio's recorder; a timed call counts for the one its thread holds


def record(part: str, seconds: float) -> None:
    for recorder in RECORDERS:
        recorder.add(part, seconds)


def timed_method(cls: type, name: str, part: str) -> None:
    """`cls.name` adds its duration to `part` of the hold of the thread that calls it."""
    method = cls.__dict__[name]

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            record(part, time.perf_counter() - start)

    setattr(cls, name, timed)  # a benchmark's instrument, never the studio's


def instrument() -> None:
    """Time the pipelines' `__call__`, the HED annotator's and the tiling's entry and exit."""
    from controlnet_aux import HEDdetector

    for cls in PIPELINES:
        timed_method(cls, "__call__", "pipeline")
    timed_method(HEDdetector, "__call__", "annotator")
    original = tiling.wrapped

    @contextlib.contextmanager
    def wrapped(modules: Any, repeat: str) -> Iterator[None]:
        start = time.perf_counter()
        manager = original(modules, repeat)
        manager.__enter__()
        record("tiling", time.perf_counter() - start)
        try:
            yield
        except BaseException as exc:
            start = time.perf_counter()
            if not manager.__exit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            start = time.perf_counter()
            manager.__exit__(None, None, None)
        finally:
            record("tiling", time.perf_counter() - start)

    tiling.wrapped = wrapped  # type: ignore[assignment]  # modes look it up at call time


def requests(studio: Studio, size: int, steps: int, full: bool) -> dict[str, tuple[Callable[[int], object], int]]:
    """mode -> (run(seed), images per run). Every mode at its defaults, `steps` steps (strength 1 where a mode
    denoises only part of them, so that 1 step still runs)."""
    common: dict[str, Any] = {"num_inference_steps": steps, "guidance_scale": 7.0}
    strength = 1.0 if steps < 2 else 0.5
    modes: dict[str, tuple[Callable[[int], object], int]] = {
        "txt2img": (lambda s: txt2img(studio, Txt2ImgRequest(PROMPT, width=size, height=size, seed=s, **common)), 1),
        "txt2img x4 batched": (
            lambda s: txt2img_many(
                studio,
                [Txt2ImgRequest(p, width=size, height=size, seed=s, **common) for p in PROMPTS[:4]],
                [None] * 4,
            ),
            4,
        ),
        "refine (2 loops)": (
            lambda s: refine(studio, RefineRequest(photo(size), PROMPT, strength=strength, loops=2, seed=s, **common)),
            2,
        ),
        "textile (+ print, colourway)": (
            lambda s: textile(
                studio,
                TextileRequest(PROMPT, width=size, height=size, seed=s, physical_width=2.0, colors=4, **common),
            ),
            1,
        ),
        "inpaint": (
            lambda s: inpaint(
                studio, InpaintRequest(photo(size), mask(size), PROMPT, strength=strength, seed=s, **common)
            ),
            1,
        ),
        "restyle (sketch)": (
            lambda s: restyle(
                studio,
                RestyleRequest(sketch(size), PROMPT, preprocessor="none", width=size, height=size, seed=s, **common),
            ),
            1,
        ),
        "restyle (HED)": (
            lambda s: restyle(studio, RestyleRequest(photo(size), PROMPT, width=size, height=size, seed=s, **common)),
            1,
        ),
    }
    if not full:  # the LCM-LoRA of the SD1.5 architecture is not at hand offline; the tiny twin is
        modes["draft"] = (
            lambda s: draft(studio, DraftRequest(PROMPT, num_inference_steps=steps, width=size, height=size, seed=s)),
            1,
        )
    return modes


@dataclass
class Row:
    mode: str
    size: int
    other_ms: float  # per image: lock held beyond the pipeline call, the HED annotator and the tiling (median)
    max_ms: float
    parts_ms: dict[str, float]  # per image, each timed part (median)
    first_ms: float | None = None  # the warm-up request: companions, templates, the model hash's first read


def measure(recorder: LockRecorder, run: Callable[[int], object], images: int, seed: int) -> dict[str, float]:
    """Milliseconds per image of one run: each timed part, and "other" (the rest of the lock's holds)."""
    del recorder.holds[:]
    run(seed)
    parts = {part: sum(h.parts[part] for h in recorder.holds) for part in PARTS}
    parts["other"] = sum(h.seconds for h in recorder.holds) - sum(parts.values())
    return {part: seconds * 1000 / images for part, seconds in parts.items()}


# ---- throughput -----------------------------------------------------------------------------------------------
def concurrent(call: Callable[[Txt2ImgRequest], object], size: int, steps: int, seed: int) -> float:
    """Images per second for 8 requests submitted at once from 8 threads."""
    reqs = [
        Txt2ImgRequest(p, num_inference_steps=steps, width=size, height=size, seed=seed + i)
        for i, p in enumerate(PROMPTS)
    ]
    barrier = threading.Barrier(len(reqs) + 1)
    errors: list[BaseException] = []

    def worker(req: Txt2ImgRequest) -> None:
        barrier.wait()
        try:
            call(req)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in reqs]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return len(reqs) / (time.perf_counter() - start)


def throughput(studio: Studio, size: int, steps: int, runs: int) -> dict[str, float]:
    batcher = Txt2ImgBatcher(studio, window_ms=40, max_images=8)
    sides: dict[str, Callable[[Txt2ImgRequest], object]] = {
        "one by one (batching off)": lambda req: txt2img(studio, req),
        "batched (Txt2ImgBatcher, 40 ms window)": batcher,
    }
    results: dict[str, list[float]] = {name: [] for name in sides}
    for call in sides.values():
        concurrent(call, size, steps, 1)  # warm-up
    for run in range(runs):
        for name, call in sides.items():
            results[name].append(concurrent(call, size, steps, 100 + run * 10))
    return {name: statistics.median(values) for name, values in results.items()}


@contextlib.contextmanager
def simulated_gpu(ms_per_image: float) -> Iterator[None]:
    """`StableDiffusionPipeline.__call__` replaced by a wait of `ms_per_image` per image that leaves the CPU free, as
    waiting for a GPU does, and a photo of the requested size: the requests then differ only in what the lock's
    holder does besides. Shows on a CPU machine what serving from a GPU gains."""
    original = StableDiffusionPipeline.__call__
    photos: dict[tuple[int, int], np.ndarray] = {}

    def call(self: Any, *args: Any, width: int, height: int, output_type: str = "pil", **kwargs: Any) -> Any:
        count = len(kwargs["generator"])  # every caller passes one CPU generator per image
        time.sleep(ms_per_image * count / 1000)
        if (width, height) not in photos:
            with Image.open(Path(skimage.__file__).parent / "data" / "astronaut.png") as image:
                fitted = ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
            photos[width, height] = np.asarray(fitted, dtype=np.float32) / 255
        pixels = np.repeat(photos[width, height][None], count, axis=0)
        images = pixels if output_type == "np" else VaeImageProcessor.numpy_to_pil(pixels)
        return StableDiffusionPipelineOutput(images=images, nsfw_content_detected=None)

    StableDiffusionPipeline.__call__ = call
    try:
        yield
    finally:
        StableDiffusionPipeline.__call__ = original


# ---- the studio -------------------------------------------------------------------------------------------------
def make_studio(model: str, extra: dict[str, Any]) -> tuple[Studio, LockRecorder]:
    out = Path(tempfile.mkdtemp(prefix="bench-lock-"))
    env = {key: value for key, value in os.environ.items() if key.startswith("STUDIO_")}
    settings = Settings.from_env(env, model=model, tiny_dir=write_all(TINY_DIR), outputs=out, preload=False, **extra)
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(out))
    recorder = LockRecorder(studio.cache._lock)
    RECORDERS.append(recorder)
    studio.cache._lock = recorder  # type: ignore[assignment]  # the benchmark's instrument
    return studio, recorder


def full_studio(device: str) -> tuple[Studio, LockRecorder]:
    folder = full_size_folder()
    tiny = write_all(TINY_DIR)
    return make_studio(
        str(folder / "base"),
        {"controlnet_model": str(folder / "controlnet"), "annotator_model": str(tiny / "annotator"), "device": device},
    )


def commit() -> str:
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return done.stdout.strip() or "?"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (
        f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}; python {platform.python_version()}, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}; commit {commit()}"
    )


def table(rows: list[Row]) -> Iterator[str]:
    yield (
        "| mode | px | lock held for other work, ms/image: median | max | first request | HED annotator | tiling "
        "on/off | pipeline call |"
    )
    yield "|---|---|---|---|---|---|---|---|"
    for r in rows:
        first = "-" if r.first_ms is None else f"{r.first_ms:.1f}"
        parts = " | ".join(f"{r.parts_ms[part]:.2f}" for part in ("annotator", "tiling"))
        yield (
            f"| {r.mode} | {r.size} | **{r.other_ms:.2f}** | {r.max_ms:.2f} | {first} | {parts} | "
            f"{r.parts_ms['pipeline']:.0f} |"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="tiny model's image size (default 64)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps on the tiny model (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="measured requests per mode (default 5)")
    parser.add_argument("--modes", nargs="*", help="only these modes (names as printed)")
    parser.add_argument("--full", type=int, nargs="*", default=[], help="SD1.5-architecture sizes (e.g. 512 768)")
    parser.add_argument("--full-steps", type=int, default=1)
    parser.add_argument("--full-runs", type=int, default=1)
    parser.add_argument("--full-warmup-size", type=int, default=128, help="SD1.5 warm-up requests' size")
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--throughput-steps", type=int, default=4)
    parser.add_argument("--throughput-sizes", type=int, nargs="*", default=[64], help="tiny model, px")
    parser.add_argument("--throughput-runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument(
        "--simulate-gpu-ms", type=float, default=0, help="throughput with each image's pipeline call a wait of this"
    )
    parser.add_argument("--device", default="cpu", help="the studio's device (cpu, cuda)")
    return parser.parse_args(argv)


def warm_up(studio: Studio, recorder: LockRecorder, args: argparse.Namespace, size: int, steps: int,
            full: bool) -> dict[str, float]:  # fmt: skip
    """One request per mode: what the first request of a mode holds the lock for, beyond its timed calls."""
    first = {}
    for mode, (run, images) in requests(studio, size, steps, full).items():
        if not args.modes or mode in args.modes:
            first[mode] = measure(recorder, run, images, 1)["other"]
            print(f"lock {mode} {size}px, first request: {first[mode]:.1f} ms/image", flush=True)
    return first


def run_modes(studio: Studio, recorder: LockRecorder, args: argparse.Namespace, size: int, steps: int, runs: int,
              full: bool, first: dict[str, float]) -> list[Row]:  # fmt: skip
    rows = []
    for mode, (run, images) in requests(studio, size, steps, full).items():
        if args.modes and mode not in args.modes:
            continue
        samples = [measure(recorder, run, images, 10 + i) for i in range(runs)]
        other = [sample["other"] for sample in samples]
        parts = {part: statistics.median(sample[part] for sample in samples) for part in PARTS}
        row = Row(mode, size, statistics.median(other), max(other), parts, first.get(mode))
        print(f"lock {mode} {size}px: {row.other_ms:.2f} ms/image for other work (max {row.max_ms:.2f}; "
              + ", ".join(f"{part} {ms:.2f}" for part, ms in parts.items()) + ")", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}", flush=True)
    instrument()
    rows: list[Row] = []
    if not args.skip_tiny:
        studio, recorder = make_studio("tiny", {"device": args.device})
        first = warm_up(studio, recorder, args, args.size, args.steps, full=False)
        rows += run_modes(studio, recorder, args, args.size, args.steps, args.runs, False, first)
        simulated = f", simulated GPU {args.simulate_gpu_ms:g} ms/image" if args.simulate_gpu_ms else ""
        for size in [] if args.skip_throughput else args.throughput_sizes:
            with simulated_gpu(args.simulate_gpu_ms) if simulated else contextlib.nullcontext():
                rates = throughput(studio, size, args.throughput_steps, args.throughput_runs)
            for name, rate in rates.items():
                print(f"throughput 8 concurrent tiny txt2img {size}px{simulated}, {name}: {rate:.2f} images/s")
    if args.full:
        studio, recorder = full_studio(args.device)
        first = warm_up(studio, recorder, args, args.full_warmup_size, args.full_steps, full=True)
        for size in args.full:
            rows += run_modes(studio, recorder, args, size, args.full_steps, args.full_runs, True, first)
    print()
    print("\n".join(table(rows)))


if __name__ == "__main__":
    main()
