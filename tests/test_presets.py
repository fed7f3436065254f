"""Presets: every shipped file loads and passes its engine's own checks; a broken file names the file and the key."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from studio import presets
from studio.engine import refine
from studio.modes import BUILTIN, by_name
from studio.presets import ANY, Preset, PresetError, field_table
from studio.settings import Limits

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "presets"
MODES = [mode.name for mode in BUILTIN]
MODE_FIELDS = field_table(BUILTIN, Limits())
WITH_NEGATIVE = [mode for mode in MODES if "negative_prompt" in MODE_FIELDS[mode]]
REQUESTS = {mode.name: mode.request for mode in BUILTIN}
REQUIRED = {
    "txt2img": {"prompt": "a coat"},
    "refine": {"image": None},
    "textile": {"prompt": "a print"},
    "inpaint": {"image": None},
    "restyle": {"image": None, "prompt": "a dress"},
}


def read_preset(path: Path, limits: Limits | None = None) -> Preset:
    return presets.read_preset(path, field_table(BUILTIN, limits or Limits()))


def load_presets(folder: Path, limits: Limits | None = None) -> dict[str, list[Preset]]:
    return presets.load_presets(folder, limits or Limits(), BUILTIN)


def engine_check(mode: str, values: dict[str, Any]) -> None:
    """The mode's own request validation, as the engine runs it before any GPU work."""
    req = REQUESTS[mode](**{**REQUIRED.get(mode, {}), **values})  # a mode whose fields all have defaults needs none
    by_name(BUILTIN)[mode].check(req, Limits())


def write(folder: Path, name: str, data: object) -> Path:
    path = folder / name
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_every_shipped_preset_loads_and_passes_its_engines_checks() -> None:
    files = sorted(SHIPPED.glob("*.json"))
    loaded = [read_preset(path) for path in files]
    assert len(loaded) == len(files) > 0
    by_mode = load_presets(SHIPPED)
    for preset in loaded:
        targets = WITH_NEGATIVE if preset.mode == ANY else (preset.mode,)
        for mode in targets:
            assert preset in by_mode[mode]
            engine_check(mode, preset.values)


def test_every_allowed_key_is_a_field_of_the_modes_request() -> None:
    for mode, request in REQUESTS.items():
        names = {f.name for f in dataclasses.fields(request)}
        assert set(MODE_FIELDS[mode]) <= names, set(MODE_FIELDS[mode]) - names
    assert set(MODE_FIELDS[ANY]) == {"negative_prompt"}


def test_the_required_presets_are_shipped() -> None:
    by_mode = load_presets(SHIPPED)
    dreamlike = presets.find(by_mode, "refine", "Dreamlike refinement")
    assert dreamlike.values == {"strength": 0.75, "guidance_scale": 7.5, "negative_prompt": refine.DEFAULT_NEGATIVE}
    assert any("editorial" in p.name.lower() for p in by_mode["txt2img"] if p.mode == "txt2img")
    assert any("sketch" in p.name.lower() for p in by_mode["restyle"] if p.mode == "restyle")
    prints = " ".join(p.name.lower() for p in by_mode["textile"] if p.mode == "textile")
    for family in ("floral", "paisley", "geometric", "animal", "toile", "plaid"):
        assert family in prints
    negatives = [p for p in by_mode["inpaint"] if p.mode == ANY]
    assert negatives and all(set(p.values) == {"negative_prompt"} for p in negatives)


def test_a_preset_fills_only_the_fields_it_names() -> None:
    preset = Preset(name="x", mode="refine", values={"strength": 0.5})
    form = {"prompt": "my own words", "strength": 0.9, "seed": 7}
    assert preset.apply(form) == {"prompt": "my own words", "strength": 0.5, "seed": 7}


