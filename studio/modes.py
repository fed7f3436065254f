"""The studio's modes, each declared once: everything that lists modes is computed from these records.

A `Mode` names its request type and engine function (the typed contract, `studio.engine.contract`), the tab that
builds its form, the fields presets and PNG restore may set (with their checks), how its own infotext keys read
back into request fields, which companion models it loads (ZeroGPU preloads them) and its example input. The app's
tabs and API endpoints, presets, PNG restore, Send to, ZeroGPU preloading and examples all take a list of modes;
`BUILTIN` is the studio's own, and a test or a deployment can pass its own list.

Adding a mode: an engine module (`studio/engine/x.py`: request dataclass + `x(studio, req, job) -> Result`), a tab
module (`studio/ui/x_tab.py`: `create(ctx, calls) -> Tab`), and one `Mode(...)` entry here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio import control_units, edges, image_prompt, palettes, patterns, registry, tiling
from studio import upscale as upscalers
from studio.engine import colourways, draft, inpaint, refine, restyle, textile, txt2img, upscale
from studio.engine.checks import check_common
from studio.engine.contract import Studio
from studio.fields import (
    STRENGTH,
    Check,
    Reader,
    Unsupported,
    boolean,
    choice,
    flag,
    integer,
    number,
    one,
    optional,
    reverse,
    sampling_fields,
    size,
    text,
)
from studio.metadata import parse_infotext
from studio.settings import Limits
from studio.ui import colourways_tab, inpaint_tab, refine_tab, restyle_tab, textile_tab, txt2img_tab, upscale_tab
from studio.ui.tab import ModeCalls, Tab, TabBuilder
from studio.ui.widgets import UIContext


@dataclass(frozen=True)
class Mode:
    name: str  # tab id, API endpoint, the infotext's `Mode:` value and a preset's "mode"
    label: str  # the tab's label
    request: type  # the request dataclass (diffusers' parameter names)
    run: Callable[..., Any]  # the engine: run(studio, request, job) -> Result
    check: Callable[[Any, Limits], None]  # the request's checks, run before any GPU work (raise RequestError)
    tab: TabBuilder  # create(ctx, calls) -> Tab
    fields: Callable[[Limits], dict[str, Check]]  # what presets and PNG restore may set, with the engine's ranges
    readers: Mapping[str, Reader] = field(default_factory=dict)  # infotext keys this mode writes -> request fields
    recorded: frozenset[str] = frozenset()  # infotext keys written for the record, not settings
    partly_read: Mapping[str, Callable[[str], list[str]]] = field(default_factory=dict)  # key -> its unused parts
    claims: Callable[[Mapping[str, str]], bool] | None = None  # an A1111 infotext (no `Mode:`) belongs here
    claim_order: int = 0  # higher claims are asked first
    restore_defaults: Mapping[str, Any] = field(default_factory=dict)  # what a restore sets whatever the PNG says
    companions: tuple[str, ...] = ()  # cache companions it loads (ModelCache.companion names)
    example: str | None = None  # an asset name (studio.assets) offered as the tab's example input
    # Further engine calls the tab offers, each called as fn(studio, ...); and the public API names its tab serves
    # besides `name`: those that run on the GPU (a ZeroGPU section each, like `name`'s) and those that do not.
    actions: Mapping[str, Callable[..., Any]] = field(default_factory=dict)
    gpu_endpoints: tuple[str, ...] = ()
    endpoints: tuple[str, ...] = ()
    # Wraps the engine for the served studio, e.g. a batcher that merges concurrent requests; None: plain calls.
    runner: Callable[[Studio], Callable[..., Any]] | None = None
    # Page-level wiring once every tab exists: on_page(demo, its built tab, the UI context).
    on_page: Callable[[Any, Tab, UIContext], object] | None = None  # its return value is not used
    # Its own endpoint (`name`) runs on the GPU: a ZeroGPU section. False for a mode that is CPU work only.
    gpu: bool = True


def bind(mode: Mode, studio: Studio) -> ModeCalls:
    """The mode's engine calls bound to one studio: what its tab receives."""
    run = mode.runner(studio) if mode.runner is not None else functools.partial(mode.run, studio)
    actions = {name: functools.partial(fn, studio) for name, fn in mode.actions.items()}
    return ModeCalls(mode.name, run, actions, concurrency=int(getattr(run, "concurrency", 1)))


