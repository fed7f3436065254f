"""Studio settings: one frozen object, built from `STUDIO_*` environment variables and command-line flags.

Nothing writes to settings at run time; tests build them from a plain dict with `Settings.from_env({...})`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_CACHE = Path(os.path.expanduser("~/.cache/atelier"))
DEFAULT_PNG_LEVEL = 4  # see Settings.png_level
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class SettingsError(ValueError):
    """A setting has a value the studio cannot use; the message names the setting and the fix."""


@dataclass(frozen=True)
class Limits:
    """Server-side limits, re-checked on every request (API callers skip the sliders)."""

    max_pixels: int = 1024 * 1024
    max_side: int = 2048
    max_steps: int = 150
    max_batch_size: int = 8
    max_batch_count: int = 16
    max_upload_mb: int = 25
    max_prompt_chars: int = 8000


@dataclass(frozen=True)
class Settings:
    model: str = "dreamlike-photoreal-2.0"
    # Choices offered by the UI's model switcher (registry names, or operator-given folders/files).
    model_choices: tuple[str, ...] = ("dreamlike-photoreal-2.0", "sd15")
    inpaint_model: str | None = None  # a 9-channel inpainting checkpoint; None → derive from the base
    controlnet_model: str | None = None  # None → the registry's HED ControlNet for the base's family
    annotator_model: str | None = None  # None → lllyasviel/Annotators (or the tiny twin)
    device: str = "auto"
    dtype: str = "auto"
    # GPU fast path (studio.fastpath): channels-last memory format ("auto" = on for CUDA), torch.compile of the
    # UNet/ControlNet, and a live latent preview every `preview_every` denoising steps (0 = off)
    channels_last: str = "auto"
    compile: bool = False
    preview_every: int = 5
    # Live previews: "auto" = TAESD when it is at hand (never downloaded), "latent" = latent factors, or a folder
    preview_decoder: str = "auto"
    # zlib level of every PNG written, 0-9 (STUDIO_PNG_LEVEL). 4: files the size of PIL's default 6 (within 1 %)
    # in 40 % of its time on 768 px photos; 1 takes 18 % of it, files ~10 % larger (benchmarks/bench_png.py)
    png_level: int = DEFAULT_PNG_LEVEL
    outputs: Path = Path("outputs")
    tiny_dir: Path = DEFAULT_CACHE / "tiny"
    # The operator's personal styles (studio.styles): LoRA .safetensors files, and textual-inversion embeddings
    lora_dir: Path = DEFAULT_CACHE / "loras"
    embeddings_dir: Path = DEFAULT_CACHE / "embeddings"
    # Super-resolution model files (.pth / .safetensors, ESRGAN family) the Upscale tab and print export offer
    upscalers_dir: Path = DEFAULT_CACHE / "upscalers"
    # Train a style (studio.training): private checkpoints of running trainings, and whether training may run on
    # the CPU (hours on SD 1.5; off by default: a request without a GPU is answered with the estimated time)
    train_dir: Path = DEFAULT_CACHE / "training"
    train_on_cpu: bool = False
    host: str = "127.0.0.1"
    port: int = 7860
    queue_size: int = 16
    max_resident_models: int = 1
    auth: tuple[str, str] | None = None
    share: bool = False
    public_demo: bool = False
    preload: bool = True
    open_browser: bool = False
    space: bool = False  # running on a Hugging Face Space (SPACE_ID set): the platform fronts the public address
    default_negative_prompt: str = ""
    # txt2img requests arriving within this window (ms) of each other share one UNet batch; 0 = off
    batch_window_ms: int = 40
    # A ZeroGPU Space (SPACES_ZERO_GPU set by the platform): GPU work runs in forked workers (studio.zerogpu)
    zero_gpu: bool = False
    zero_gpu_duration: int = 120  # seconds of GPU a call asks ZeroGPU for
    # Where the modes run (studio.serve): "local" = this process (the default), "ray" = an Engine deployment on a
    # Ray Serve cluster at `ray_address` ("auto": the cluster this machine runs), application `ray_app`.
    engine: str = "local"
    ray_address: str = "auto"
    ray_app: str = "atelier"
    # The deployment (`python -m studio.serve up`): replicas between min and max, scaled on ongoing requests per
    # replica (0: the batch size); requests a replica takes at once (0: the batch size, so little waits inside it)
    ray_min_replicas: int = 1
    ray_max_replicas: int = 1
    ray_target_ongoing: int = 0
    ray_max_ongoing: int = 0
    ray_retries: int = 3  # a request whose replica died is sent again this many times (same seed, same result)
    ray_threads: int = 0  # torch threads per CPU replica (0: the node's cores shared among the replicas)
    limits: Limits = field(default_factory=Limits)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from `STUDIO_*` variables (a dict in tests), then apply explicit overrides."""
        env = os.environ if env is None else env
        values: dict[str, object] = space_defaults() if env.get("SPACE_ID") else {}
        if _parse("zero_gpu", env.get("SPACES_ZERO_GPU", "")):
            values.update(zero_gpu_defaults())
        limit_values: dict[str, int] = {}
        for f in dataclasses.fields(cls):
            if f.name == "limits":
                continue
            raw = env.get(f"STUDIO_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, raw)
        for f in dataclasses.fields(Limits):
            raw = env.get(f"STUDIO_{f.name.upper()}")
            if raw is not None:
                limit_values[f.name] = _parse_int(f.name, raw)
        path_fields = {f.name for f in dataclasses.fields(cls) if "Path" in str(f.type)}
        for key, value in overrides.items():
            if value is not None:
                values[key] = Path(str(value)).expanduser() if key in path_fields else value
        if limit_values:
            values["limits"] = dataclasses.replace(Limits(), **limit_values)
        settings = cls(**values)  # type: ignore[arg-type]  # mixed field types, each parsed per its field
        settings.validate()
        return settings

    @property
    def max_ongoing(self) -> int:
        """Requests one replica takes at once: enough for a full batch of the batcher."""
        return self.ray_max_ongoing or self.limits.max_batch_size

    @property
    def engine_concurrency(self) -> int:
        """How many runs of one mode the front lets wait at once: one for the local GPU lock (a batcher raises
        txt2img's), every slot of every replica with Ray."""
        return 1 if self.engine == "local" else self.ray_max_replicas * self.max_ongoing

    @property
    def exposed(self) -> bool:
        """Reachable from beyond this machine: bound to a non-loopback address, or shared through a Gradio link."""
        return self.share or self.host not in LOOPBACK

    def validate(self) -> None:
        if self.public_demo and not self.default_negative_prompt:
            raise SettingsError("A public demo needs a default negative prompt (STUDIO_DEFAULT_NEGATIVE_PROMPT).")
        if self.auth is None and self.exposed and not self.space:
            raise SettingsError(
                "Serving beyond this machine (--listen, --host or --share) requires --auth USER:PASSWORD."
            )
        if self.batch_window_ms < 0:
            raise SettingsError("STUDIO_BATCH_WINDOW_MS must be 0 (batching off) or more.")
        if self.max_resident_models < 1:
            raise SettingsError("STUDIO_MAX_RESIDENT_MODELS must be at least 1.")
        if self.device not in ("auto", "cpu", "cuda", "mps") and not self.device.startswith("cuda:"):
            raise SettingsError(f"Unknown device {self.device!r}: use auto, cpu, cuda, cuda:N or mps.")
        if self.dtype not in ("auto", "fp32", "fp16", "bf16"):
            raise SettingsError(f"Unknown dtype {self.dtype!r}: use auto, fp32, fp16 or bf16.")
        if self.channels_last not in ("auto", "on", "off"):
            raise SettingsError(f"STUDIO_CHANNELS_LAST must be auto, on or off; got {self.channels_last!r}.")
        if self.engine not in ("local", "ray"):
            raise SettingsError(f"Unknown engine {self.engine!r}: use local (this process) or ray (Ray Serve).")
        if not 1 <= self.ray_min_replicas <= self.ray_max_replicas:
            raise SettingsError(
                f"Ray replicas: need 1 <= STUDIO_RAY_MIN_REPLICAS ({self.ray_min_replicas}) <= "
                f"STUDIO_RAY_MAX_REPLICAS ({self.ray_max_replicas})."
            )
        if min(self.ray_target_ongoing, self.ray_max_ongoing, self.ray_retries, self.ray_threads) < 0:
            raise SettingsError("STUDIO_RAY_TARGET_ONGOING, _MAX_ONGOING, _RETRIES and _THREADS must be 0 or more.")
        if self.zero_gpu_duration < 1:
            raise SettingsError("STUDIO_ZERO_GPU_DURATION must be a number of seconds, at least 1.")
        if self.preview_every < 0:
            raise SettingsError("STUDIO_PREVIEW_EVERY must be 0 (no live preview) or a number of steps.")
        if not 0 <= self.png_level <= 9:
            raise SettingsError(
                f"STUDIO_PNG_LEVEL must be a zlib level from 0 (no compression) to 9; got {self.png_level}."
            )


PUBLIC_NEGATIVE = "nsfw, nude, naked, lowres, watermark, signature, text, bad anatomy"


def space_defaults() -> dict[str, object]:
    """On a Hugging Face Space: public address behind the platform's proxy, safety checker on, a default negative
    prompt, and SD 1.5 (Dreamlike Photoreal's licence restricts commercial hosting)."""
    return {
        "space": True,
        "host": "0.0.0.0",
        "public_demo": True,
        "model": "sd15",
        "preload": False,
        "default_negative_prompt": PUBLIC_NEGATIVE,
    }


def zero_gpu_defaults() -> dict[str, object]:
    """On ZeroGPU every model is loaded before serving (forked workers inherit it) and concurrent txt2img requests
    are not merged (each call is a process of its own)."""
    return {"zero_gpu": True, "preload": True, "batch_window_ms": 0}


def _parse(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in dataclasses.fields(Settings)}[name]
    if "Path" in str(kind):
        return Path(raw).expanduser()
    if kind in ("int", int):
        return _parse_int(name, raw)
    if kind in ("bool", bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if "tuple[str, str]" in str(kind):
        return _parse_auth(raw)
    if "tuple" in str(kind):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    return raw


def _parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"STUDIO_{name.upper()} must be a whole number, got {raw!r}.") from None


def _parse_auth(raw: str) -> tuple[str, str]:
    user, sep, password = raw.partition(":")
    if not sep or not user or not password:
        raise SettingsError("Auth must look like USER:PASSWORD.")
    return user, password


def parse_args(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Flags override environment variables; both are optional. Like argparse with a bad flag, a setting the
    studio cannot use (`--listen` without `--auth`, `STUDIO_PORT=eighty`) exits with status 2 and one line on
    stderr that names the fix, not a traceback."""
    parser = argparse.ArgumentParser(prog="app.py", description="Atelier — a diffusion design studio.")
    parser.add_argument(
        "--model",
        help="registry name (dreamlike-photoreal-2.0, sd15, tiny), hub id, "
        "diffusers folder or single .safetensors/.ckpt file",
    )
    parser.add_argument("--inpaint-model", help="optional 9-channel inpainting checkpoint")
    parser.add_argument("--controlnet-model", help="HED ControlNet (hub id or folder)")
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--listen", action="store_true", help="bind 0.0.0.0 (requires --auth)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--outputs", type=Path, help="folder for generated PNGs")
    parser.add_argument("--device")
    parser.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"])
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU; slow first run)")
    parser.add_argument("--channels-last", choices=["auto", "on", "off"])
    parser.add_argument("--queue-size", type=int)
    parser.add_argument("--auth", type=_parse_auth, help="USER:PASSWORD")
    parser.add_argument("--share", action="store_true", help="Gradio share link (requires --auth)")
    parser.add_argument("--public-demo", action="store_true", help="safety checker and default negative prompt")
    parser.add_argument("--no-preload", action="store_true", help="load weights on first request only")
    parser.add_argument("--open", action="store_true", help="open the studio in a browser tab")
    parser.add_argument(
        "--engine", choices=["local", "ray"], help="local: run the modes here; ray: on a Ray Serve deployment"
    )
    parser.add_argument("--ray-address", help="the Ray cluster of --engine ray (default auto: this machine's)")
    args = parser.parse_args(argv)
    overrides: dict[str, object] = {
        "model": args.model,
        "inpaint_model": args.inpaint_model,
        "controlnet_model": args.controlnet_model,
        "host": "0.0.0.0" if args.listen else args.host,
        "port": args.port,
        "outputs": args.outputs,
        "device": args.device,
        "dtype": args.dtype,
        "compile": args.compile or None,
        "channels_last": args.channels_last,
        "queue_size": args.queue_size,
        "auth": args.auth,
        "share": args.share or None,
        "public_demo": args.public_demo or None,
        "default_negative_prompt": PUBLIC_NEGATIVE if args.public_demo else None,
        "open_browser": args.open or None,
        "preload": False if args.no_preload else None,
        "engine": args.engine,
        "ray_address": args.ray_address,
    }
    try:
        return Settings.from_env(env, **overrides)
    except SettingsError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
