"""PNG compress level: encode time vs file size of 768 px photo-like images, as the studio writes them (issue 22).

    .venv/bin/python benchmarks/bench_png.py              # levels 0-9, median of 7 encodes each, levels interleaved

The pictures are scikit-image's bundled photographs (no download), cropped square and scaled to 768 x 768 with
LANCZOS, as a generated 768 px image is decoded from 96 x 96 latents: astronaut (a portrait) and motorcycle (a
detailed object). Each encode writes the PNG with an A1111 `parameters` chunk into memory, as `Outputs.save` does
before its fsync. The studio's level is `STUDIO_PNG_LEVEL` (settings' `png_level`).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import PIL
import skimage
from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from studio.metadata import pnginfo  # noqa: E402

PHOTOS = ("astronaut.png", "motorcycle_left.png")
INFOTEXT = (
    "photo of a tailored wool coat, studio light\nNegative prompt: blurry\nSteps: 25, Sampler: DPM++ 2M, "
    "Schedule type: Karras, CFG scale: 7, Seed: 1, Size: 768x768, Model hash: 0123456789, Model: sd15, Mode: txt2img"
)


def photo(name: str, size: int) -> Image.Image:
    with Image.open(Path(skimage.__file__).parent / "data" / name) as image:
        return ImageOps.fit(image.convert("RGB"), (size, size), Image.Resampling.LANCZOS)


def encode(image: Image.Image, level: int) -> int:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=pnginfo(INFOTEXT), compress_level=level)
    return buffer.tell()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--levels", type=int, nargs="*", default=list(range(10)))
    args = parser.parse_args(argv)
    cpu = platform.processor() or platform.machine()
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; python {platform.python_version()}, Pillow {PIL.__version__}")
    images = {name.split("_")[0].removesuffix(".png"): photo(name, args.size) for name in PHOTOS}
    print(f"| level | {' | '.join(f'{n} ms | {n} KB' for n in images)} | size vs level 6 |")
    print(f"|---|{'---|---|' * len(images)}---|")
    times: dict[tuple[str, int], list[float]] = {(name, level): [] for name in images for level in args.levels}
    sizes = {(name, level): encode(image, level) for name, image in images.items() for level in (*args.levels, 6)}
    for _ in range(args.runs):  # levels interleaved, so the machine's drift reaches them all alike
        for (name, level), sink in times.items():
            start = time.perf_counter()
            encode(images[name], level)
            sink.append(time.perf_counter() - start)
    for level in args.levels:
        cells = [
            f"{statistics.median(times[name, level]) * 1000:.1f} | {sizes[name, level] / 1024:.0f}" for name in images
        ]
        ratios = "/".join(f"{sizes[name, level] / sizes[name, 6]:.2f}" for name in images)
        print(f"| {level} | {' | '.join(cells)} | {ratios} |")


if __name__ == "__main__":
    main()