def by_name(modes: Sequence[Mode]) -> dict[str, Mode]:
    names = [m.name for m in modes]
    if len(set(names)) != len(names):
        raise ValueError(f"Two modes share a name: {names}")
    return {m.name: m for m in modes}


# ---- image prompts: IP-Adapter units, `ControlNet K` ... after a request's K ControlNet units ------------------------
MAX_UNITS = 3 + image_prompt.MAX_IMAGES  # ControlNet units (up to 3) and image-prompt pictures


def _unit_readers() -> dict[str, Reader]:
    """Every `ControlNet N` key: an IP-Adapter unit restores the image prompt (any mode); another one is Restyle's
    (unit 0 into its own fields, further ones into `controlnet_units`). Restore keeps one reader per key, so every
    mode declares these very readers."""

    def controlnet(index: int) -> Reader:  # Restyle's readers are defined below
        return lambda value, params: (_controlnet if index == 0 else _more_units)(value, params)

    return {f"ControlNet {n}": image_prompt.unit_reader(controlnet(n)) for n in range(MAX_UNITS)}


IMAGE_PROMPT_READERS = _unit_readers()


# ---- txt2img ------------------------------------------------------------------------------------------------------
def _txt2img_runner(studio: Studio) -> Callable[..., Any]:
    from studio.batching import Txt2ImgBatcher

    return Txt2ImgBatcher(studio)


TXT2IMG = Mode(
    name="txt2img",
    label="Create",  # a designer's word; the API name and the element ids stay "txt2img"
    request=txt2img.Txt2ImgRequest,
    run=txt2img.txt2img,
    check=lambda req, limits: check_common(req, limits),
    tab=txt2img_tab.create,
    fields=lambda limits: {
        **sampling_fields(limits),
        "width": size(limits),
        "height": size(limits),
        **image_prompt.fields(),
    },
    readers=IMAGE_PROMPT_READERS,
    companions=("lcm_lora",),
    actions={"draft": draft.draft, "render_draft": draft.render_draft},
    gpu_endpoints=("draft", "render_draft"),
    runner=_txt2img_runner,
)

# ---- refine -------------------------------------------------------------------------------------------------------
REFINE = Mode(
    name="refine",
    label="Refine",
    request=refine.RefineRequest,
    run=refine.refine,
    check=refine.check_refine,
    tab=refine_tab.create,
    fields=lambda limits: {
        **sampling_fields(limits, batch_count=False),
        "strength": STRENGTH,
        "loops": integer(1, refine.MAX_LOOPS),
        "strength_schedule": choice(refine.SCHEDULES),
        "final_strength": optional(STRENGTH),
        "seed_policy": choice(refine.SEED_POLICIES),
        "color_correction": flag,
        **image_prompt.fields(),
    },
    readers={
        **IMAGE_PROMPT_READERS,
        "Denoising strength": one("strength", float),
        "Seed policy": one("seed_policy", str),
        "Color correction": one("color_correction", boolean),
    },
    recorded=frozenset({"Loop", "Parent", "Strength schedule"}),
    # A1111's img2img (not a hires-fix txt2img) is a Refine loop
    claims=lambda params: "Denoising strength" in params and not any(k.startswith("Hires") for k in params),
    claim_order=10,
    restore_defaults={"loops": 1, "strength_schedule": "constant"},  # a node restores as the one loop that made it
    example="flatlay",
    endpoints=("refine_history",),
    on_page=lambda demo, tab, ctx: refine_tab.persist(demo, tab.extras["tree"], ctx.outputs_root),
)


