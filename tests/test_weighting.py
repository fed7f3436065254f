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
from studio.weighting import CHUNK, parse_attention, weighted_chunks
from tests.conftest import pixels

LONG = "(" + "silk " * 90 + ":1.2), (pleats)"
BACKTRACKED = "silk " * 70 + ", " + "wool " * 10 + "(pleats)"  # the chunk fills 4 tokens after its comma
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
    (BACKTRACKED, [("silk " * 70 + ", " + "wool " * 10, 1.0), ("pleats", 1.1)]),
    ("florals BREAK", [("florals", 1.0), ("BREAK", -1.0), ("", 1.0)]),
]


@pytest.mark.parametrize(("prompt", "expected"), TABLE, ids=[p[:30] or "empty" for p, _ in TABLE])
def test_the_parse_equals_a1111s_parse_prompt_attention(prompt, expected):
    assert parse_attention(prompt) == expected


def a1111_chunks(tokenizer, fragments: list[tuple[str, float]]) -> list[list[tuple[int, float]]]:
    """A1111's `FrozenCLIPEmbedderWithCustomWordsBase.tokenize_line` (modules/sd_hijack_clip.py), step for step, with
    `comma_padding_backtrack` at its default 20."""
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    chunks: list[list[tuple[int, float]]] = []
    tokens: list[int] = []
    multipliers: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, multipliers, last_comma
        chunks.append(list(zip(tokens, multipliers, strict=True)))
        tokens, multipliers, last_comma = [], [], -1

    for text, weight in fragments:
        if text == "BREAK" and weight == -1:
            next_chunk()
            continue
        for token in tokenizer(text, add_special_tokens=False).input_ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= 20:
                moved, moved_weights = tokens[last_comma + 1 :], multipliers[last_comma + 1 :]
                tokens, multipliers = tokens[: last_comma + 1], multipliers[: last_comma + 1]
                next_chunk()
                tokens, multipliers = moved, moved_weights
            if len(tokens) == CHUNK:
                next_chunk()
            tokens.append(token)
            multipliers.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks


def a1111_conditioning(pipe, fragments: list[tuple[str, float]], count: int | None = None) -> torch.Tensor:
    """What A1111's sd_hijack_clip builds from a parse: its chunks (above), <start> + chunk + <end> padded with <end>,
    token vectors times their weights, then each chunk scaled back to its own mean."""
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    chunks = a1111_chunks(tokenizer, fragments)
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
    assert prompt_kwargs(pipe, "florals BREAK", "")["prompt_embeds"].shape[1] == CHUNK + 2  # no empty chunk after


def test_a_full_chunk_moves_the_words_after_its_last_comma_to_the_next_one_as_a1111_does(studio: Studio):
    """A1111's comma_padding_backtrack: 70 words, a comma, 10 words: the first chunk ends at the comma (71 tokens) and
    the 10 words start the second, for a weighted prompt and for a plain long one alike."""
    tokenizer = studio.cache.base().tokenizer
    for prompt in (BACKTRACKED, "silk " * 70 + ", " + "wool " * 10):
        chunks = weighted_chunks(tokenizer, parse_attention(prompt))
        assert len(chunks) == 2 and len(chunks[0]) == 71, prompt  # the comma ends the first chunk
        assert chunks == a1111_chunks(tokenizer, parse_attention(prompt))
    plain = prompt_kwargs(studio.cache.base(), "silk " * 70 + ", " + "wool " * 10, "")["prompt_embeds"]
    torch.testing.assert_close(
        plain, a1111_conditioning(studio.cache.base(), [("silk " * 70 + ", " + "wool " * 10, 1.0)]), rtol=0, atol=0
    )


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
