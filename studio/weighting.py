"""A1111 prompt weighting: `(word)`, `((word))`, `(word:1.3)`, `[word]`, `\\(` escapes and `BREAK`, as A1111 means them.

Parsing follows A1111's `modules/prompt_parser.py: parse_prompt_attention` rule for rule (same token pattern, same
order of multiplication, unbalanced brackets closed at the end, runs of equal weight merged), so the (text,
weight) fragments are the ones A1111 computes; tests/test_weighting.py checks them against its docstring.

Conditioning follows `modules/sd_hijack_clip.py`: each fragment is tokenized on its own, its tokens carry its
weight, `BREAK` starts a new 75-token chunk, a chunk is `<start> + 75 tokens + <end>` padded with `<end>`, each
chunk is encoded by the text encoder, its token vectors are multiplied by their weights, and the chunk is scaled
back to its original mean ("Original" emphasis). A chunk that fills up while its last comma is at most 20 tokens back
moves the words after that comma to the next chunk (A1111's `comma_padding_backtrack`, default 20), so a phrase is
not cut across two chunks. Long prompts without weighting syntax are chunked the same way (all weights 1).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch

CHUNK = 75
BACKTRACK = 20  # A1111's comma_padding_backtrack default
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
    """(token id, weight) per chunk of at most 75, as A1111's `tokenize_line` makes them: each fragment tokenized on
    its own; BREAK closes a chunk; a full chunk whose last comma is at most `BACKTRACK` tokens back hands the tokens
    after that comma to the next chunk; no empty chunk is left after a closing BREAK."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[list[tuple[int, float]]] = [[]]
    last_comma = -1  # index of the last comma in the current chunk
    for text, weight in fragments:
        if (text, weight) == BREAK_MARK:
            chunks.append([])
            last_comma = -1
            continue
        for token in tokenizer(convert(text), add_special_tokens=False, truncation=False).input_ids:
            chunk = chunks[-1]
            if token == comma:
                last_comma = len(chunk)
            elif len(chunk) == CHUNK and last_comma != -1 and CHUNK - last_comma <= BACKTRACK:
                chunks[-1], moved = chunk[: last_comma + 1], chunk[last_comma + 1 :]
                chunks.append(moved)
                last_comma = -1
            if len(chunks[-1]) == CHUNK:
                chunks.append([])
                last_comma = -1
            chunks[-1].append((token, weight))
    if len(chunks) > 1 and not chunks[-1]:
        chunks.pop()
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
        if bool((w == 1).all()):
            out.append(z)  # what A1111's scaling gives exactly, without its 0/0 when a chunk's mean is 0
            continue
        mean = z.mean()
        z = z * w[:, None]
        new_mean = z.mean()
        out.append(z * (mean / new_mean) if new_mean != 0 else z)
    return torch.cat(out)[None].to(encoder.dtype)
