"""Image prompt (IP-Adapter) vs plain txt2img: time per denoising step at the same size.

    .venv/bin/python benchmarks/bench_ipadapter.py               # tiny twin through the studio + SD1.5 @256 on CPU
    .venv/bin/python benchmarks/bench_ipadapter.py --skip-full   # tiny only
    .venv/bin/python benchmarks/bench_ipadapter.py --device cuda --size 512   # when a GPU is lent

Per-step time is taken between step callbacks (text and picture encoding and VAE decoding excluded; the first step
of each run dropped as warm-up). The full-size run loads the SD1.5 architecture with random weights
(`.cache/bench-sd15-v1`, written by bench_studio.py) and writes IP-Adapter files with the real files' shapes
(ip-adapter_sd15: 4 tokens of 768 from a 1024-d embedding; plus: a 16-query Resampler of width 768 over 257x1280
hidden states) into a temporary h94 layout, loaded by `studio.ip_adapter.adapted_unet` (diffusers'
`load_ip_adapter`) as the studio loads them; the pictures' embeddings are random tensors of the encoder's shapes
(the encoder runs once per request, not per step).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_restyle import step_times  # noqa: E402

from studio import ip_adapter, tiny_ipadapter  # noqa: E402

FULL_DIR = REPO / ".cache" / "bench-sd15-v1" / "base"  # written by bench_studio.py
log = logging.getLogger("bench_ipadapter")


def interleaved(runs: dict[str, Callable[[Callable[..., Any]], None]], rounds: int) -> dict[str, float]:
    """Median seconds per step of each run, the runs taking turns round after round (a shared machine's load then
    falls on every case alike instead of on whichever ran during a busy minute)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            times[name] += step_times(run)
    return {name: statistics.median(samples) for name, samples in times.items()}


def bench_tiny(steps: int, repeats: int, device: str) -> dict[str, float]:
    from studio.cache import ModelCache
    from studio.engine.contract import Job, Studio
    from studio.engine.txt2img import Txt2ImgRequest, txt2img
    from studio.outputs import Outputs
    from studio.settings import Settings

    out = Path(tempfile.mkdtemp(prefix="bench-ipa-"))
    settings = Settings.from_env(
        {}, model="tiny", tiny_dir=REPO / ".cache" / "tiny", outputs=out, preload=False, device=device
    )
    studio = Studio(cache=ModelCache(settings), outputs=Outputs(out))
    picture = Image.effect_noise((48, 48), 60).convert("RGB")
    common: dict[str, Any] = {"prompt": "a coat", "num_inference_steps": steps, "scheduler": "Euler", "seed": 1,
                              "width": 64, "height": 64}  # fmt: skip
    requests = {
        "txt2img": Txt2ImgRequest(**common),
        "ip-adapter_sd15, 1 picture": Txt2ImgRequest(**common, ip_adapter_image=(picture,)),
        "ip-adapter_sd15, 2 pictures": Txt2ImgRequest(**common, ip_adapter_image=(picture, picture)),
        "ip-adapter-plus_sd15, 1 picture": Txt2ImgRequest(
            **common, ip_adapter_image=(picture,), ip_adapter_model="ip-adapter-plus_sd15"
        ),
    }
    for req in requests.values():  # warm-up: loads the encoder and both adapters
        txt2img(studio, req)
    runs = {name: (lambda on_step, r=req: txt2img(studio, r, Job(on_step=on_step))) for name, req in requests.items()}
    return interleaved(runs, repeats)  # type: ignore[arg-type]


def write_full_adapters(unet: Any, folder: Path) -> None:
    from safetensors.torch import save_file

    models = folder / ip_adapter.WEIGHTS_SUBFOLDER
    models.mkdir(parents=True, exist_ok=True)
    widths = tiny_ipadapter.cross_attention_widths(unet)
    plain = tiny_ipadapter.plain_state(widths, 768, 1024)
    plus = tiny_ipadapter.plus_state(widths, 768, 1280, width=768)
    save_file(plain, str(models / ip_adapter.MODELS["ip-adapter_sd15"]))
    save_file(plus, str(models / ip_adapter.MODELS["ip-adapter-plus_sd15"]))


def bench_full(size: int, steps: int, repeats: int, device: str) -> dict[str, float]:
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline

    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    base = StableDiffusionPipeline.from_pretrained(FULL_DIR, torch_dtype=dtype).to(device)
    base.set_progress_bar_config(disable=True)
    folder = Path(tempfile.mkdtemp(prefix="bench-ipa-full-"))
    write_full_adapters(base.unet, folder)
    # any encoder already held stops `load_ip_adapter` from loading one (the tiny twin's; it is not run here)
    held = ip_adapter.load_encoder(str(REPO / ".cache" / "tiny" / "ip_adapter"), dtype, torch.device(device))
    adapted = {model: ip_adapter.adapted_unet(base.components, base.unet, held, str(folder), model).to(device)
               for model in ip_adapter.MODELS}  # fmt: skip
    cond = {"ip-adapter_sd15": torch.randn(1, 1024), "ip-adapter-plus_sd15": torch.randn(1, 257, 1280)}

    def run(model: str | None, pictures: int) -> Callable[[Callable[..., Any]], None]:
        pipe = base
        extra: dict[str, Any] = {}
        if model is not None:
            pipe = StableDiffusionPipeline.from_pipe(base, unet=adapted[model], torch_dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            pair = (cond[model].to(device, dtype), torch.zeros_like(cond[model]).to(device, dtype))
            pipe.set_ip_adapter_scale([0.6] * pictures + [0.0] * (ip_adapter.MAX_IMAGES - pictures))
            extra = {"ip_adapter_image_embeds": ip_adapter.image_embeds([pair] * pictures, cfg=True)}
        pipe.scheduler = EulerDiscreteScheduler.from_config(base.scheduler.config)

        def call(on_step: Callable[..., Any]) -> None:
            pipe("a coat", num_inference_steps=steps, height=size, width=size, output_type="latent",
                 generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda p, i, t, k: on_step() or k,
                 **extra)  # fmt: skip

        return call

    cases = {
        "txt2img": (None, 0),
        "ip-adapter_sd15, 1 picture": ("ip-adapter_sd15", 1),
        "ip-adapter_sd15, 2 pictures": ("ip-adapter_sd15", 2),
        "ip-adapter-plus_sd15, 1 picture": ("ip-adapter-plus_sd15", 1),
    }
    with torch.inference_mode():
        runs = {name: run(*case) for name, case in cases.items()}
        runs["txt2img"](lambda: None)  # warm-up: the weights paged in and converted before any timing
        return interleaved(runs, repeats)


def report(title: str, results: dict[str, float]) -> None:
    plain = results["txt2img"]
    print(f"\n{title}")
    for name, seconds in results.items():
        print(f"  {name:34s} {seconds * 1000:9.1f} ms/step  x{seconds / plain:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--full-steps", type=int, default=4)
    parser.add_argument("--full-rounds", type=int, default=3)
    parser.add_argument("--skip-full", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_grad_enabled(False)
    report(f"tiny twin, 64 px, {args.device}", bench_tiny(args.steps, args.repeats, args.device))
    if not args.skip_full:
        title = f"SD1.5 architecture, {args.size} px, CFG, {args.device}"
        report(title, bench_full(args.size, args.full_steps, args.full_rounds, args.device))


if __name__ == "__main__":
    main()