GOOD = {"name": "Good", "mode": "refine", "values": {"strength": 0.5}}
BROKEN = [
    ({**GOOD, "colour": "red"}, "colour"),
    ({"name": "No values", "mode": "refine"}, "values"),
    ({**GOOD, "mode": "img2img"}, "mode"),
    ({**GOOD, "values": {"strenght": 0.5}}, "values.strenght"),
    ({**GOOD, "values": {"width": 512}}, "values.width"),  # refine takes the size of its input
    ({**GOOD, "values": {"strength": 1.5}}, "values.strength"),
    ({**GOOD, "values": {"strength": "high"}}, "values.strength"),
    ({**GOOD, "values": {"loops": 2.5}}, "values.loops"),
    ({**GOOD, "values": {"loops": True}}, "values.loops"),
    ({**GOOD, "values": {"color_correction": 1}}, "values.color_correction"),
    ({**GOOD, "values": {"scheduler": "DPM++ 3M SDE"}}, "values.scheduler"),
    ({**GOOD, "mode": "txt2img", "values": {"width": 500}}, "values.width"),
    ({**GOOD, "mode": "textile", "values": {"repeat": "diagonal"}}, "values.repeat"),
    ({**GOOD, "mode": "inpaint", "values": {"masked_content": "nothing"}}, "values.masked_content"),
    (
        {**GOOD, "mode": "restyle", "values": {"control_guidance_start": 0.8, "control_guidance_end": 0.2}},
        "values.control_guidance_end",
    ),
    ({**GOOD, "mode": "any", "values": {"prompt": "a coat"}}, "values.prompt"),
    ({**GOOD, "name": ""}, "name"),
]


@pytest.mark.parametrize(("data", "key"), BROKEN, ids=[key for _, key in BROKEN])
def test_a_broken_preset_names_its_file_and_key(tmp_path: Path, data: dict[str, Any], key: str) -> None:
    path = write(tmp_path, "broken.json", data)
    with pytest.raises(PresetError) as info:
        read_preset(path)
    assert info.value.path == path and info.value.key == key
    assert str(path) in str(info.value) and f": {key}: " in str(info.value)


@pytest.mark.parametrize("content", ['{"name": "x", "mode": "refine",', "[1, 2]", "\ufeff\x00"])
def test_a_file_that_is_not_one_json_object_names_the_file(tmp_path: Path, content: str) -> None:
    path = write(tmp_path, "bad.json", content)
    with pytest.raises(PresetError, match="bad.json"):
        read_preset(path)


def test_one_broken_file_among_the_shipped_ones_stops_loading(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "presets")
    write(tmp_path / "presets", "zz-typo.json", {**GOOD, "values": {"guidance": 7}})
    with pytest.raises(PresetError, match=r"zz-typo\.json: values\.guidance: unknown key"):
        load_presets(tmp_path / "presets")


def test_two_presets_with_one_name_in_a_tab_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a.json", {"name": "Clean", "mode": "inpaint", "values": {"strength": 0.5}})
    write(tmp_path, "b.json", {"name": "clean", "mode": "any", "values": {"negative_prompt": "text"}})
    with pytest.raises(PresetError, match=r"b\.json: name: .*a\.json"):
        load_presets(tmp_path)


def test_negative_prompt_sets_are_offered_in_every_tab_with_a_negative_prompt(tmp_path: Path) -> None:
    write(tmp_path, "neg.json", {"name": "Neg", "mode": "any", "values": {"negative_prompt": "text"}})
    write(tmp_path, "own.json", {"name": "Own", "mode": "textile", "values": {"repeat": "brick"}})
    by_mode = load_presets(tmp_path)
    assert len(WITH_NEGATIVE) >= 5
    assert all(
        [p.name for p in by_mode[mode]] == (["Own", "Neg"] if mode == "textile" else ["Neg"]) for mode in WITH_NEGATIVE
    )
    assert all(by_mode[mode] == [] for mode in MODES if mode not in WITH_NEGATIVE)  # Colourways has none


def test_limits_tighten_the_allowed_ranges(tmp_path: Path) -> None:
    path = write(tmp_path, "steps.json", {"name": "Long", "mode": "txt2img", "values": {"num_inference_steps": 80}})
    assert read_preset(path).values["num_inference_steps"] == 80
    with pytest.raises(PresetError, match="num_inference_steps"):
        read_preset(path, Limits(max_steps=50))