# ---- textile ------------------------------------------------------------------------------------------------------
def _print_size(value: str, params: Mapping[str, str]) -> dict[str, Any]:
    """`Print size: 21.00x29.70 cm`; when the print file has the tile's own pixels, the size followed the tile."""
    measure, _, unit = value.strip().partition(" ")
    if params.get("Print pixels", "").strip() == params.get("Size", "").strip():
        return {"physical_width": 0.0, "physical_height": 0.0, "unit": unit}
    width, _, height = measure.partition("x")
    return {"physical_width": float(width), "physical_height": float(height), "unit": unit}


# Keys Textile's print files and the Upscale mode both write: one reader each (restore keeps one reader per key).
UPSCALER_READERS: dict[str, Reader] = {
    "Postprocess upscaler": one("upscaler", str),
    "Detail strength": one("detail_strength", float),
}
UPSCALE_RECORDED = frozenset({"Upscaler hash", "Postprocess upscale by", "Postprocess upscale to", "SD upscale tile",
                              "SD upscale overlap"})  # fmt: skip


def upscaler_files(studio: Studio) -> list[str]:
    """The upscalers folder's model files, by name (what the Upscale tab and Textile's print export offer)."""
    return upscalers.available(studio.cache.settings.upscalers_dir)


TEXTILE = Mode(
    name="textile",
    label="Textile",
    request=textile.TextileRequest,
    run=textile.textile,
    check=textile.check_request,
    tab=textile_tab.create,
    fields=lambda limits: {
        **sampling_fields(limits),
        "width": size(limits),
        "height": size(limits),
        "repeat": choice(tiling.REPEATS),
        "strength": STRENGTH,
        "dpi": integer(36, 2400),
        "physical_width": number(0, 1000),
        "physical_height": number(0, 1000),
        "unit": choice(patterns.UNITS),
        "colors": choice((0, *range(2, textile.MAX_COLORS + 1))),
        "upscaler": text(200),
        "detail_strength": number(0, 1),
        **image_prompt.fields(),
    },
    readers={
        **IMAGE_PROMPT_READERS,
        "Repeat": one("repeat", str),
        "DPI": one("dpi", int),
        "Print size": _print_size,
        "Colours": one("colors", int),
        "Denoising strength": one("strength", float),
        **UPSCALER_READERS,
    },
    recorded=frozenset({"Export", "Print pixels", "Palette"}) | UPSCALE_RECORDED,
    example="swatch",
    actions={"upscalers": upscaler_files},
)

# ---- inpaint ------------------------------------------------------------------------------------------------------
INPAINT_KEYS = ("Mask blur", "Masked content", "Inpaint area", "Mask mode", "Masked area padding")

INPAINT = Mode(
    name="inpaint",
    label="Inpaint",
    request=inpaint.InpaintRequest,
    run=inpaint.inpaint,
    check=inpaint.check_request,
    tab=inpaint_tab.create,
    fields=lambda limits: {
        **sampling_fields(limits),
        "strength": STRENGTH,
        "mask_blur": integer(0, inpaint.MAX_MASK_BLUR),
        "invert_mask": flag,
        "masked_content": choice(tuple(inpaint.MASKED_CONTENT)),
        "inpaint_area": choice(tuple(inpaint.INPAINT_AREA)),
        "padding": integer(0, inpaint.MAX_PADDING),
        **image_prompt.fields(),
    },
    readers={
        **IMAGE_PROMPT_READERS,
        "Denoising strength": one("strength", float),
        "Mask blur": one("mask_blur", int),
        "Mask mode": lambda value, _p: {"invert_mask": value.strip().lower() == "inpaint not masked"},
        "Masked content": reverse(inpaint.MASKED_CONTENT, "masked_content"),
        "Inpaint area": reverse(inpaint.INPAINT_AREA, "inpaint_area"),
        "Masked area padding": one("padding", int),
    },
    recorded=frozenset({"Inpaint model"}),
    claims=lambda params: any(key in params for key in INPAINT_KEYS),
    claim_order=20,
    companions=("inpaint_unet",),
)


