"""Personal styles: the operator's LoRAs and textual-inversion embeddings, as designers write them in a prompt.

- Two folders (`STUDIO_LORA_DIR`, `STUDIO_EMBEDDINGS_DIR`), read on demand: every look-up lists the folder again
  (a stat per file) and reads only new or changed files, so a file added while serving is there at once.
- A LoRA is used with A1111's tag `<lora:NAME:WEIGHT>` (or `<lora:NAME:TE_WEIGHT:UNET_WEIGHT>`) in the prompt or
  the negative prompt; an embedding by writing its name as a word. NAME is a file stem from the scan: a file is
  only ever found among the scanned entries, never by building a path from what a person typed.
- Each entry carries A1111's short hashes, so PNGs record and restore them as A1111 does: `Lora hashes` holds the
  first 12 hex digits of the SHA-256 of a `.safetensors` file's tensor data (the bytes after its header; A1111's
  `hashes.addnet_hash_safetensors`, used by `extensions-builtin/Lora/network.py`), `TI hashes` the first 12 of the
  whole file's SHA-256 (`modules/textual_inversion`).
- A file that is no LoRA / embedding, or one made for another architecture (SDXL: a second text encoder, 2048-dim
  cross-attention), is listed with the reason it cannot be used; nothing raises while scanning.

The torch side (weight-sharing copies of the UNet and text encoder that hold the adapters) is studio.style_modules.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from studio.errors import RequestError

log = logging.getLogger(__name__)

LORA, EMBEDDING = "lora", "embedding"
MAX_WEIGHT = 4.0
# A1111's extra-network syntax `<kind:arg:arg...>` (modules/extra_networks.py, re_extra_net)
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
_NAME = re.compile(r"^[\w][\w.\- ]*$")
_WORD = r"(?<![\w-]){}(?![\w-])"


@dataclass(frozen=True)
class StyleFile:
    """One file of a style folder, as the scan found it."""

    name: str  # the file stem: what a tag or a word names
    kind: str  # LORA or EMBEDDING
    path: Path
    short_hash: str  # A1111's 12 hex digits (see the module's docstring)
    triggers: tuple[str, ...] = ()
    preview: Path | None = None
    problem: str = ""  # why it cannot be used; "" when it can
    dim: int | None = None  # cross-attention width (LoRA) or vector width (embedding), when the file states it
    vectors: int = 1  # an embedding's number of vectors (tokens it takes in the prompt)
    unet: bool = False  # a LoRA with UNet layers
    text: bool = False  # a LoRA with text-encoder layers

    @property
    def usable(self) -> bool:
        return not self.problem

    @property
    def adapter(self) -> str:
        """The adapter name in peft/diffusers: from the content hash, so it is a safe module key."""
        return f"style_{self.short_hash}"


@dataclass(frozen=True)
class LoraUse:
    entry: StyleFile
    text_weight: float
    unet_weight: float


@dataclass(frozen=True)
class Selection:
    """The styles one request uses: its LoRAs with their weights, and the embeddings its prompts name."""

    loras: tuple[LoraUse, ...] = ()
    embeddings: tuple[StyleFile, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.loras or self.embeddings)

    @property
    def key(self) -> tuple[Any, ...]:
        """What must match for requests to share one pipeline call: LoRAs and weights, and whether the text
        encoder with the embeddings is used."""
        loras = tuple((u.entry.short_hash, u.text_weight, u.unet_weight) for u in self.loras)
        return (loras, bool(self.embeddings))

    @property
    def needs_text_copy(self) -> bool:
        return bool(self.embeddings) or any(u.entry.text for u in self.loras)


# ---- prompts --------------------------------------------------------------------------------------------------
def _tags(text: str) -> list[tuple[str, list[str]]]:
    return [(m.group(1), m.group(2).split(":")) for m in _EXTRA_NETWORK.finditer(text)]


def strip_tags(text: str) -> str:
    """What CLIP reads: the prompt without `<lora:...>` tags (A1111 removes them the same way)."""
    return _EXTRA_NETWORK.sub("", text) if "<" in text else text


def _weight(raw: str, name: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise RequestError(
            f"<lora:{name}:{raw}> has no number as its weight; write it like <lora:{name}:0.8>."
        ) from None
    if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
        raise RequestError(f"LoRA weight {value:g} for '{name}' is outside -{MAX_WEIGHT:g}..{MAX_WEIGHT:g}.")
    return value


def parse_lora_tags(*texts: str) -> list[tuple[str, float, float]]:
    """(name, text-encoder weight, UNet weight) of every `<lora:...>` tag, in order; other tags are refused."""
    found: dict[str, tuple[str, float, float]] = {}
    for text in texts:
        for kind, args in _tags(text):
            if kind != "lora":
                raise RequestError(f"<{kind}:...> tags are not supported here; only <lora:NAME:WEIGHT>. Remove it.")
            name = args[0].strip()
            text_weight = _weight(args[1], name) if len(args) > 1 else 1.0
            unet_weight = _weight(args[2], name) if len(args) > 2 else text_weight
            if name in found and found[name][1:] != (text_weight, unet_weight):
                raise RequestError(f"LoRA '{name}' is tagged twice with different weights; keep one tag.")
            found[name] = (name, text_weight, unet_weight)
    return list(found.values())


def word_pattern(name: str) -> re.Pattern[str]:
    """An embedding's name as a whole word (case-insensitive, as CLIP's tokenizer lowercases)."""
    return re.compile(_WORD.format(re.escape(name)), flags=re.IGNORECASE)


def uses_word(text: str, name: str) -> bool:
    return word_pattern(name).search(text) is not None


# ---- reading files --------------------------------------------------------------------------------------------
def addnet_hash(path: Path) -> str:
    """A1111's LoRA hash of a .safetensors file: SHA-256 of everything after the 8-byte length and the header."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        header = int.from_bytes(handle.read(8), "little")
        handle.seek(8 + header)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _triggers(metadata: Mapping[str, str]) -> tuple[str, ...]:
    words: list[str] = []
    phrase = metadata.get("modelspec.trigger_phrase", "")
    words += [w.strip() for w in phrase.split(",") if w.strip()]
    try:
        frequency = json.loads(metadata.get("ss_tag_frequency", "{}"))
        counts: dict[str, int] = {}
        for tags in frequency.values():
            for tag, count in tags.items():
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(count)
        words += sorted(counts, key=lambda t: -counts[t])[:5]
    except (ValueError, AttributeError, TypeError):
        pass
    return tuple(dict.fromkeys(w for w in words if w))


