"""Atelier vs plain diffusers, side by side in one process: txt2img, restyle and inpaint speed, resident memory,
tab-switch cost.

    .venv/bin/python benchmarks/bench_studio.py --quick        # tiny checkpoint, 64 px, seconds (CI)
    .venv/bin/python benchmarks/bench_studio.py --sizes 256 --steps 3 --runs 2      # SD1.5 architecture on CPU
    .venv/bin/python benchmarks/bench_studio.py --device cuda --sizes 512 768 --steps 25 --batches 1 4 --runs 5 \
        --out benchmarks/RESULTS.md                             # the GPU benchmark

The model is a folder with the full SD1.5 architecture (UNet with cross_attention_dim=768, SD VAE, CLIP ViT-L/14
text encoder, and a ControlNet built from the UNet with `ControlNetModel.from_unet`) and random weights, written
once to .cache/bench-sd15: weights do not change speed. `--tiny` uses the tiny checkpoint instead.

Atelier runs through `studio.engine.*` (validation, seeds, metadata, PNG saving included); plain diffusers is a
`StableDiffusion*Pipeline` built with its constructor around the same modules (`--baseline shared`) or around a
fresh `from_pretrained` copy of the same folder (`--baseline separate`: nothing Atelier does to its modules can
reach it). Both use DPM++ 2M Karras, CFG 7 and CPU generators. Runs alternate (order flipped every run) after one
warm-up each; medians are reported. `STUDIO_*` environment variables reach the studio's settings (e.g. a compile
setting). The FLOP floor is counted on meta-device copies of the actual modules (torch's FlopCounterMode): UNet
(+ ControlNet) per step with CFG, plus VAE decode (and encode for inpaint); the text encoder is left out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import diffusers  # noqa: E402
import transformers  # noqa: E402
from diffusers import (  # noqa: E402
    ControlNetModel,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
)

from studio.cache import ModelCache  # noqa: E402
from studio.engine import inpaint as inpaint_engine  # noqa: E402
from studio.engine.batches import generators  # noqa: E402
from studio.engine.contract import Job, Studio  # noqa: E402
from studio.engine.inpaint import InpaintRequest, inpaint  # noqa: E402
from studio.engine.refine import RefineRequest, refine  # noqa: E402
from studio.engine.restyle import RestyleRequest, restyle  # noqa: E402
from studio.engine.textile import TextileRequest, textile  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest, txt2img  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.schedulers import DEFAULT_SAMPLER, get_sampler  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tensors import unique_param_bytes  # noqa: E402
from studio.tiny import write_all  # noqa: E402

PROMPT = "photo of a tailored wool coat, studio light"
CFG = 7.0
TINY_DIR = REPO / ".cache" / "tiny"
FULL_DIR = REPO / ".cache" / "bench-sd15-v1"
SPEED_MODES = ("txt2img", "restyle", "inpaint")
SECTIONS = (*SPEED_MODES, "memory", "switch")


# ---- the model ------------------------------------------------------------------------------------------------------
def full_size_folder() -> Path:
    """SD1.5 architecture + ControlNet.from_unet, random weights, saved once in fp16 (the dtype is chosen at load)."""
    if (FULL_DIR / "complete").is_file():
        return FULL_DIR
    from bench_txt2img import full_size_pipeline

    print(f"writing the SD1.5-architecture folder (random weights) to {FULL_DIR} ...", flush=True)
    pipe = full_size_pipeline("cpu")
    controlnet = ControlNetModel.from_unet(pipe.unet)
    pipe.to(torch.float16).save_pretrained(FULL_DIR / "base")
    controlnet.to(torch.float16).save_pretrained(FULL_DIR / "controlnet")
    (FULL_DIR / "complete").write_text("ok\n")
    return FULL_DIR


def make_studio(args: argparse.Namespace) -> Studio:
    tiny = write_all(TINY_DIR)
    overrides: dict[str, Any] = {
        "model": "tiny",
        "tiny_dir": tiny,
        "device": args.device,
        "dtype": args.dtype,
        "outputs": Path(tempfile.mkdtemp(prefix="bench-studio-")),
        "preload": False,
    }
    if not args.tiny:
        folder = full_size_folder()
        overrides.update(
            model=str(folder / "base"),
            controlnet_model=str(folder / "controlnet"),
            annotator_model=str(tiny / "annotator"),
        )  # HED has one fixed size: the tiny file is real
    env = {key: value for key, value in os.environ.items() if key.startswith("STUDIO_")}
    settings = Settings.from_env(env, **overrides)
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs))


def plain_pipelines(studio: Studio, baseline: str) -> dict[str, Any]:
    """Plain diffusers pipelines for the speed comparison, built with their own constructors."""
    cache = studio.cache
    base, controlnet = cache.base(), cache.slot("controlnet")
    modules = dict(base.components)
    if baseline == "separate":
        dtype = torch.float16 if cache.device.type == "cuda" else torch.float32  # diffusers' documented recipe
        fresh = StableDiffusionPipeline.from_pretrained(
            cache.checkpoint().source, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
        modules = dict(fresh.to(cache.device).components)
        controlnet = ControlNetModel.from_pretrained(cache.companion_source("controlnet"), torch_dtype=dtype).to(
            cache.device
        )
    pipes = {}
    for mode, cls, extra in (
        ("txt2img", StableDiffusionPipeline, {}),
        ("inpaint", StableDiffusionInpaintPipeline, {}),
        ("restyle", StableDiffusionControlNetPipeline, {"controlnet": controlnet}),
    ):
        scheduler = get_sampler(DEFAULT_SAMPLER).build(base.scheduler.config)
        pipe = cls(**{**modules, "scheduler": scheduler, **extra})
        pipe.set_progress_bar_config(disable=True)
        pipes[mode] = pipe
    return pipes


# ---- inputs ---------------------------------------------------------------------------------------------------------
def sketch(size: int) -> Image.Image:
    """White lines on black, as a soft-edge map looks: the ControlNet's condition."""
    image = Image.new("RGB", (size, size), "black")
    s = size
    ImageDraw.Draw(image).polygon(
        [(s * 0.4, s * 0.1), (s * 0.6, s * 0.1), (s * 0.85, s * 0.9), (s * 0.15, s * 0.9)],
        outline="white",
        width=max(1, s // 64),
    )
    return image


def photo(size: int) -> Image.Image:
    image = Image.linear_gradient("L").resize((size, size)).convert("RGB")
    ImageDraw.Draw(image).ellipse((size * 0.3, size * 0.2, size * 0.7, size * 0.8), fill=(150, 40, 60))
    return image


def mask(size: int) -> Image.Image:
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).rectangle((size // 4, size // 4, 3 * size // 4, 3 * size // 4), fill=255)
    return image


# ---- one call, timed ------------------------------------------------------------------------------------------------
@dataclass
class Sample:
    seconds: float
    step_s: float  # median time between consecutive step callbacks (one UNet step, CFG batch)
    peak: int | None  # CUDA only: bytes allocated at the call's peak beyond what was allocated before it


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device: torch.device, run: Callable[[Callable[[], None]], Any]) -> Sample:
    """Run `run(tick)`; `tick` is called after every denoising step."""
    stamps: list[float] = []

    def tick() -> None:
        sync(device)
        stamps.append(time.perf_counter())

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    before = torch.cuda.memory_allocated(device) if cuda else 0
    start = time.perf_counter()
    run(tick)
    sync(device)
    seconds = time.perf_counter() - start
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    peak = torch.cuda.max_memory_allocated(device) - before if cuda else None
    return Sample(seconds, statistics.median(steps) if steps else seconds / max(1, len(stamps)), peak)


def callback(tick: Callable[[], None]) -> Callable[..., dict[str, Any]]:
    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        tick()
        return kwargs

    return on_step_end


def job(tick: Callable[[], None]) -> Job:
    return Job(on_step=lambda step, total: tick())


# ---- what each side runs --------------------------------------------------------------------------------------------
Runner = Callable[[Callable[[], None]], Any]


def runners(mode: str, studio: Studio, plain: Any, size: int, steps: int, batch: int) -> tuple[Runner, Runner]:
    """(Atelier, plain diffusers) for one mode at one size and batch; same prompt, seeds, steps and CFG."""
    same = {"prompt": PROMPT, "num_inference_steps": steps, "guidance_scale": CFG, "seed": 1, "batch_size": batch}
    plain_kw = {
        "prompt": PROMPT,
        "negative_prompt": "",
        "num_inference_steps": steps,
        "guidance_scale": CFG,
        "width": size,
        "height": size,
        "num_images_per_prompt": batch,
        "output_type": "pil",
    }
    gens = lambda: generators([1 + i for i in range(batch)])  # noqa: E731
    if mode == "txt2img":
        req = Txt2ImgRequest(width=size, height=size, **same)
        return (
            lambda tick: txt2img(studio, req, job(tick)),
            lambda tick: plain(**plain_kw, generator=gens(), callback_on_step_end=callback(tick)),
        )
    if mode == "restyle":
        edges = sketch(size)
        req = RestyleRequest(image=edges, preprocessor="none", width=size, height=size, **same)
        return (
            lambda tick: restyle(studio, req, job(tick)),
            lambda tick: plain(**plain_kw, image=edges, generator=gens(), callback_on_step_end=callback(tick)),
        )
    picture, region = photo(size), mask(size)
    req = InpaintRequest(image=picture, mask_image=region, strength=1.0, **same)
    return (
        lambda tick: inpaint(studio, req, job(tick)),
        lambda tick: plain(
            **plain_kw,
            image=picture,
            mask_image=region,
            strength=1.0,
            generator=gens(),
            callback_on_step_end=callback(tick),
        ),
    )


def alternate(device: torch.device, ours: Runner, theirs: Runner, runs: int) -> tuple[list[Sample], list[Sample]]:
    """One warm-up each, then `runs` pairs, the order flipped every run so drift hits both sides alike."""
    timed(device, ours), timed(device, theirs)
    a: list[Sample] = []
    b: list[Sample] = []
    for run in range(runs):
        pair = ((ours, a), (theirs, b)) if run % 2 == 0 else ((theirs, b), (ours, a))
        for fn, sink in pair:
            sink.append(timed(device, fn))
    return a, b


# ---- FLOPs ----------------------------------------------------------------------------------------------------------
class FlopCounter:
    """FLOPs of the studio's own module architectures, counted on meta-device copies built from their configs."""

    def __init__(self, studio: Studio) -> None:
        from diffusers import AutoencoderKL, UNet2DConditionModel

        base = studio.cache.base()
        self.text_dim = base.unet.config.cross_attention_dim
        self.factor = base.vae_scale_factor
        with torch.device("meta"):
            self.unet = UNet2DConditionModel.from_config(base.unet.config)
            self.vae = AutoencoderKL.from_config(base.vae.config)
            self.controlnet = ControlNetModel.from_config(studio.cache.slot("controlnet").config)

    @staticmethod
    def _count(fn: Callable[[], Any]) -> int:
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter, torch.no_grad():
            fn()
        return counter.get_total_flops()

    def request(self, mode: str, size: int, steps: int, batch: int) -> float:
        """Minimum FLOPs of one request: CFG doubles the UNet (and ControlNet) batch."""
        meta = {"device": "meta"}
        latents = torch.empty(2 * batch, 4, size // self.factor, size // self.factor, **meta)
        text = torch.empty(2 * batch, 77, self.text_dim, **meta)
        t = torch.tensor([500], **meta)
        per_step = self._count(lambda: self.unet(latents, t, encoder_hidden_states=text))
        if mode == "restyle":
            cond = torch.empty(2 * batch, 3, size, size, **meta)
            per_step += self._count(
                lambda: self.controlnet(latents, t, encoder_hidden_states=text, controlnet_cond=cond)
            )
        total = steps * per_step + self._count(lambda: self.vae.decode(latents[:batch]))
        if mode == "inpaint":
            total += self._count(lambda: self.vae.encode(torch.empty(1, 3, size, size, **meta)))
        return float(total)


# ---- sections -------------------------------------------------------------------------------------------------------
@dataclass
class Report:
    speed: list[dict[str, Any]] = field(default_factory=list)
    memory: list[tuple[str, str]] = field(default_factory=list)
    switch: list[dict[str, Any]] = field(default_factory=list)


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f} MiB"


def speed_row(
    mode: str,
    size: int,
    batch: int,
    flops: float,
    peak_tflops: float | None,
    sides: dict[str, tuple[list[Sample], int]],
) -> dict[str, Any]:
    """Medians per side; peak memory = that side's own weights + the call's largest working memory."""
    row: dict[str, Any] = {"mode": mode, "size": size, "batch": batch}
    for side, (samples, weights) in sides.items():
        seconds = statistics.median(s.seconds for s in samples)
        peaks = [s.peak for s in samples if s.peak is not None]
        row[side] = {
            "ms_image": seconds * 1000 / batch,
            "it_s": 1 / statistics.median(s.step_s for s in samples),
            "peak": weights + max(peaks) if peaks else None,
            "tflop_s": flops / seconds / 1e12,
            "floor_pct": None if peak_tflops is None else 100 * flops / (peak_tflops * 1e12) / seconds,
        }
    row["speedup"] = row["diffusers"]["ms_image"] / row["atelier"]["ms_image"]
    return row


def print_speed(row: dict[str, Any], steps: int) -> None:
    a, d = row["atelier"], row["diffusers"]
    pct = "" if a["floor_pct"] is None else f", floor {a['floor_pct']:.1f}% vs {d['floor_pct']:.1f}%"
    print(
        f"ratio {row['mode']} {row['size']}px batch {row['batch']} {steps} steps: Atelier {a['ms_image']:.1f} "
        f"ms/image, diffusers {d['ms_image']:.1f} ms/image, speedup {row['speedup']:.3f}x | it/s "
        f"{a['it_s']:.2f} vs {d['it_s']:.2f} | peak {mib(a['peak'])} vs {mib(d['peak'])}{pct}",
        flush=True,
    )


def bench_speed(args: argparse.Namespace, studio: Studio, report: Report) -> None:
    plain = plain_pipelines(studio, args.baseline)
    counter = FlopCounter(studio)
    with studio.cache.gpu():
        weights = {mode: unique_param_bytes(owners[0]) for mode, owners in mode_pipelines(studio).items()}
    for mode in (m for m in SPEED_MODES if m in args.sections):
        for size in args.sizes:
            for batch in args.batches:
                ours, theirs = runners(mode, studio, plain[mode], size, args.steps, batch)
                a, b = alternate(studio.cache.device, ours, theirs, args.runs)
                flops = counter.request(mode, size, args.steps, batch)
                sides = {"atelier": (a, weights[mode]), "diffusers": (b, unique_param_bytes(plain[mode]))}
                row = speed_row(mode, size, batch, flops, args.peak_tflops, sides)
                print_speed(row, args.steps)
                report.speed.append(row)


def mode_pipelines(studio: Studio) -> dict[str, list[Any]]:
    """What each of the five modes holds: loading them all into the studio, and what a separate
    `from_pretrained` pipeline per mode would hold (the same components, each loaded on its own)."""
    cache = studio.cache
    return {
        "txt2img": [cache.derive(StableDiffusionPipeline)],
        "refine": [cache.derive(StableDiffusionImg2ImgPipeline)],
        "textile": [cache.derive(StableDiffusionPipeline)],
        "inpaint": [inpaint_engine.pipeline(studio, DEFAULT_SAMPLER)],
        "restyle": [
            cache.derive(StableDiffusionControlNetPipeline, controlnet=cache.slot("controlnet")),
            cache.slot("annotator"),
        ],
    }


def bench_memory(args: argparse.Namespace, studio: Studio, report: Report) -> None:
    with studio.cache.gpu():
        modes = mode_pipelines(studio)
        resident = studio.cache.resident_bytes()
    separate = {mode: unique_param_bytes(*owners) for mode, owners in modes.items()}
    total = sum(separate.values())
    rows = [("Atelier, all five modes loaded (cache.resident_bytes)", mib(resident))]
    rows += [(f"separate pipeline: {mode}", mib(size)) for mode, size in separate.items()]
    rows += [("sum of five separate pipelines", mib(total)), ("ratio separate / Atelier", f"{total / resident:.2f}x")]
    if studio.cache.device.type == "cuda":
        rows.append(
            (
                "CUDA memory allocated now (Atelier + baseline copies, if any)",
                mib(torch.cuda.memory_allocated(studio.cache.device)),
            )
        )
    print(
        f"ratio memory: Atelier {mib(resident)} resident with all five modes, separate pipelines {mib(total)}, "
        f"{total / resident:.2f}x",
        flush=True,
    )
    report.memory = rows


def mode_runs(studio: Studio, size: int, steps: int) -> dict[str, Runner]:
    same = {"prompt": PROMPT, "num_inference_steps": steps, "guidance_scale": CFG, "seed": 1}
    picture = photo(size)
    return {
        "txt2img": lambda tick: txt2img(studio, Txt2ImgRequest(width=size, height=size, **same), job(tick)),
        "refine": lambda tick: refine(studio, RefineRequest(image=picture, **same), job(tick)).images,
        "textile": lambda tick: textile(studio, TextileRequest(width=size, height=size, **same), job(tick)),
        "inpaint": lambda tick: inpaint(
            studio, InpaintRequest(image=picture, mask_image=mask(size), **same), job(tick)
        ),
        "restyle": lambda tick: restyle(
            studio, RestyleRequest(image=picture, width=size, height=size, **same), job(tick)
        ),
    }


def bench_switch(args: argparse.Namespace, studio: Studio, report: Report) -> None:
    """Cycle through the five tabs `runs` times, each mode twice in a row: the first call after a switch vs the
    repeat. The first cycle also loads companions (ControlNet, annotator) and is reported as 'first use'."""
    size, device = args.sizes[0], studio.cache.device
    runs = mode_runs(studio, size, args.steps)
    first: dict[str, float] = {}
    switched: dict[str, list[float]] = {mode: [] for mode in runs}
    repeated: dict[str, list[float]] = {mode: [] for mode in runs}
    for cycle in range(max(2, args.runs)):
        for mode, run in runs.items():
            after_switch = timed(device, run).seconds
            if cycle:
                switched[mode].append(after_switch)
            else:
                first[mode] = after_switch
            repeated[mode].append(timed(device, run).seconds)
    for mode in runs:
        row = {
            "mode": mode,
            "first": first[mode],
            "switch": statistics.median(switched[mode]),
            "repeat": statistics.median(repeated[mode]),
        }
        print(
            f"ratio switch {mode} {size}px: first use {row['first'] * 1000:.1f} ms, after switching "
            f"{row['switch'] * 1000:.1f} ms, repeat {row['repeat'] * 1000:.1f} ms, switch/repeat "
            f"{row['switch'] / row['repeat']:.3f}",
            flush=True,
        )
        report.switch.append(row)


# ---- the record -----------------------------------------------------------------------------------------------------
def machine(device: torch.device) -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    text = f"{cpu}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"
    if device.type == "cuda":
        text = f"{torch.cuda.get_device_name(device)}; {text}"
    return text


def markdown(args: argparse.Namespace, studio: Studio, report: Report) -> str:
    cache = studio.cache
    lines = [
        f"## {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {cache.device.type}"
        f"{' (tiny checkpoint)' if args.tiny else ' (SD1.5 architecture, random weights)'}",
        "",
        f"- Machine: {machine(cache.device)}",
        f"- torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}",
        f"- Atelier dtype {str(cache.dtype).removeprefix('torch.')}, baseline {args.baseline}, {args.steps} "
        f"steps, CFG {CFG:g}, {DEFAULT_SAMPLER}, median of {args.runs}",
        f"- Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`",
        "",
    ]
    if report.speed:
        lines += [
            "| mode | px | batch | Atelier ms/img | diffusers ms/img | speedup | it/s A / d | peak A / d "
            "| TFLOP/s A / d | % floor A / d |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report.speed:
            a, d = r["atelier"], r["diffusers"]
            pct = "-" if a["floor_pct"] is None else f"{a['floor_pct']:.1f} / {d['floor_pct']:.1f}"
            lines.append(
                f"| {r['mode']} | {r['size']} | {r['batch']} | {a['ms_image']:.1f} | {d['ms_image']:.1f} "
                f"| {r['speedup']:.3f}x | {a['it_s']:.2f} / {d['it_s']:.2f} | {mib(a['peak'])} / "
                f"{mib(d['peak'])} | {a['tflop_s']:.2f} / {d['tflop_s']:.2f} | {pct} |"
            )
        lines.append("")
    if report.memory:
        lines += ["| resident parameters | bytes |", "|---|---|", *(f"| {k} | {v} |" for k, v in report.memory), ""]
    if report.switch:
        lines += [
            f"| tab switch ({args.sizes[0]} px) | first use ms | after switch ms | repeat ms | switch/repeat |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['mode']} | {r['first'] * 1000:.1f} | {r['switch'] * 1000:.1f} | {r['repeat'] * 1000:.1f} "
            f"| {r['switch'] / r['repeat']:.3f} |"
            for r in report.switch
        ]
        lines.append("")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"], help="Atelier's dtype")
    parser.add_argument("--sizes", type=int, nargs="+", help="square sides in px (default 512 768; quick: 64)")
    parser.add_argument("--steps", type=int, help="denoising steps (default 25; quick: 3)")
    parser.add_argument("--batches", type=int, nargs="+", help="images per call (default 1 4; quick: 1)")
    parser.add_argument("--runs", type=int, help="timed runs per side, median reported (default 5; quick: 2)")
    parser.add_argument("--tiny", action="store_true", help="the tiny checkpoint instead of the SD1.5 architecture")
    parser.add_argument("--quick", action="store_true", help="tiny, 64 px, 3 steps, batch 1, 2 runs (CI)")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument(
        "--baseline",
        choices=["auto", "shared", "separate"],
        default="auto",
        help="plain pipelines around Atelier's modules, or a fresh from_pretrained copy "
        "(auto: separate on CUDA, shared on CPU)",
    )
    parser.add_argument(
        "--peak-tflops",
        type=float,
        help="device peak for %% of the FLOP floor (default: 790 on CUDA, the H100's measured bf16 peak; none on CPU)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's; quick: 1, which keeps tiny runs fast on a busy CI machine)",
    )
    parser.add_argument("--out", type=Path, help="append a markdown record to this file (e.g. benchmarks/RESULTS.md)")
    args = parser.parse_args(argv)
    quick = {"sizes": [64], "steps": 3, "batches": [1], "runs": 2, "threads": 1}
    full = {"sizes": [512, 768], "steps": 25, "batches": [1, 4], "runs": 5, "threads": torch.get_num_threads()}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.tiny = args.tiny or args.quick
    cuda = args.device.startswith("cuda")
    if args.baseline == "auto":
        args.baseline = "separate" if cuda else "shared"
    if args.peak_tflops is None and cuda:
        args.peak_tflops = 790.0
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)
    torch.set_num_threads(args.threads)
    diffusers.utils.logging.set_verbosity_error()  # from_pipe's per-call dtype notes would bury the results
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    studio = make_studio(args)
    base = studio.cache.base()
    print(
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, device {studio.cache.device}, dtype "
        f"{studio.cache.dtype}, baseline {args.baseline}, UNet "
        f"{sum(p.numel() for p in base.unet.parameters()) / 1e6:.1f} M parameters",
        flush=True,
    )
    report = Report()
    try:
        if any(mode in args.sections for mode in SPEED_MODES):
            bench_speed(args, studio, report)
        if "memory" in args.sections:
            bench_memory(args, studio, report)
        if "switch" in args.sections:
            bench_switch(args, studio, report)
    finally:
        shutil.rmtree(studio.outputs.root, ignore_errors=True)  # the PNGs were saved (and timed), not needed
    if args.out:
        with args.out.open("a", encoding="utf-8") as handle:
            handle.write(markdown(args, studio, report))
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
