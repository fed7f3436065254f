"""A1111 prompt weighting: the parse equals A1111's `parse_prompt_attention`, the conditioning is the one that parse
implies (sd_hijack_clip: per-token multipliers, each chunk's mean restored, BREAK and 75-token chunks), and prompts
without the syntax stay on diffusers' own path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.engine.contract import Studio
from studio.engine.txt2img import Txt2ImgRequest, txt2img
from studio.prompts import clip_tokens, prompt_kwargs
from studio.styles import StyleLibrary
from studio.weighting import CHUNK, parse_attention
from tests.conftest import pixels

LONG = "(" + "silk " * 90 + ":1.2), (pleats)"
# The first seven pairs are A1111's own doctest of `parse_prompt_attention` (modules/prompt_parser.py,
# AUTOMATIC1111/stable-diffusion-webui); the rest follow its documented rules, with each weight written as the
# products A1111 forms, in the order it forms them (innermost bracket first).
TABLE = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0),
            ("house", 1.5730000000000004),
            (" ", 1.1),
            ("on", 1.0),
            (" a ", 1.1),
            ("hill", 0.55),
            (", sun, ", 1.1),
            ("sky", 1.4641000000000006),
            (".", 1.1),
        ],
    ),
    ("", [("", 1.0)]),  # A1111: an empty prompt is one empty fragment
    ("((red silk)) dress", [("red silk", 1.1 * 1.1), (" dress", 1.0)]),
    ("[muted] tones", [("muted", 1 / 1.1), (" tones", 1.0)]),
    (
        "a (linen:1.3) shirt [with (pockets)]",
        [("a ", 1.0), ("linen", 1.3), (" shirt ", 1.0), ("with ", 1 / 1.1), ("pockets", 1.1 * (1 / 1.1))],
    ),  # fmt: skip
    ("florals BREAK stripes", [("florals", 1.0), ("BREAK", -1.0), ("stripes", 1.0)]),
    ("a \\\\ b \\(c\\) (d:0.5)", [("a \\ b (c) ", 1.0), ("d", 0.5)]),
    (LONG, [("silk " * 90, 1.2), (", ", 1.0), ("pleats", 1.1)]),
]


@pytest.mark.parametrize(("prompt", "expected"), TABLE, ids=[p[:30] or "empty" for p, _ in TABLE])
def test_the_parse_equals_a1111s_parse_prompt_attention(prompt, expected):
    assert parse_attention(prompt) == expected


def a1111_conditioning(pipe, fragments: list[tuple[str, float]], count: int | None = None) -> torch.Tensor:
    """What A1111's sd_hijack_clip builds from a parse (without comma backtracking): each fragment tokenized
    alone, chunks of 75 (BREAK closes one), <start> + chunk + <end> padded with <end>, token vectors times their
    weights, then each chunk scaled back to its own mean."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    chunks: list[list[tuple[int, float]]] = [[]]
    for text, weight in fragments:
        if (text, weight) == ("BREAK", -1.0):
            chunks.append([])
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if len(chunks[-1]) == CHUNK:
                chunks.append([])
            chunks[-1].append((token, weight))
    chunks += [[] for _ in range((count or len(chunks)) - len(chunks))]
    out = []
    for chunk in chunks:
        pad = CHUNK - len(chunk)
        ids = [tokenizer.bos_token_id, *(t for t, _ in chunk), tokenizer.eos_token_id] + [tokenizer.eos_token_id] * pad
        weights = torch.tensor([1.0, *(w for _, w in chunk), 1.0] + [1.0] * pad)
        with torch.no_grad():
            z = encoder(torch.tensor([ids]))[0][0]
        mean = z.mean()
        z = z * weights[:, None]
        out.append(z * (mean / z.mean()))
    return torch.cat(out)[None]


@pytest.mark.parametrize(("prompt", "expected"), TABLE, ids=[p[:30] or "empty" for p, _ in TABLE])
def test_the_conditioning_is_what_a1111s_parse_implies(studio: Studio, prompt, expected):
    pipe = studio.cache.base()
    kwargs = prompt_kwargs(pipe, prompt, "blurry")
    if prompt in ("normal text", ""):  # no syntax: diffusers' own path, untouched
        assert kwargs == {"prompt": prompt, "negative_prompt": "blurry"}
        return
    reference = a1111_conditioning(pipe, expected)
    assert kwargs["prompt_embeds"].shape == reference.shape
    torch.testing.assert_close(kwargs["prompt_embeds"], reference, rtol=0, atol=1e-6)
    negative = a1111_conditioning(pipe, [("blurry", 1.0)], count=reference.shape[1] // (CHUNK + 2))
    torch.testing.assert_close(kwargs["negative_prompt_embeds"], negative, rtol=0, atol=1e-6)


def test_break_and_long_prompts_make_the_chunks_a1111_makes(studio: Studio):
    pipe = studio.cache.base()
    assert prompt_kwargs(pipe, "florals BREAK stripes", "")["prompt_embeds"].shape[1] == 2 * (CHUNK + 2)
    assert prompt_kwargs(pipe, LONG, "")["prompt_embeds"].shape[1] == 2 * (CHUNK + 2)  # 90 + 3 tokens
    assert prompt_kwargs(pipe, "silk " * 80, "")["prompt_embeds"].shape[1] == 2 * (CHUNK + 2)  # plain long: as before


def run(studio: Studio, prompt: str, negative: str = "blurry") -> np.ndarray:
    req = Txt2ImgRequest(prompt=prompt, negative_prompt=negative, num_inference_steps=2, seed=11)
    return pixels(txt2img(studio, req).paths[0])


def test_weight_1_equals_the_plain_word_and_other_weights_change_the_image(studio: Studio):
    plain = run(studio, "a red silk dress")
    assert np.array_equal(run(studio, "a (red:1.0) silk dress"), plain)  # weighted path, bit-identical
    assert np.array_equal(run(studio, "a red silk dress", "(blurry:1.0)"), plain)
    assert np.abs(run(studio, "a (red:1.6) silk dress") - plain).max() > 0


def test_the_token_counter_counts_what_clip_reads(studio: Studio, tiny_dir):
    tokenizer = studio.cache.base().tokenizer
    library = StyleLibrary(tiny_dir / "loras", tiny_dir / "embeddings")
    words = clip_tokens(tokenizer, "a red dress")
    assert clip_tokens(tokenizer, "a red dress <lora:house-florals:0.8>", library) == words  # tags: nothing
    assert clip_tokens(tokenizer, "a (red:1.3) [dress]", library) == words  # brackets and weights: nothing
    assert clip_tokens(tokenizer, "a red dress, housemodel", library) == words + 1 + 3  # comma + 3 vectors
    assert clip_tokens(tokenizer, "a red dress, houseprint", library) == words + 1 + 1