def _lora_layout(keys: list[str], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> dict[str, Any]:
    """What a LoRA file holds, or why it cannot be used (`problem`)."""
    lora_keys = [k for k in keys if re.search(r"\.(lora_down|lora_up|lora_A|lora_B|lora\.down|lora\.up)\.", k)]
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys) or str(
        metadata.get("ss_base_model_version", "")
    ).startswith("sdxl"):
        return {"problem": "made for SDXL (it adapts a second text encoder); this studio runs SD 1.5-family models"}
    if not lora_keys:
        if any(k.startswith(("hada_", "lokr_")) or ".hada_" in k or ".lokr_" in k for k in keys):
            return {"problem": "a LyCORIS (LoHa/LoKr) file, not a plain LoRA; only LoRA is supported"}
        return {"problem": "not a LoRA: no lora_down/lora_up (kohya) or lora_A/lora_B (diffusers) weights"}
    dim = next(
        (shapes[k][-1] for k in lora_keys if "attn2" in k and "to_k" in k and re.search(r"(down|lora_A)", k)), None
    )
    return {
        "dim": dim,
        "unet": any(k.startswith(("lora_unet_", "unet.")) for k in lora_keys),
        "text": any(k.startswith(("lora_te_", "text_encoder.")) for k in lora_keys),
    }


def read_lora(path: Path) -> StyleFile:
    from safetensors import safe_open

    preview = next((p for p in (path.with_suffix(".preview.png"), path.with_suffix(".png")) if p.is_file()), None)
    base: dict[str, Any] = {"name": path.stem, "kind": LORA, "path": path, "preview": preview}
    try:
        with safe_open(str(path), "pt") as handle:
            keys = list(handle.keys())
            shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys if "attn2" in k and "to_k" in k}
            metadata = handle.metadata() or {}
        layout = _lora_layout(keys, shapes, metadata)
        short = addnet_hash(path)[:12]
    except Exception as exc:  # a broken file is listed, never raised
        return StyleFile(**base, short_hash="", problem=f"unreadable .safetensors file ({type(exc).__name__})")
    return StyleFile(**base, short_hash=short, triggers=_triggers(metadata), **layout)


