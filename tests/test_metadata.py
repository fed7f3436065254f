"""A1111 infotext: what other tools (A1111's PNG Info, Civitai) write and read."""

from __future__ import annotations

import pytest
from PIL import Image

from studio.metadata import format_infotext, parse_infotext, pnginfo, read_parameters
from studio.schedulers import SAMPLERS, from_infotext

A1111_EXAMPLE = (
    "photo of a linen blazer\nNegative prompt: blurry, text\nSteps: 30, Sampler: DPM++ 2M, Schedule type: Karras, "
    "CFG scale: 7, Seed: 123, Size: 512x768, Model hash: 0123456789, Model: dreamlike-photoreal-2.0, "
    "Denoising strength: 0.75"
)


def test_a1111_example_parses_into_its_fields():
    info = parse_infotext(A1111_EXAMPLE)
    assert info.prompt == "photo of a linen blazer"
    assert info.negative_prompt == "blurry, text"
    assert info.params["Steps"] == "30" and info.params["Size"] == "512x768"
    assert info.params["Denoising strength"] == "0.75"
    assert from_infotext(info.params["Sampler"], info.params["Schedule type"]) == "DPM++ 2M Karras"


def test_values_with_commas_colons_and_newlines_round_trip_json_quoted():
    params = {"Steps": 20, "Sampler": "Euler a", "Seed": 1, "Note": 'a, b: "c"\nd'}
    text = format_infotext("multi\nline prompt", "neg", params)
    assert 'Note: "a, b: \\"c\\"\\nd"' in text
    info = parse_infotext(text)
    assert info.prompt == "multi\nline prompt" and info.params["Note"] == 'a, b: "c"\nd'


def test_non_latin_text_is_stored_as_itxt_and_survives(tmp_path):
    text = format_infotext("シルクのドレス — ✂", "", {"Steps": 1, "Sampler": "DDIM", "Seed": 2})
    path = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(path, pnginfo=pnginfo(text))
    with Image.open(path) as image:
        assert read_parameters(image) == text


def test_prompt_without_negative_has_no_negative_line():
    text = format_infotext("coat", "", {"Steps": 2, "Sampler": "DDIM", "Seed": 3})
    assert "Negative prompt" not in text and parse_infotext(text).negative_prompt == ""


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_writes_a_schedule_type_that_reads_back_to_it(name):
    sampler = SAMPLERS[name]
    assert sampler.schedule_type  # a missing one is A1111's "Automatic": Karras for its DPM++ 2M
    assert from_infotext(sampler.a1111_sampler, sampler.schedule_type) == name


@pytest.mark.parametrize(
    ("sampler", "schedule_type", "expected"),
    [
        ("DPM++ 2M", "Karras", "DPM++ 2M Karras"),
        ("DPM++ 2M", "Automatic", "DPM++ 2M Karras"),  # A1111's default schedule for its DPM++ 2M
        ("DPM++ 2M", "Uniform", "DPM++ 2M"),
        ("DPM++ 2M", None, "DPM++ 2M"),  # before A1111 1.9 (and older Atelier PNGs): the plain one
        ("DPM++ 2M Karras", None, "DPM++ 2M Karras"),
        ("DPM++ 2M Karras", "Automatic", "DPM++ 2M Karras"),  # the name's suffix wins, as in A1111
        ("Euler a", "Automatic", "Euler a"),
        ("Euler", "Uniform", "Euler"),
        ("DDIM", "Karras", "DDIM"),  # a timestep sampler in A1111: the schedule type does not apply
        ("UniPC", "Automatic", "UniPC"),
        ("Euler", "Karras", None),  # not offered here
        ("DPM++ 2M", "Exponential", None),
        ("DPM++ SDE", "Karras", None),
    ],
)
def test_a1111_sampler_and_schedule_type_read_as_a1111_reads_them(sampler, schedule_type, expected):
    assert from_infotext(sampler, schedule_type) == expected
