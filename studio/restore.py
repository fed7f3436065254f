"""PNG restore: read the `parameters` infotext of an Atelier or AUTOMATIC1111 PNG back into a tab's request fields.

Which tab: Atelier writes `Mode: <mode>` (its exports `textile-print`, ... belong to their mode). An A1111 PNG goes
to the mode that claims it (`Mode.claims`, asked in `claim_order`): Restyle when it records a ControlNet unit,
Inpaint when it records inpainting keys (`Mask blur`, `Masked content`, ...), Refine (img2img) when it records
`Denoising strength` without hires fix; to the first mode (txt2img) otherwise.

Each infotext key has one reader that turns its text into request fields (diffusers names): the shared ones below,
and each mode's own (`Mode.readers`). A field the tab does not have, a value the studio would refuse (checked with
the presets' table) and any key no reader knows are left out and reported in `ignored` and in the note; the form
keeps its own value for them. Refine restores one loop that reproduces the image from its parent (the recorded
strength and seed are that loop's own).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from studio.errors import RestoreError
from studio.fields import Reader, Unsupported, one, read_size
from studio.images import ImageInputError, open_upload
from studio.metadata import parse_infotext, read_parameters
from studio.presets import FieldTable, check_values, field_table
from studio.schedulers import from_infotext
from studio.settings import Limits
from studio.styles import StyleLibrary, match_recorded

if TYPE_CHECKING:
    from studio.modes import Mode

__all__ = ["Restored", "RestoreError", "Restorer"]

log = logging.getLogger(__name__)

# Recorded for the record, not form fields, by every mode: consumed without being reported as ignored.
RECORDED = frozenset({"Mode", "Model", "Model hash", "Schedule type"})
IMAGE_PROMPT_NOTE = (  # an IP-Adapter unit restores the model and weights; the pictures are in no PNG
    " The image prompt's model and weights are restored; a PNG does not hold its pictures: drop them again under "
    "Image prompt."
)
STYLE_KEYS = frozenset({"Lora hashes", "TI hashes"})  # read against the studio's style folders (studio.styles)


def _scheduler(value: str, params: Mapping[str, str]) -> dict[str, Any]:
    name = from_infotext(value.strip(), params.get("Schedule type"))
    if name is None:
        raise Unsupported(
            f"{value.strip()} with schedule {params.get('Schedule type') or 'Automatic'} is not offered here"
        )
    return {"scheduler": name}


SHARED_READERS: dict[str, Reader] = {
    "Steps": one("num_inference_steps", int),
    "Sampler": _scheduler,
    "CFG scale": one("guidance_scale", float),
    "Seed": one("seed", int),
    "Size": read_size,
}


@dataclass
class Restored:
    mode: str  # the tab to fill: a mode's name
    values: dict[str, Any]  # request field -> value; only what the PNG states (plus the mode's restore defaults)
    ignored: list[str] = field(default_factory=list)  # infotext keys left out
    note: str = ""  # one or two sentences for the designer
    model: str | None = None  # the checkpoint recorded in the PNG (the studio does not switch to it)


class Restorer:
    """Restores infotexts into the modes it is given (the studio's registry), within the studio's limits."""

    def __init__(self, modes: Sequence[Mode], limits: Limits | None = None, styles: StyleLibrary | None = None) -> None:
        self.modes = {m.name: m for m in modes}
        self.styles = styles
        self.default = modes[0].name
        self.table: FieldTable = field_table(modes, limits or Limits())
        self.readers: dict[str, Reader] = dict(SHARED_READERS)
        for mode in modes:
            self.readers.update(mode.readers)

    def detect_mode(self, params: Mapping[str, str]) -> str:
        recorded = params.get("Mode", "").strip().split("-")[0]
        if recorded in self.modes:
            return recorded
        claiming = sorted((m for m in self.modes.values() if m.claims), key=lambda m: -m.claim_order)
        return next((m.name for m in claiming if m.claims and m.claims(params)), self.default)

    def from_text(self, text: str) -> Restored:
        """Request fields for the right tab from an infotext (a PNG's `parameters`, or text pasted from A1111)."""
        info = parse_infotext(text)
        params = info.params
        if params.get("Mode") == "refine-source":
            raise RestoreError(
                "This is a Refine source copy: it records no generation settings. Send it to a tab "
                "as an input image instead."
            )
        name = self.detect_mode(params)
        mode = self.modes[name]
        values: dict[str, Any] = {
            **mode.restore_defaults,
            "prompt": info.prompt,
            "negative_prompt": info.negative_prompt,
        }
        reasons: dict[str, str] = {}
        atelier = params.get("Mode", "").split("-")[0] in self.modes
        for key, value in params.items():
            if (
                key in RECORDED
                or (key in STYLE_KEYS and self.styles is not None)
                or key in mode.recorded
                or (key == "Size" and atelier and "width" not in self.table[name])
            ):
                continue  # Atelier's Refine and Inpaint record the input's own size, which is no setting
            problem = self._read(mode, key, value, params, values)
            if problem is not None:
                reasons[key] = problem
            elif key in mode.partly_read:
                reasons.update({f"{key}: {sub}": f"not used by {mode.label}" for sub in mode.partly_read[key](value)})
        source = "Atelier" if atelier else "AUTOMATIC1111"
        restored = Restored(mode=name, values=values, ignored=list(reasons), model=params.get("Model"))
        restored.note = self._note(restored, source, reasons, params) + self._styles(values, params)
        log.info("Restored %s PNG into %s (%d fields, %d ignored)", source, name, len(values), len(reasons))
        return restored

    def _read(self, mode: Mode, key: str, value: str, params: Mapping[str, str], values: dict[str, Any]) -> str | None:
        """Read one key into `values`; returns why it was left out, or None."""
        if key not in self.readers:
            return "not an Atelier setting"
        try:
            fields = self.readers[key](value, params)
        except Unsupported as exc:
            return str(exc)
        except (ValueError, TypeError):
            return f"unreadable value {value.strip()!r}"
        problems = check_values(self.table, mode.name, fields)
        if problems:
            if any("unknown key" in problem for problem in problems.values()):
                return f"not a setting of the {mode.label} tab"
            return "; ".join(f"{name} {problem}" for name, problem in problems.items())
        values.update(fields)
        return None

    def _styles(self, values: dict[str, Any], params: Mapping[str, str]) -> str:
        """LoRAs and embeddings chosen by the hashes the PNG records (renamed in the prompts when the file here has
        another name); the note says which were found and which are missing."""
        if self.styles is None or not STYLE_KEYS & set(params):
            return ""
        matched = match_recorded(self.styles, values["prompt"], values["negative_prompt"], params)
        values["prompt"], values["negative_prompt"] = matched.prompt, matched.negative_prompt
        note = f" Styles found by hash: {', '.join(matched.found)}." if matched.found else ""
        if matched.missing:
            note += (
                f" Missing here (no file with that hash): {', '.join(matched.missing)}; add them to the LoRA or "
                "embeddings folder, or remove their tags."
            )
        return note

    def _note(self, restored: Restored, source: str, reasons: Mapping[str, str], params: Mapping[str, str]) -> str:
        tab = self.modes[restored.mode].label
        note = f"Filled {len(restored.values)} {tab} fields from an {source} PNG."
        if restored.model:
            note += f" Made with model {restored.model}; the current model is kept."
        if restored.mode == "refine" and "Loop" in params:
            note += f" Loop {params['Loop']} of a chain: restored as one loop from its parent image's settings."
        if "ip_adapter_model" in restored.values:
            note += IMAGE_PROMPT_NOTE
        if reasons:
            note += " Ignored: " + "; ".join(f"{key} ({why})" for key, why in reasons.items()) + "."
        return note

    def from_png(self, source: str | Path | Image.Image) -> Restored:
        """The tab and request fields recorded in a PNG's `parameters` chunk (a file path or a PIL image)."""
        try:
            image = source if isinstance(source, Image.Image) else open_upload(source, "PNG")
        except ImageInputError as exc:
            raise RestoreError(str(exc)) from None
        text = read_parameters(image)
        if not text or not text.strip():
            kind = f"This {image.format} file" if image.format else "This image"
            raise RestoreError(
                f"{kind} carries no generation settings (no 'parameters' metadata). Drop a PNG saved "
                "by Atelier or AUTOMATIC1111; converting to JPEG/WebP, screenshots and many upload sites "
                "strip it."
            )
        return self.from_text(text)