# ---- restyle ------------------------------------------------------------------------------------------------------
CONTROLNET_USED = {"module", "preprocessor", "model", "weight", "guidance start", "guidance end", "guess mode",
                   "pixel perfect", "processor res", "resize mode", "control mode", "threshold a",
                   "threshold b"}  # fmt: skip


def _unit_fields(value: str) -> dict[str, Any]:
    """One sd-webui-controlnet unit (`Module: softedge_hed, Model: ..., Weight: 1, ...`) as request field values."""
    unit = {key.lower(): text.strip() for key, text in parse_infotext(value).params.items()}
    module = unit.get("module", unit.get("preprocessor", ""))
    modules = {a1111: ours for ours, a1111 in edges.A1111_MODULES.items()}
    if module == "invert":
        fields: dict[str, Any] = {"preprocessor": "none", "invert": True}
    elif module in modules:
        fields = {"preprocessor": modules[module], "invert": False}
    else:
        raise Unsupported(f"module {module!r} is not offered here (Restyle offers {', '.join(modules)})")
    kind = control_units.model_kind(unit.get("model", ""))
    if fields["preprocessor"] == "none" and kind not in (None, control_units.PREPROCESSOR_MODELS["none"]):
        fields["model"] = kind
    readers: dict[str, tuple[str, Callable[[str], object]]] = {
        "weight": ("controlnet_conditioning_scale", float),
        "guidance start": ("control_guidance_start", float),
        "guidance end": ("control_guidance_end", float),
        "guess mode": ("guess_mode", boolean),
    }
    if fields["preprocessor"] == "canny":
        readers.update({"threshold a": ("low_threshold", _whole), "threshold b": ("high_threshold", _whole)})
    fields.update({name: read(unit[key]) for key, (name, read) in readers.items() if key in unit})
    if "guess mode" not in unit and "control mode" in unit:
        fields["guess_mode"] = unit["control mode"] == control_units.CONTROL_MODES[True]
    if "pixel perfect" in unit and (boolean(unit["pixel perfect"]) or "processor res" in unit):
        pixel_perfect = boolean(unit["pixel perfect"])
        fields["preprocessor_resolution"] = None if pixel_perfect else int(unit["processor res"])
    return fields


def _whole(value: str) -> int:
    return round(float(value))


