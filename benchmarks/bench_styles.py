"""Personal styles: what a LoRA request costs, and that plain requests pay nothing once LoRAs have been used.

Two studios on the same checkpoint, one seed, txt2img end to end (validation, pipeline, PNG save): one cache never
runs a LoRA, the other runs LoRA requests (the first one, which loads the LoRA into the weight-sharing copies, is
timed apart). Then plain requests on both and LoRA requests are timed in alternation, so machine load falls on all
alike. Prints medians, the ratio plain-after-LoRAs / plain-never (goal <= 1.01: the base UNet and text encoder
carry no adapter) and the LoRA request's overhead over plain; checks that the plain image after LoRAs is the
plain image, pixel for pixel.

    .venv/bin/python benchmarks/bench_styles.py                         # tiny checkpoint, 64 px
    .venv/bin/python benchmarks/bench_styles.py --full --size 64 --steps 2 --runs 3   # SD1.5 architecture, CPU
    python benchmarks/bench_styles.py --full --device cuda --size 512 --steps 25 --runs 10 --out benchmarks/RESULTS.md

The SD1.5 architecture (random weights, `bench_studio.py` writes it once to .cache/bench-sd15-v1) gets a random
kohya-layout LoRA of rank 4 over its attention layers and text encoder (`studio.tiny_styles.kohya_lora`).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from studio.cache import ModelCache  # noqa: E402
from studio.engine.contract import Studio  # noqa: E402
from studio.engine.txt2img import Txt2ImgRequest, txt2img  # noqa: E402
from studio.outputs import Outputs  # noqa: E402
from studio.settings import Settings  # noqa: E402
from studio.tiny import write_all  # noqa: E402

PROMPT = "photo of a tailored wool coat, studio light"


def full_size_lora(folder: Path, base: Path) -> None:
    """A random rank-4 kohya LoRA shaped for the SD1.5 architecture (built on the meta device from its configs)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from studio.tiny_styles import kohya_lora

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(base / "unet"))
        text = CLIPTextModel(CLIPTextConfig.from_pretrained(base / "text_encoder"))
    tensors = {k: v * 0.05 for k, v in kohya_lora(unet, text).items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, folder / "house-look.safetensors")


def make_studio(args: argparse.Namespace) -> tuple[Studio, str]:
    tiny = write_all(REPO / ".cache" / "tiny")
    overrides: dict[str, object] = {
        "model": "tiny",
        "tiny_dir": tiny,
        "device": args.device,
        "outputs": Path(tempfile.mkdtemp(prefix="bench-styles-")),
        "preload": False,
        "batch_window_ms": 0,
        "lora_dir": tiny / "loras",
        "embeddings_dir": tiny / "embeddings",
    }
    name = "house-florals"
    if args.full:
        from bench_studio import full_size_folder

        base = full_size_folder() / "base"
        loras = Path(tempfile.mkdtemp(prefix="bench-styles-loras-"))
        full_size_lora(loras, base)
        overrides.update(model=str(base), lora_dir=loras)
        name = "house-look"
    settings = Settings.from_env({}, **overrides)
    return Studio(cache=ModelCache(settings), outputs=Outputs(settings.outputs)), name


def timed(studio: Studio, prompt: str, args: argparse.Namespace) -> tuple[float, np.ndarray]:
    req = Txt2ImgRequest(
        prompt=prompt, num_inference_steps=args.steps, width=args.size, height=args.size, seed=42, batch_size=1
    )
    if studio.cache.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = txt2img(studio, req)
    if studio.cache.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, np.asarray(result.images[0].image)


def alternating(pairs: list[tuple[Studio, str]], args: argparse.Namespace) -> list[float]:
    """Median ms of each (studio, prompt), timed in alternation (order flipped each round), so the machine's drift
    and other processes' load fall on every side alike."""
    times: list[list[float]] = [[] for _ in pairs]
    for round_ in range(args.runs):
        order = list(range(len(pairs)))[:: 1 if round_ % 2 == 0 else -1]
        for index in order:
            times[index].append(timed(*pairs[index], args)[0])
    return [statistics.median(t) * 1000 for t in times]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="the SD1.5 architecture instead of the tiny checkpoint")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--weight", type=float, default=0.8)
    parser.add_argument("--out", type=Path, help="append a markdown record to this file")
    args = parser.parse_args(argv)
    used, name = make_studio(args)
    # the tiny model: a second cache that never sees a LoRA, timed in alternation; the SD1.5 architecture (two would
    # not fit in a small machine's memory): the same cache before its first LoRA request
    fresh = make_studio(args)[0] if not args.full else used
    tagged = f"{PROMPT} <lora:{name}:{args.weight:g}>"
    _, before_image = timed(fresh, PROMPT, args)  # warm-up: the models are loaded
    timed(used, PROMPT, args)
    never = alternating([(fresh, PROMPT)], args)[0] if args.full else 0.0
    start = time.perf_counter()
    timed(used, tagged, args)  # the first LoRA request loads the LoRA into the copies
    first_lora = (time.perf_counter() - start) * 1000
    if args.full:
        after, lora = alternating([(used, PROMPT), (used, tagged)], args)
    else:
        never, after, lora = alternating([(fresh, PROMPT), (used, PROMPT), (used, tagged)], args)
    same = np.array_equal(before_image, timed(used, PROMPT, args)[1])
    model = "SD1.5 architecture" if args.full else "tiny"
    never_label = "plain txt2img, before any LoRA" if args.full else "plain txt2img, cache that never ran a LoRA"
    rows = [
        (never_label, f"{never:.1f} ms"),
        ("plain txt2img, cache after LoRA requests", f"{after:.1f} ms"),
        ("plain after LoRAs / plain never", f"**{after / never:.3f}** (goal <= 1.01)"),
        ("plain image after LoRAs == plain image", "pixel for pixel" if same else "DIFFERENT"),
        ("LoRA request", f"{lora:.1f} ms ({lora / after:.3f}x plain, +{lora - after:.1f} ms)"),
        ("first LoRA request (loads it into the copies)", f"{first_lora:.1f} ms"),
    ]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    command = "python benchmarks/bench_styles.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = [
        f"## Personal styles: plain requests after LoRAs, and a LoRA's cost (`benchmarks/bench_styles.py`, {model})",
        f"- Machine: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; command: `{command}`",
        f"- txt2img {args.size} px, {args.steps} steps, CFG 7, end to end (pipeline and PNG save); medians of "
        f"{args.runs} rounds, "
        + ("plain before, then plain and LoRA in alternation" if args.full else "the three requests in alternation"),
        "",
        "| measure | value |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in rows),
    ]
    text = "\n".join(record)
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