def _embedding_tensor(path: Path) -> Any:
    """The vectors of an A1111 (`string_to_param`/`emb_params`) or diffusers embedding, or a str problem."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        data: Any = load_file(str(path))
    else:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(data, dict) and ("clip_g" in data or "clip_l" in data):
        return "made for SDXL (clip_g/clip_l vectors); this studio runs SD 1.5-family models"
    if isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        data = data["string_to_param"].get("*")
    elif isinstance(data, dict) and "emb_params" in data:
        data = data["emb_params"]
    elif isinstance(data, dict) and len(data) == 1:
        data = next(iter(data.values()))
    if not hasattr(data, "shape") or data.dim() not in (1, 2):
        return "not a textual-inversion embedding (no string_to_param, emb_params or single vector)"
    return data


def read_embedding(path: Path) -> StyleFile:
    preview = next((p for p in (path.with_suffix(".preview.png"), path.with_suffix(".png")) if p.is_file()), None)
    base: dict[str, Any] = {"name": path.stem, "kind": EMBEDDING, "path": path, "preview": preview}
    if not _NAME.match(path.stem) or " " in path.stem:
        return StyleFile(**base, short_hash="", problem="its name must be one word (letters, digits, - _ .); rename it")
    try:
        tensor = _embedding_tensor(path)
        short = file_hash(path)[:12]
    except Exception as exc:
        return StyleFile(**base, short_hash="", problem=f"unreadable embedding file ({type(exc).__name__})")
    if isinstance(tensor, str):
        return StyleFile(**base, short_hash=short, problem=tensor)
    vectors = 1 if tensor.dim() == 1 else int(tensor.shape[0])
    return StyleFile(**base, short_hash=short, dim=int(tensor.shape[-1]), vectors=vectors)


# ---- the library ----------------------------------------------------------------------------------------------
@dataclass
class StyleLibrary:
    """The operator's two folders, listed again on each look-up; files are read once per (size, mtime)."""

    lora_dir: Path | None
    embeddings_dir: Path | None
    _seen: dict[Path, tuple[tuple[int, int], StyleFile]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _scan(self, folder: Path | None, suffixes: tuple[str, ...], read: Any) -> list[StyleFile]:
        if folder is None or not folder.is_dir():
            return []
        entries = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in suffixes or not path.is_file() or path.name.endswith(".preview.png"):
                continue
            stat = path.stat()
            stamp = (stat.st_size, stat.st_mtime_ns)
            with self._lock:
                known = self._seen.get(path)
            if known is None or known[0] != stamp:
                known = (stamp, read(path))
                with self._lock:
                    self._seen[path] = known
            entries.append(known[1])
        return entries

    def loras(self) -> list[StyleFile]:
        return self._scan(self.lora_dir, (".safetensors",), read_lora)

    def embeddings(self) -> list[StyleFile]:
        return self._scan(self.embeddings_dir, (".pt", ".safetensors"), read_embedding)

    def entries(self) -> list[StyleFile]:
        return self.loras() + self.embeddings()

    def select(self, prompt: str, negative_prompt: str = "", dim: int | None = None) -> Selection:
        """The styles a request's prompts use; a tag naming no usable LoRA is refused in words."""
        tags = parse_lora_tags(prompt, negative_prompt)
        loras = {e.name: e for e in self.loras()} if tags else {}
        uses = []
        for name, text_weight, unet_weight in tags:
            entry = loras.get(name)
            if entry is None:
                where = str(self.lora_dir) if self.lora_dir else "STUDIO_LORA_DIR"
                raise RequestError(
                    f"No LoRA named '{name}' in the LoRA folder ({where}). Pick one from the Styles list, or add "
                    "the .safetensors file there and press Refresh."
                )
            _check_fits(entry, dim)
            uses.append(LoraUse(entry, text_weight, unet_weight))
        text = strip_tags(prompt) + "\n" + strip_tags(negative_prompt)
        embeddings = tuple(
            e for e in self.embeddings() if e.usable and dim in (None, e.dim) and uses_word(text, e.name)
        )
        return Selection(tuple(uses), embeddings)

    def recorded(self, prompt: str, negative_prompt: str = "") -> dict[str, str | None]:
        """`Lora hashes` / `TI hashes` for a PNG of a request with these prompts (never raises: a request whose
        tags name no usable file was refused before it ran)."""
        try:
            return hash_params(self.select(prompt, negative_prompt))
        except RequestError:
            return hash_params(None)


def _check_fits(entry: StyleFile, dim: int | None) -> None:
    if not entry.usable:
        raise RequestError(f"LoRA '{entry.name}' cannot be used: {entry.problem}.")
    if dim is not None and entry.dim is not None and entry.dim != dim:
        raise RequestError(
            f"LoRA '{entry.name}' was made for a model with {entry.dim}-wide text features; the current model has "
            f"{dim} (SD 1.5: 768, SD 2: 1024, SDXL: 2048). Use a LoRA trained on an SD 1.5-family model."
        )


# ---- metadata: A1111's keys, both ways ------------------------------------------------------------------------
def _alias(name: str) -> str:
    return name.replace(":", "").replace(",", "")  # as A1111 writes it


def hash_params(selection: Selection | None) -> dict[str, str | None]:
    """`Lora hashes` and `TI hashes` as A1111 writes them (None when empty, so they are left out)."""
    selection = selection or Selection()
    loras = ", ".join(f"{_alias(u.entry.name)}: {u.entry.short_hash}" for u in selection.loras)
    embeddings = ", ".join(f"{_alias(e.name)}: {e.short_hash}" for e in selection.embeddings)
    return {"Lora hashes": loras or None, "TI hashes": embeddings or None}


def parse_hashes(value: str) -> list[tuple[str, str]]:
    """`"a: 0123abcd4567, b: ..."` -> [(name, hash)]."""
    pairs = []
    for part in value.split(","):
        name, sep, short = part.rpartition(":")
        if sep and name.strip() and re.fullmatch(r"[0-9a-fA-F]{8,64}", short.strip()):
            pairs.append((name.strip(), short.strip().lower()))
    return pairs


@dataclass
class Matched:
    prompt: str
    negative_prompt: str
    found: list[str] = field(default_factory=list)  # "name" or "name (file other)"
    missing: list[str] = field(default_factory=list)  # "name (hash)"


def match_recorded(library: StyleLibrary, prompt: str, negative: str, params: Mapping[str, str]) -> Matched:
    """Select the files an infotext's `Lora hashes` / `TI hashes` name, by hash: a file found under another name
    is renamed in the prompts; one not found is reported missing."""
    out = Matched(prompt, negative)
    tagged = _tag_names(prompt + "\n" + negative)
    for key, entries, rename, named in (
        ("Lora hashes", library.loras(), _rename_tag, lambda n: n in tagged),
        ("TI hashes", library.embeddings(), _rename_word, lambda n: uses_word(prompt + "\n" + negative, n)),
    ):
        by_hash = {e.short_hash: e for e in entries if e.usable and e.short_hash}
        for name, short in parse_hashes(params.get(key, "")):
            if not named(name):  # not written in the prompts (a draft's LCM-LoRA): nothing to select
                continue
            entry = next((e for h, e in by_hash.items() if h.startswith(short) or short.startswith(h)), None)
            if entry is None:
                out.missing.append(f"{name} ({short})")
                continue
            if entry.name != name:
                out.prompt, out.negative_prompt = (
                    rename(out.prompt, name, entry.name),
                    rename(out.negative_prompt, name, entry.name),
                )
            out.found.append(name if entry.name == name else f"{name} (file {entry.name})")
    return out


def _tag_names(text: str) -> set[str]:
    """The names `<lora:...>` tags give, weights unchecked (a restored prompt is only read)."""
    return {args[0].strip() for kind, args in _tags(text) if kind == "lora"}


def _rename_tag(text: str, old: str, new: str) -> str:
    return re.sub(r"<lora:" + re.escape(old) + r"(?=[:>])", lambda _m: f"<lora:{new}", text)


def _rename_word(text: str, old: str, new: str) -> str:
    return word_pattern(old).sub(lambda _m: new, text)