def _controlnet(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
    """Unit 0 fills Restyle's own fields."""
    return _unit_fields(value)


def _more_units(value: str, params: Mapping[str, str]) -> dict[str, Any]:
    """`ControlNet 1`, `ControlNet 2`, ...: every further ControlNet unit of the PNG into `controlnet_units`, in
    order (each key reads them all, so any one of them restores the same list)."""
    module = parse_infotext(value).params.get("Module", "").strip()
    if module.startswith("ip-adapter"):
        raise Unsupported("an image prompt unit, not a ControlNet")
    units = []
    for index in range(1, control_units.MAX_UNITS + 4):
        text = params.get(f"ControlNet {index}")
        if text is None or parse_infotext(text).params.get("Module", "").strip().startswith("ip-adapter"):
            continue
        fields = _unit_fields(text)
        fields.pop("guess_mode", None)  # one guess mode for the whole request: unit 0's
        units.append(control_units.unit_dict(control_units.ControlUnit(image=None, **fields)))
    return {"controlnet_units": units}


def controlnet_unused(value: str) -> list[str]:
    """Keys of a ControlNet unit that Restyle has no field for (thresholds, control mode, ...)."""
    return [key for key in parse_infotext(value).params if key.lower() not in CONTROLNET_USED]


def _controlnet_unused_unless_ip(value: str) -> list[str]:
    return [] if image_prompt.is_ip_unit(value) else controlnet_unused(value)


def _restyle_check(req: restyle.RestyleRequest, limits: Limits) -> None:
    check_common(req, limits)
    restyle.check_control(req)


RESTYLE = Mode(
    name="restyle",
    label="Restyle",
    request=restyle.RestyleRequest,
    run=restyle.restyle,
    check=_restyle_check,
    tab=restyle_tab.create,
    fields=lambda limits: {
        **sampling_fields(limits),
        "width": size(limits),
        "height": size(limits),
        "preprocessor": choice(edges.PREPROCESSORS),
        "invert": flag,
        "preprocessor_resolution": optional(integer(64, 2048)),
        "controlnet_conditioning_scale": number(0, 2),
        "control_guidance_start": number(0, 1),
        "control_guidance_end": number(0, 1),
        "guess_mode": flag,
        "repeat": optional(choice(tiling.REPEATS)),
        "model": choice(("auto", *control_units.MODELS)),
        "low_threshold": integer(1, 255),
        "high_threshold": integer(1, 255),
        "controlnet_units": control_units.units_problem,
        **image_prompt.fields(),
    },
    readers={**IMAGE_PROMPT_READERS, "ControlNet": _controlnet, "Repeat": one("repeat", str)},
    partly_read={
        key: _controlnet_unused_unless_ip for key in ("ControlNet", *(f"ControlNet {i}" for i in range(MAX_UNITS)))
    },
    # an A1111 PNG with a ControlNet unit (IP-Adapter units alone are an image prompt: any mode)
    claims=lambda params: any(k.startswith("ControlNet") and not image_prompt.is_ip_unit(v) for k, v in params.items()),
    claim_order=30,
    restore_defaults={"controlnet_units": [], "model": "auto"},  # a one-unit PNG clears the further units
    companions=("controlnet", "annotator", *registry.CONTROL_COMPANIONS, *registry.ANNOTATOR_FILES),
    example="sketch",
    actions={"detect_edges": restyle.detect_edges},
    gpu_endpoints=("restyle_edges",),
)


# ---- colourways ---------------------------------------------------------------------------------------------------
def colourways_mode(palettes_dir: Path = palettes.PALETTES_DIR) -> Mode:
    """Colourways over the palette files of `palettes_dir`, read (and checked strictly) when the page is built."""
    return Mode(
        name="colourways",
        label="Colourways",
        request=colourways.ColourwaysRequest,
        run=functools.partial(colourways.colourways, palettes_dir=palettes_dir),
        check=colourways.check_request,
        tab=functools.partial(colourways_tab.create, palettes_dir=palettes_dir),
        fields=lambda limits: {
            "colors": integer(colourways.MIN_COLORS, colourways.MAX_COLORS),
            "palettes": colourways.palette_names(list(palettes.library(palettes_dir))),
            "custom_palettes": text(colourways.MAX_TEXT_CHARS),
            "mappings": colourways.mappings_problem,
            "mood_colors": integer(colourways.MIN_COLORS, colourways.MAX_COLORS),
            "keep_order": flag,
            "merge": flag,
            "include_original": flag,
            "repeat": choice(colourways.REPEAT_CHOICES),
            "dpi": integer(36, 2400),
            "physical_width": number(0, 1000),
            "physical_height": number(0, 1000),
            "unit": choice(patterns.UNITS),
        },
        # Keys Textile writes too read the same way (the very readers: restore keeps one reader per key).
        readers={
            **{key: TEXTILE.readers[key] for key in ("Colours", "Repeat", "DPI", "Print size")},
            "Mapping": one("mappings", str),
            "Colour order": lambda value, _p: {"keep_order": value.strip() == colourways.KEPT},
            "Merge spot colours": one("merge", boolean),
        },
        recorded=frozenset(
            {"Seed", "Colourway", "Colourways", "Palette", "Spot colours", "Print pixels", "Source", "Source hash"}
        ),
        # A colourway PNG restores as its mapping: re-run on the same tile, it is the very same colourway.
        restore_defaults={"palettes": [], "custom_palettes": "", "include_original": False, "mood_image": None},
        example="swatch",
        actions={"spots": colourways.spot_colours, "mood": colourways.mood_palette},
        endpoints=("colourways_spots",),
        gpu=False,  # CPU only: no ZeroGPU section, never the GPU lock
    )


COLOURWAYS = colourways_mode()


# ---- upscale ------------------------------------------------------------------------------------------------------
def _upscale_to(value: str, _params: Mapping[str, str]) -> dict[str, Any]:
    """`Postprocess upscale to: 3072x3072`."""
    width, _, height = value.strip().partition("x")
    return {"width": int(width), "height": int(height)}


UPSCALE = Mode(
    name="upscale",
    label="Upscale",
    request=upscale.UpscaleRequest,
    run=upscale.run,
    check=upscale.check_request,
    tab=upscale_tab.create,
    fields=lambda limits: {
        **{k: v for k, v in sampling_fields(limits, batch_count=False).items() if k != "batch_size"},
        "upscaler": text(200),
        "scale": number(1, upscale.MAX_SCALE),
        "width": optional(integer(8, upscale.MAX_SIDE)),
        "height": optional(integer(8, upscale.MAX_SIDE)),
        "repeat": choice(upscale.REPEAT_CHOICES),
        "detail_strength": number(0, 1),
        "tile_size": integer(0, upscale.MAX_TILE),
        "tile_overlap": integer(0, 1024),
    },
    readers={
        **UPSCALER_READERS,
        "Postprocess upscale by": one("scale", float),
        "Postprocess upscale to": _upscale_to,
        "SD upscale tile": one("tile_size", int),
        "SD upscale overlap": one("tile_overlap", int),
        "Repeat": TEXTILE.readers["Repeat"],
    },
    recorded=frozenset({"Upscaler hash", "Source", "Source hash"}),
    actions={"upscalers": upscaler_files},
)


# ---- train a style --------------------------------------------------------------------------------------------------
def _train_mode() -> Mode:
    from studio import training
    from studio.ui import train_tab

    return Mode(
        name=training.MODE,
        label="Train a style",
        request=training.TrainRequest,
        run=training.train,
        check=training.check_request,
        tab=train_tab.create,
        fields=lambda limits: {
            "kind": choice(tuple(training.KINDS)),
            "num_train_steps": integer(1, training.MAX_STEPS),
            "learning_rate": number(0, 0.01),
            "rank": integer(1, training.MAX_RANK),
            "resolution": integer(0, 1024),
            "prior_preservation": flag,
            "train_text_encoder": flag,
            "sample_every": integer(0, training.MAX_STEPS),
            "checkpoint_every": integer(0, training.MAX_STEPS),
        },
        recorded=frozenset({"Training step"}),
        actions={
            "status": training.job_status,
            "kind_defaults": training.kind_defaults,
            "propose_trigger": training.proposed_trigger,
        },  # fmt: skip
        # Not a ZeroGPU section (no per-call GPU time limit holds a training): each step takes the GPU lock itself.
        gpu=False,
    )


TRAIN_STYLE = _train_mode()

BUILTIN: tuple[Mode, ...] = (TXT2IMG, REFINE, TEXTILE, INPAINT, RESTYLE, COLOURWAYS, UPSCALE, TRAIN_STYLE)
SHELL_ENDPOINTS = ("restore",)  # the studio's own, beside the modes'


def gpu_endpoints(modes: Sequence[Mode]) -> set[str]:
    """Every public endpoint that runs on the GPU (each a ZeroGPU section)."""
    return {name for m in modes for name in ((m.name,) if m.gpu else ()) + m.gpu_endpoints}


def public_endpoints(modes: Sequence[Mode]) -> set[str]:
    """Every named API endpoint the studio serves for these modes."""
    own = {name for m in modes for name in (m.name, *m.endpoints)}
    return gpu_endpoints(modes) | own | set(SHELL_ENDPOINTS)
