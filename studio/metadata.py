"""A1111-compatible "infotext": the PNG `parameters` text chunk that A1111's PNG Info, Civitai and viewers read.

Format: `<prompt>\\nNegative prompt: <neg>\\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7,
Seed: 123, Size: 512x768, Model hash: <10 hex>, Model: <name>, ...`. Values holding `,` `:` or a newline are
JSON-quoted, exactly as A1111 does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from PIL import Image, PngImagePlugin

# A1111's own regex for the key/value line (modules/infotext_utils.py).
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_NEEDS_QUOTES = re.compile(r"[,:\n]")


@dataclass
class Infotext:
    prompt: str = ""
    negative_prompt: str = ""
    params: dict[str, str] = field(default_factory=dict)


def quote(value: object) -> str:
    text = str(value)
    if _NEEDS_QUOTES.search(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def format_infotext(prompt: str, negative_prompt: str, params: Mapping[str, object]) -> str:
    """Params keep their insertion order; None values are left out."""
    line = ", ".join(f"{key}: {quote(value)}" for key, value in params.items() if value is not None)
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def parse_infotext(text: str) -> Infotext:
    """Parse A1111 infotext: prompt lines, then an optional `Negative prompt:` section, then the params line."""
    lines = text.strip().split("\n")
    params: dict[str, str] = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        for key, value in _PARAM.findall(lines[-1]):
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError:
                    pass
            params[key.strip()] = value
        lines = lines[:-1]
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].lstrip()
        (negative_lines if in_negative else prompt_lines).append(line)
    return Infotext("\n".join(prompt_lines), "\n".join(negative_lines), params)


def pnginfo(infotext: str, extra: Mapping[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """A PngInfo carrying `parameters` (iTXt when the text is not Latin-1, as A1111 writes it)."""
    info = PngImagePlugin.PngInfo()
    for key, value in {"parameters": infotext, **(extra or {})}.items():
        try:
            value.encode("latin-1")
            info.add_text(key, value)
        except UnicodeEncodeError:
            info.add_itxt(key, value)
    return info


def read_parameters(image: Image.Image) -> str | None:
    """The `parameters` text of a PNG opened with PIL, if any."""
    text = image.info.get("parameters")
    if text is None and hasattr(image, "text"):
        text = image.text.get("parameters")
    return text if isinstance(text, str) else None


def parse_size(value: str) -> tuple[int, int]:
    """A1111 writes `Size: WIDTHxHEIGHT`."""
    width, _, height = value.partition("x")
    return int(width), int(height)
