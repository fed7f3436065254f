"""A1111 prompt weighting: `(word)`, `((word))`, `(word:1.3)`, `[word]`, `\\(` escapes and `BREAK`, as A1111 means them.

Parsing follows A1111's `modules/prompt_parser.py: parse_prompt_attention` rule for rule (same token pattern, same
order of multiplication, unbalanced brackets closed at the end, runs of equal weight merged), so the (text,
weight) fragments are the ones A1111 computes; tests/test_weighting.py checks them against its docstring.

Conditioning follows `modules/sd_hijack_clip.py`: each fragment is tokenized on its own, its tokens carry its
weight, `BREAK` starts a new 75-token chunk, a chunk is `<start> + 75 tokens + <end>` padded with `<end>`, each
chunk is encoded by the text encoder, its token vectors are multiplied by their weights, and the chunk is scaled
back to its original mean ("Original" emphasis). Unlike A1111, a chunk that fills up is not moved back to its last
comma (A1111's `comma_padding_backtrack`): chunks split every 75 tokens, as Atelier's plain long prompts do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

CHUNK = 75
ROUND, SQUARE = 1.1, 1 / 1.1
_ATTENTION = re.compile(
    r"""\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:([+-]?[.\d]+)\)|\)|]|[^\\()\[\]:]+|:""",
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_SYNTAX = re.compile(r"[()\[\]\\]|\bBREAK\b")
BREAK_MARK = ("BREAK", -1.0)


def has_weighting(text: str) -> bool:
    """True when the text holds any of the syntax (brackets, escapes, BREAK): it then takes the weighted path."""
    return _SYNTAX.search(text) is not None


def parse_attention(text: str) -> list[tuple[str, float]]:
    """A1111's (text, weight) fragments; `BREAK` is the fragment ("BREAK", -1)."""
    fragments: list[list[Any]] = []
    rounds: list[int] = []
    squares: list[int] = []

    def scale(start: int, factor: float) -> None:
        for fragment in fragments[start:]:
            fragment[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            fragments.append([token[1:], 1.0])
        elif token == "(":
            rounds.append(len(fragments))
        elif token == "[":
            squares.append(len(fragments))
        elif weight is not None and rounds:
            scale(rounds.pop(), float(weight))
        elif token == ")" and rounds:
            scale(rounds.pop(), ROUND)
        elif token == "]" and squares:
            scale(squares.pop(), SQUARE)
        else:
            for index, part in enumerate(_BREAK.split(token)):
                if index:
                    fragments.append(list(BREAK_MARK))
                fragments.append([part, 1.0])
    for start in rounds:
        scale(start, ROUND)
    for start in squares:
        scale(start, SQUARE)
    merged: list[list[Any]] = []
    for fragment in fragments or [["", 1.0]]:
        if merged and merged[-1][1] == fragment[1]:
            merged[-1][0] += fragment[0]
        else:
            merged.append(fragment)
    return [(str(t), float(w)) for t, w in merged]


def weighted_chunks(
    tokenizer: Any, fragments: list[tuple[str, float]], convert: Callable[[str], str] = lambda t: t
) -> list[list[tuple[int, float]]]:
    """(token id, weight) per chunk of at most 75: each fragment tokenized on its own; BREAK closes a chunk."""
    chunks: list[list[tuple[int, float]]] = [[]]
    for text, weight in fragments:
        if (text, weight) == BREAK_MARK:
            chunks.append([])
            continue
        for token in tokenizer(convert(text), add_special_tokens=False, truncation=False).input_ids:
            if len(chunks[-1]) == CHUNK:
                chunks.append([])
            chunks[-1].append((token, weight))
    return chunks


@torch.no_grad()
def encode_weighted(pipe: Any, chunks: list[list[tuple[int, float]]], count: int) -> torch.Tensor:
    """(1, count * 77, dim) embeddings of `chunks`, padded with empty chunks to `count`, weighted as A1111 does."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    rows, weights = [], []
    for index in range(count):
        piece = chunks[index] if index < len(chunks) else []
        rows.append([bos, *(t for t, _ in piece), eos] + [pad] * (CHUNK - len(piece)))
        weights.append([1.0, *(w for _, w in piece), 1.0] + [1.0] * (CHUNK - len(piece)))
    hidden = encoder(torch.tensor(rows, device=encoder.device))[0]  # (count, 77, dim)
    factors = torch.tensor(weights, device=hidden.device, dtype=hidden.dtype)
    out = []
    for z, w in zip(hidden, factors, strict=True):  # A1111 restores each chunk's own mean
        mean = z.mean()
        z = z * w[:, None]
        out.append(z * (mean / z.mean()))
    return torch.cat(out)[None].to(encoder.dtype)
