"""Prompt hygiene, token counting and prompts longer than CLIP's 77-token window.

CLIP sees 77 tokens: <start>, 75 prompt tokens, <end>. Plain diffusers silently cuts everything after that.
Atelier does what A1111 does instead: a longer prompt is split into chunks of 75 tokens (a chunk that fills up
within 20 tokens of its last comma ends at that comma), each chunk is encoded on its own (wrapped in <start>/<end>,
padded to 77), and the chunk embeddings are concatenated along the sequence axis; the UNet's cross-attention reads
all of them. The negative prompt is padded with empty chunks to the same length. Prompts within 75 tokens take
diffusers' own path untouched, so they stay bit-identical to diffusers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from studio.settings import Limits
from studio.style_modules import STYLES_ATTRIBUTE, StyleModules
from studio.styles import StyleLibrary, strip_tags, uses_word, word_pattern
from studio.weighting import encode_weighted, has_weighting, parse_attention, weighted_chunks

CHUNK = 75
# C0 controls (but tab and newline), DEL, C1 controls, zero-width and bidi marks, embeddings/overrides (U+202A-E),
# isolates (U+2066-9), and the BOM: invisible, and able to reorder or hide what a prompt shows
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")


def clean_prompt(text: str | None, max_chars: int) -> str:
    """Remove control and bidi characters (keeping newlines and tabs); refuse absurdly long text."""
    text = _CONTROL.sub("", text or "").strip()
    if len(text) > max_chars:
        raise ValueError(f"The prompt has {len(text)} characters; the limit is {max_chars}. Shorten it.")
    return text


def token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)


def count_tokens(tokenizer: Any, text: str) -> int:
    return len(token_ids(tokenizer, text))


def describe_count(tokens: int) -> str:
    """The counter the UI shows beside a prompt, A1111-style: `12/75`, `90/150`."""
    chunks = max(1, -(-tokens // CHUNK))
    note = f" — {chunks} chunks, each encoded and concatenated" if chunks > 1 else ""
    return f"{tokens}/{chunks * CHUNK} tokens{note}"


def prompt_kwargs(pipe: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
    """Arguments for a diffusers SD pipeline call: plain strings when both fit, chunked embeddings otherwise.

    The one place every mode's prompts reach the text encoder. `<lora:...>` tags are taken out here (they stay in
    the prompt the PNG records, as A1111 writes it), and the request's LoRA weights are set on the style copies its
    pipeline holds (`cache.derive` chose them; call this under the GPU lock, right before the pipeline call).
    A1111 weighting syntax (`(word:1.3)`, `[word]`, `BREAK`, ...) is encoded as A1111 does (studio.weighting);
    prompts without it take the plain path, bit-identical to diffusers."""
    selection = getattr(pipe, STYLES_ATTRIBUTE, None)
    if selection:
        StyleModules.activate(pipe, selection)
    prompt, negative_prompt = strip_tags(prompt), strip_tags(negative_prompt)
    convert = _converter(pipe, selection)
    tokenizer = pipe.tokenizer
    if not has_weighting(prompt) and not has_weighting(negative_prompt):
        fits = (len(token_ids(tokenizer, convert(text))) <= CHUNK for text in (prompt, negative_prompt))
        if all(fits):
            return {"prompt": prompt, "negative_prompt": negative_prompt}  # diffusers expands embeddings itself
    # Weighting or a long prompt: A1111's chunks (75 tokens, moved back to a comma, BREAK), weights, means restored.
    chunks = [weighted_chunks(tokenizer, parse_attention(text), convert) for text in (prompt, negative_prompt)]
    count = max(len(c) for c in chunks)
    return {
        "prompt_embeds": encode_weighted(pipe, chunks[0], count),
        "negative_prompt_embeds": encode_weighted(pipe, chunks[1], count),
    }


def _converter(pipe: Any, selection: Any) -> Callable[[str], str]:
    """A multi-vector embedding's word becomes its tokens (`name name_1 name_2`), as diffusers does for strings."""
    if selection and selection.embeddings and hasattr(pipe, "maybe_convert_prompt"):
        return lambda text: str(pipe.maybe_convert_prompt(text, pipe.tokenizer))
    return lambda text: text


class TokenCounter:
    """Counts prompt tokens with CLIP's own vocabulary (shared by every SD1.5-family model), without loading
    any model: the tokenizer is built once from the vocabulary `open_clip_torch` ships.

    Anyone can call it (Gradio serves the page's private handlers to every client), so a prompt the studio would
    refuse (over `max_chars` once cleaned, the very check every generation makes) is answered with the limit,
    before any tokenising: the cost stays linear in the text and small."""

    def __init__(
        self, folder: Any, max_chars: int = Limits.max_prompt_chars, styles: StyleLibrary | None = None
    ) -> None:
        self.folder = folder
        self.max_chars = max_chars
        self.styles = styles  # embeddings count as their vectors; `<lora:...>` tags count as nothing
        self._tokenizer: Any = None

    def __call__(self, text: str) -> str:
        try:
            text = clean_prompt(text, self.max_chars)
        except ValueError as exc:
            return str(exc)
        if self._tokenizer is None:
            from transformers import CLIPTokenizer

            from studio.tiny import write_tokenizer

            if not (self.folder / "vocab.json").is_file():
                write_tokenizer(self.folder)
            self._tokenizer = CLIPTokenizer.from_pretrained(self.folder)
        return describe_count(clip_tokens(self._tokenizer, text, self.styles))


def clip_tokens(tokenizer: Any, text: str, styles: StyleLibrary | None = None) -> int:
    """The tokens CLIP reads for a prompt: without `<lora:...>` tags and weighting brackets, with each embedding's
    word as its number of vectors."""
    text = strip_tags(text)
    if has_weighting(text):
        text = "".join(fragment for fragment, weight in parse_attention(text) if weight != -1)
    extra = 0
    for entry in styles.embeddings() if styles is not None else []:
        if entry.usable and uses_word(text, entry.name):
            text, found = word_pattern(entry.name).subn(" ", text)
            extra += found * entry.vectors
    return count_tokens(tokenizer, text) + extra
