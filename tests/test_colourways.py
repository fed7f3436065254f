"""Colourways: exact recolouring of a separated print (palette colours, pixel counts, bijection), seamless in every
repeat (it commutes with the repeat's roll), nearest-unused CIEDE2000 assignment checked by brute force, print
export at physical size x DPI, strict palette files, and the mode through Gradio's door: `/colourways`, its errors in
words and PNG restore into the tab."""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from skimage.color import deltaE_ciede2000, rgb2lab

import app
from studio import palettes, patterns
from studio.engine import colourways as cw
from studio.engine.colourways import ColourwaysRequest, ColourwaysResult, colourways
from studio.engine.contract import Cancelled, Job, Saved, Studio, events
from studio.errors import RequestError
from studio.metadata import parse_infotext, read_parameters
from studio.modes import BUILTIN, COLOURWAYS, by_name, colourways_mode, gpu_endpoints, public_endpoints
from studio.palettes import Palette, PaletteError, to_hex
from studio.restore import Restorer
from studio.settings import Limits
from studio.ui.colourways_tab import add_picked_colourway, fill_pickers, picked_colour
from studio.ui.tab import ModeCalls
from studio.ui.widgets import UIContext
from tests.conftest import REPO, free_port, make_settings

SHIPPED = palettes.library()
CITRUS, DUSK = SHIPPED["SS26 Citrus Grove"], SHIPPED["AW26 Forest Dusk"]
RGB = tuple[int, int, int]


def print_tile(height: int = 96, width: int = 128) -> Image.Image:
    """A repeat tile with thousands of colours (smooth periodic waves), so separation has real work to do."""
    y, x = np.mgrid[0:height, 0:width]
    waves = [
        127 + 120 * np.sin(2 * np.pi * (x / width + 2 * y / height)),
        127 + 120 * np.cos(2 * np.pi * 3 * y / height),
        127 + 100 * np.sin(2 * np.pi * (2 * x / width - y / height)),
    ]
    return Image.fromarray(np.stack(waves, -1).round().astype(np.uint8))


def colours_of(image: Image.Image | np.ndarray) -> dict[RGB, int]:
    """Each colour of an image and its pixel count."""
    flat = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).reshape(-1, 3)
    values, counts = np.unique(flat, axis=0, return_counts=True)
    return {(int(r), int(g), int(b)): int(n) for (r, g, b), n in zip(values, counts, strict=True)}


def recoloured(tile: Image.Image, palette: Palette, keep_order: bool = False, colors: int = 6) -> np.ndarray:
    spots = cw.separate(tile, colors)
    return np.asarray(spots.image(cw.to_palette(spots, palette, keep_order, merge=False).targets))


# ---- exact: palette colours, pixel counts, a bijection ----------------------------------------------------------
@pytest.mark.parametrize("keep_order", [False, True], ids=["nearest", "keep-order"])
@pytest.mark.parametrize("palette", list(SHIPPED), ids=list(SHIPPED))
def test_a_recoloured_tile_has_the_palettes_colours_with_the_sources_counts_one_to_one(
    palette: str, keep_order: bool
) -> None:
    tile = print_tile()
    separated = patterns.colourway(tile, 6).image  # Textile's own colourway step: the spot colours to map from
    spots = cw.separate(tile, 6)
    colourway = cw.to_palette(spots, SHIPPED[palette], keep_order, merge=False)
    out = spots.image(colourway.targets)
    source_counts, out_counts = colours_of(separated), colours_of(out)
    assert len(source_counts) == 6 and set(spots.colors) == set(source_counts)
    assert set(out_counts) == set(colourway.targets) and set(out_counts) <= set(SHIPPED[palette].colors)
    for spot, target in zip(spots.colors, colourway.targets, strict=True):
        assert out_counts[target] == source_counts[spot], (to_hex(spot), to_hex(target))
    # a bijection on the used colours: every source colour goes to one colour, and no two to the same one
    pairs = {(a, b) for a, b in zip(map(tuple, np.asarray(separated).reshape(-1, 3)),
                                    map(tuple, np.asarray(out).reshape(-1, 3)), strict=True)}  # fmt: skip
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 6


def test_a_tile_that_already_has_few_colours_keeps_them_exactly() -> None:
    flat = np.zeros((32, 48, 3), np.uint8)
    flat[:, :20], flat[:, 20:35], flat[:, 35:] = (250, 240, 230), (20, 40, 90), (200, 30, 60)
    spots = cw.separate(Image.fromarray(flat), 6)
    assert spots.colors == ((250, 240, 230), (20, 40, 90), (200, 30, 60)) and spots.counts == (640, 480, 416)
    assert np.array_equal(np.asarray(spots.image()), flat)


# ---- seamless stays seamless: the recolouring commutes with the repeat's roll ------------------------------------
MOVES = [(0, 37), (29, 0), (53, 71), (-17, 90)]


@pytest.mark.parametrize("repeat", ["full", "half_drop", "brick"])
def test_recolouring_commutes_with_the_repeats_roll(repeat: str) -> None:
    tile = np.asarray(print_tile())
    for dy, dx in MOVES:
        moved_first = recoloured(Image.fromarray(patterns.translate(tile, dy, dx, repeat)), DUSK)
        recoloured_first = patterns.translate(recoloured(Image.fromarray(tile), DUSK), dy, dx, repeat)
        assert np.array_equal(moved_first, recoloured_first), (repeat, dy, dx)


def test_a_position_dependent_recolouring_would_not_commute() -> None:
    """The control that shows the roll test can fail: error diffusion (dithering) depends on where a pixel is."""
    tile = np.asarray(print_tile())

    def dithered(array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(array)
        spots = image.quantize(6)  # the same spot colours, then each pixel's error pushed on to its neighbours
        return np.asarray(image.quantize(palette=spots, dither=Image.Dither.FLOYDSTEINBERG).convert("RGB"))

    moved = patterns.translate(tile, 29, 37, "half_drop")
    assert not np.array_equal(dithered(moved), patterns.translate(dithered(tile), 29, 37, "half_drop"))


# ---- nearest unused by CIEDE2000, against brute force ------------------------------------------------------------
def brute_force(spots: Sequence[RGB], palette: Sequence[RGB], keep_order: bool) -> list[int]:
    """Every one-to-one assignment of spot colours to palette colours (only the light/dark-order-keeping ones with
    `keep_order`), the best by the nearest-unused rule: spot colours in the given order (most used first), each as
    near as it can be (CIEDE2000, one pair at a time), equal distances to the earlier palette colour."""

    def lab(c: RGB) -> np.ndarray:
        return rgb2lab(np.array([[c]], dtype=np.float64) / 255.0)[0, 0]

    distance = {(i, j): float(deltaE_ciede2000(lab(s), lab(p))) for i, s in enumerate(spots)
                for j, p in enumerate(palette)}  # fmt: skip
    light = {("s", i): (lab(s)[0], i) for i, s in enumerate(spots)} | {
        ("p", j): (lab(p)[0], j) for j, p in enumerate(palette)
    }
    best: tuple[Any, ...] | None = None
    chosen: list[int] = []
    for perm in itertools.permutations(range(len(palette)), len(spots)):
        if keep_order and any(
            (light[("s", a)] < light[("s", b)]) != (light[("p", perm[a])] < light[("p", perm[b])])
            for a, b in itertools.combinations(range(len(spots)), 2)
        ):
            continue
        key = tuple(x for i, j in enumerate(perm) for x in (distance[(i, j)], j))
        if best is None or key < best:
            best, chosen = key, list(perm)
    return chosen


def _random_palettes() -> list[tuple[str, list[RGB], list[RGB]]]:
    rng = np.random.default_rng(2026)
    table = []
    for name, palette in SHIPPED.items():
        for n in (3, 5, 6):
            spots = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]
            table.append((f"{name}-{n}", spots, list(palette.colors)))
    for k, n in ((4, 4), (6, 3), (7, 5)):  # random palettes too, the palette as large as the print or larger
        palette = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(k)]
        spots = [tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(n)]
        table.append((f"random-{k}-{n}", spots, palette))
    return table  # type: ignore[return-value]


TABLE = _random_palettes()


@pytest.mark.parametrize("keep_order", [False, True], ids=["nearest", "keep-order"])
@pytest.mark.parametrize(("case", "spots", "palette"), TABLE, ids=[row[0] for row in TABLE])
def test_nearest_unused_matches_a_brute_force_ciede2000_assignment(
    case: str, spots: list[RGB], palette: list[RGB], keep_order: bool
) -> None:
    assert cw.assign(spots, palette, keep_order) == brute_force(spots, palette, keep_order)


def test_keep_order_keeps_light_and_dark_in_order_and_exact_matches_stay() -> None:
    spots = cw.separate(print_tile(), 6)
    lightness = cw.to_lab(spots.colors)[:, 0]
    for palette in SHIPPED.values():
        kept = cw.to_palette(spots, palette, keep_order=True, merge=False)
        assert np.array_equal(np.argsort(lightness), np.argsort(cw.to_lab(kept.targets)[:, 0])), palette.name
    exact = Palette("Shuffled", tuple(reversed(spots.colors)))  # the spot colours themselves: each finds itself
    assert cw.to_palette(spots, exact, keep_order=False, merge=False).targets == spots.colors


def test_a_palette_with_fewer_colours_says_so_and_merging_makes_it_fit() -> None:
    spots = cw.separate(print_tile(), 6)
    small = Palette("Four inks", ((20, 30, 60), (240, 235, 220), (190, 60, 50), (90, 140, 80)))
    with pytest.raises(RequestError, match=r"has 4 colours, but the print is separated into 6 spot colours.*Merge"):
        cw.to_palette(spots, small, keep_order=False, merge=False)
    merged = cw.to_palette(spots, small, keep_order=False, merge=True)
    assert set(merged.targets) == set(small.colors)  # the closest spot colours share; every ink is used
    counts = colours_of(spots.image(merged.targets))
    for target in small.colors:
        assert counts[target] == sum(n for n, t in zip(spots.counts, merged.targets, strict=True) if t == target)


# ---- picked mappings and palettes as text ------------------------------------------------------------------------
def test_picked_mappings_read_back_exactly_and_bad_ones_say_why() -> None:
    spots = cw.separate(print_tile(), 4)
    a, b, c, d = spots.hex
    [picked] = cw.parse_mappings(f"Night: {a}>#0e2a47, {b} -> #FBFAF5", spots)
    assert picked.name == "Night" and picked.targets[:2] == ((14, 42, 71), (251, 250, 245))
    assert picked.targets[2:] == spots.colors[2:]  # spot colours not named keep their colour
    assert cw.parse_mappings(cw.format_mapping(picked, spots), spots)[0].targets == picked.targets
    bad = {
        f"{a}>#12345G": "'#12345G' is not a hex colour",
        "#010203>#ffffff": "not one of the print's 4 spot colours",
        f"{a}>#ffffff, {b}>#ffffff": "would both become #ffffff",
        f"{a} #ffffff": "is not a pair",
        f"{a}>#000000, {a}>#ffffff": "mapped twice",
    }
    for text, message in bad.items():
        with pytest.raises(RequestError, match=re.escape(message)):
            cw.parse_mappings(text, spots)
    assert len(set(cw.parse_mappings(f"{a}>#ffffff, {b}>#ffffff", spots, merge=True)[0].targets)) == 3
    assert cw.mappings_problem(f"{a}>#12345G") is not None and cw.mappings_problem(f"X: {a}>{d}; {c}>{b}") is None


def test_palettes_as_text_and_from_a_mood_photo() -> None:
    [mill, unnamed] = palettes.parse_palettes("Mill inks: #1D5C8C E9D8B4, #F26B5B\n#000000 #ffffff")
    assert mill.name == "Mill inks" and mill.hex == ["#1d5c8c", "#e9d8b4", "#f26b5b"]
    assert unnamed.name == "Custom 2" and len(unnamed.colors) == 2
    for text, message in {"X: #12345G #000000": "'#12345G' is not a hex colour", "X: #000000": "it has 1",
                          "X: #000000 #000000": "listed twice"}.items():  # fmt: skip
        with pytest.raises(RequestError, match=re.escape(message)):
            palettes.parse_palettes(text)
    photo = np.zeros((60, 90, 3), np.uint8)
    photo[:, :30], photo[:, 30:70], photo[:, 70:] = (200, 40, 40), (30, 90, 160), (240, 220, 120)
    mood = palettes.from_image(Image.fromarray(photo), 3)
    assert mood.colors == ((30, 90, 160), (200, 40, 40), (240, 220, 120))  # most of the picture first


def test_the_tab_reads_colour_pickers_into_a_picked_colourway() -> None:
    assert [picked_colour(v) for v in ("#AbC", "#FF00AA", "rgba(255, 0, 170, 1)", "rgb(0.4, 12.6, 300)", "blue")] == [
        "#aabbcc", "#ff00aa", "#ff00aa", "#000dff", None
    ]  # fmt: skip
    table = {"colors": ["#112233", "#445566"], "pixels": [10, 5]}
    line = add_picked_colourway(table, "", "Night: 2;", "#000000", "rgb(255, 255, 255)", "#123456")
    assert line == "Night  2: #112233>#000000, #445566>#ffffff"  # pickers past the spot colours are hidden, unused
    assert add_picked_colourway(table, line, "", "#010101", "#020202").splitlines() == [
        line, "Picked: #112233>#010101, #445566>#020202"
    ]  # fmt: skip
    with pytest.raises(gr.Error, match="Show the spot colours first"):
        add_picked_colourway(None, "", "x", "#000000")
    with pytest.raises(gr.Error, match="is not a colour"):
        add_picked_colourway(table, "", "x", "teal", "#000000")
    updates = fill_pickers(table)
    assert len(updates) == cw.MAX_COLORS and [u["visible"] for u in updates] == [True, True] + [False] * 14
    assert (updates[1]["value"], updates[1]["label"]) == ("#445566", "Spot 2: #445566")


# ---- palette files: strict, errors name the file and the key ------------------------------------------------------
def test_the_shipped_palettes_are_seasonal_and_named() -> None:
    assert len(SHIPPED) >= 3
    for palette in SHIPPED.values():
        assert len(palette.colors) >= 6 and len(palette.names) == len(palette.colors) and palette.description
        assert palette.path is not None and palette.path.parent == palettes.PALETTES_DIR


GOOD = {"name": "Test palette", "colors": ["#112233", {"hex": "#445566", "name": "Slate"}]}
BAD = [
    ({**GOOD, "season": "SS26"}, "season", "unknown key"),
    ({"name": "No colours"}, "colors", "missing"),
    ({**GOOD, "colors": ["#112233", "#12345G"]}, "colors[1]", "'#12345G' is not a hex colour"),
    ({**GOOD, "colors": ["#112233", {"hex": "blue"}]}, "colors[1].hex", "'blue' is not a hex colour"),
    ({**GOOD, "colors": ["#112233", "445566"]}, "colors[1]", "'445566' is not a hex colour; write \"#RRGGBB\""),
    ({**GOOD, "colors": ["#112233", {"hex": "#445566", "code": 7}]}, "colors[1].code", "unknown key"),
    ({**GOOD, "colors": ["#112233", {"name": "x"}]}, "colors[1].hex", "missing"),
    ({**GOOD, "colors": ["#112233", "#112233"]}, "colors[1]", "already colors[0]"),
    ({**GOOD, "colors": ["#112233"]}, "colors", "2 to 64 colours"),
    ({**GOOD, "name": "SS26: Citrus"}, "name", "must not hold ':'"),
    ({**GOOD, "colors": ["#112233", {"hex": "#445566", "name": ""}]}, "colors[1].name", "non-empty"),
]


@pytest.mark.parametrize(("data", "key", "problem"), BAD, ids=[row[1] + "-" + row[2][:12] for row in BAD])
def test_a_broken_palette_file_names_its_file_and_key(tmp_path: Path, data: dict[str, Any], key: str, problem: str):
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(PaletteError, match=re.escape(f"{path}: {key}: ") + ".*" + re.escape(problem)):
        palettes.read_palette(path)
    palettes.read_palette(_write(tmp_path / "good.json", GOOD))  # the same file, mended, loads


def _write(path: Path, data: object) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def test_bad_json_and_two_palettes_of_one_name_are_refused(tmp_path: Path) -> None:
    _write(tmp_path / "a.json", GOOD)
    _write(tmp_path / "b.json", {**GOOD, "name": "TEST PALETTE"})
    with pytest.raises(PaletteError, match=re.escape(f"{tmp_path / 'b.json'}: name: ") + ".*also the name of a.json"):
        palettes.load_palettes(tmp_path)
    _write(tmp_path / "b.json", '{"name": "x", "colors": [')
    with pytest.raises(PaletteError, match=re.escape(str(tmp_path / "b.json")) + ": not valid JSON"):
        palettes.load_palettes(tmp_path)


def test_a_broken_palette_stops_the_studio_at_startup_naming_file_and_key(tiny_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "palettes"
    shutil.copytree(palettes.PALETTES_DIR, folder)
    _write(folder / "zz-mill.json", {**GOOD, "colors": ["#112233", {"hex": "#4455"}]})
    modes = [mode for mode in BUILTIN if mode.name != "colourways"] + [colourways_mode(folder)]
    studio = app.create_studio(make_settings(tiny_dir, tmp_path / "outputs"))
    with pytest.raises(PaletteError, match=re.escape(f"{folder / 'zz-mill.json'}: colors[1].hex: ")):
        app.build_demo(studio, modes=modes)
    _write(folder / "zz-mill.json", {**GOOD, "name": "Mill inks"})  # an operator's own palette, mended
    with gr.Blocks():
        tab = colourways_mode(folder).tab(UIContext(64, Limits(), lambda text: ""), ModeCalls("colourways", print))
    assert "Mill inks" in [value for _, value in tab.fields["palettes"].choices]


# ---- the run: files, print export, metadata ---------------------------------------------------------------------
def test_print_export_is_physical_size_times_dpi_with_the_dpi_stored_and_listed_colours(studio: Studio) -> None:
    req = ColourwaysRequest(image=print_tile(), colors=6, palettes=(CITRUS.name, DUSK.name), repeat="half_drop",
                            physical_width=8.0, unit="cm", dpi=150)  # fmt: skip
    result = colourways(studio, req)
    expected_w = patterns.print_pixels(8.0, "cm", 150)  # 8 cm at 150 DPI; the height follows the 128x96 tile
    assert [e.colourway.name for e in result.exports] == ["Original", CITRUS.name, DUSK.name]
    for export in result.exports:
        with Image.open(export.print_file) as printed:
            assert printed.size == (expected_w, round(expected_w * 96 / 128))
            assert round(printed.info["dpi"][0]) == round(printed.info["dpi"][1]) == 150
            used = colours_of(printed)
        listed = [line.split()[0] for line in export.listing.read_text().splitlines() if line.startswith("#")]
        assert sorted(listed) == sorted(to_hex(c) for c in used)  # the listing is the print file's colours
        assert set(used) == set(export.colourway.targets)  # each pixel one ink: no blends at print size
        with Image.open(export.tile.path) as tile:  # the tile file, with a DPI that gives it the same size
            assert tile.size == (128, 96) and abs(128 / tile.info["dpi"][0] * 2.54 - 8.0) < 0.2
    listing = result.exports[1].listing.read_text()
    for colour, name in zip(CITRUS.hex, CITRUS.names, strict=True):
        if colour in listing:
            assert re.search(rf"{colour}  rgb\(\d+, \d+, \d+\)  {re.escape(name)}  <- #", listing)
    assert result.listing_file is not None and result.listing_file.read_text() == result.listing


def noise_tile(height: int = 96, width: int = 128) -> np.ndarray:
    """Five inks at random, pixel by pixel: every edge of the tile matters when it is resampled."""
    inks = np.array([(250, 240, 230), (20, 40, 90), (200, 30, 60), (90, 140, 80), (240, 200, 60)], np.uint8)
    return inks[np.random.default_rng(5).integers(0, len(inks), (height, width))]


@pytest.mark.parametrize("repeat", ["full", "half_drop", "brick"])
def test_the_print_file_commutes_with_the_repeats_roll_at_print_scale(studio: Studio, repeat: str) -> None:
    """The print file is still the repeat: at twice the tile's size, printing a moved tile is the print moved."""
    tile, (dy, dx) = noise_tile(), (29, 37)

    def printed(array: np.ndarray) -> np.ndarray:
        req = ColourwaysRequest(image=Image.fromarray(array), colors=5, palettes=(DUSK.name,), repeat=repeat,
                                include_original=False, physical_width=2.56, unit="in", dpi=100)  # fmt: skip
        return np.asarray(Image.open(colourways(studio, req).exports[0].print_file).convert("RGB"))

    first = printed(tile)
    assert first.shape == (192, 256, 3)
    assert np.array_equal(
        printed(patterns.translate(tile, dy, dx, repeat)), patterns.translate(first, 2 * dy, 2 * dx, repeat)
    )

    def plain(array: np.ndarray) -> np.ndarray:  # the control: resampled as an image with no repeat
        spots = cw.separate(Image.fromarray(array), 5)
        return np.asarray(cw.print_image(Image.fromarray(array), spots, spots.colors, (256, 192), "none"))

    moved = plain(patterns.translate(tile, dy, dx, repeat))
    assert not np.array_equal(moved, patterns.translate(plain(tile), 2 * dy, 2 * dx, repeat))


def test_metadata_records_the_source_and_the_mapping_and_reproduces_the_colourway(studio: Studio) -> None:
    tile = print_tile()
    req = ColourwaysRequest(image=tile, colors=5, palettes=(CITRUS.name,), keep_order=True, repeat="brick")
    first = colourways(studio, req).exports[1]
    params = parse_infotext(first.tile.infotext).params
    digest = cw.load_source(studio, tile).digest
    assert (params["Mode"], params["Source hash"], params["Repeat"], params["Colours"]) == ("colourways", digest,
                                                                                           "brick", "5")  # fmt: skip
    assert params["Colour order"] == cw.KEPT and params["Palette"] == CITRUS.name
    again = ColourwaysRequest(image=tile, colors=5, mappings=params["Mapping"], include_original=False, repeat="brick")
    second = colourways(studio, again).exports[0]
    assert second.colourway.name == CITRUS.name
    assert np.array_equal(np.asarray(first.tile.image), np.asarray(second.tile.image))


def test_a_textile_tile_brings_its_repeat_and_any_other_image_works_with_no_repeat(studio: Studio) -> None:
    saved = studio.outputs.save(print_tile(), "a tulip print\nSteps: 3, Seed: 42, Size: 128x96, Mode: textile, "
                                "Repeat: half_drop", "textile")  # fmt: skip
    req = ColourwaysRequest(image=str(saved), colors=4, palettes=(DUSK.name,))
    result = colourways(studio, req)
    assert result.repeat == "half_drop" and result.notes == [] and result.seed == 42
    info = parse_infotext(result.images[0].infotext)
    assert info.prompt == "a tulip print" and info.params["Source"] == saved.name
    with Image.open(result.sheet) as sheet:  # each colourway's 3x3 half-drop preview, shrunk into its cell
        params = parse_infotext(read_parameters(sheet) or "").params
        assert sheet.width > 2 * 360 and params["Mode"] == "colourways-sheet"
    plain = colourways(studio, dataclasses.replace(req, image=print_tile(64, 80)))
    assert plain.repeat == "none" and "no repeat assumed" in plain.notes[0]


def test_bad_requests_say_what_to_do(studio: Studio) -> None:
    tile = print_tile()
    cases = {
        "no tile": (ColourwaysRequest(image=None, palettes=(DUSK.name,)), "No tile given"),
        "N = 1": (ColourwaysRequest(image=tile, colors=1, palettes=(DUSK.name,)), "between 2 and 16"),
        "N = 17": (ColourwaysRequest(image=tile, colors=17, palettes=(DUSK.name,)), "between 2 and 16"),
        "unknown palette": (ColourwaysRequest(image=tile, palettes=("Nope",)), "Unknown palette(s) 'Nope'"),
        "nothing": (ColourwaysRequest(image=tile), "Nothing to recolour"),
        "fewer": (ColourwaysRequest(image=tile, colors=10, palettes=(DUSK.name,)), "has 8 colours, but the print"),
        "hex": (ColourwaysRequest(image=tile, custom_palettes="Mine: #00FF0 #ffffff"), "'#00FF0' is not a hex"),
        "odd": (ColourwaysRequest(image=print_tile(95, 128), palettes=(DUSK.name,), repeat="half_drop"), "even"),
        "text": (ColourwaysRequest(image=str(REPO / "README.md"), palettes=(DUSK.name,)), "not an image"),
    }
    for req, message in cases.values():
        with pytest.raises(RequestError, match=re.escape(message)):
            colourways(studio, req)


def test_cancel_stops_between_colourways_and_keeps_what_was_saved(studio: Studio) -> None:
    req = ColourwaysRequest(image=print_tile(), palettes=tuple(SHIPPED), include_original=False)
    job = Job()
    stream = events(lambda j: colourways(studio, req, j), job)
    saved = []
    with pytest.raises(Cancelled):
        for event in stream:
            if isinstance(event, Saved):
                saved.append(event)
                job.cancel.set()
    assert len(saved) == 1 and saved[0].generated.path.is_file()


# ---- the mode in the registry and through Gradio's door ----------------------------------------------------------
def test_colourways_is_a_public_endpoint_that_takes_no_gpu_section() -> None:
    assert by_name(BUILTIN)["colourways"] is COLOURWAYS
    assert {"colourways", "colourways_spots"} <= public_endpoints(BUILTIN)
    assert not {"colourways", "colourways_spots"} & gpu_endpoints(BUILTIN)


@pytest.fixture(scope="module")
def served(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Client, Path, Studio]]:
    folder = tmp_path_factory.mktemp("colourways")
    print_tile().save(folder / "tile.png")
    settings = make_settings(tiny_dir, folder / "outputs", port=free_port())
    studio = app.create_studio(settings)
    demo = app.build_demo(studio)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        yield Client(f"http://127.0.0.1:{settings.port}/", verbose=False), folder, studio
    finally:
        demo.close()


def test_the_endpoint_makes_every_colourway_with_its_files(served) -> None:
    client, folder, _ = served
    gallery, sheet, listing, notes, files, infotext = client.predict(
        image=handle_file(str(folder / "tile.png")),
        colors=5,
        palettes=[CITRUS.name, DUSK.name],
        custom_palettes="Mill: #1D5C8C #E9D8B4 #F26B5B #FBFAF5 #0E2A47",
        repeat="full",
        physical_width=5,
        dpi=200,
        api_name="/colourways",
    )
    assert len(gallery) == 4  # the original, two palettes, one written palette
    names = ["Original", CITRUS.name, DUSK.name, "Mill"]
    assert [parse_infotext(_infotext(g["image"])).params["Colourway"] for g in gallery] == names
    sheet_params = parse_infotext(_infotext(sheet)).params
    assert sheet_params["Mode"] == "colourways-sheet" and sheet_params["Colourways"] == "; ".join(names)
    assert all(f"Colourway: {name} " in listing for name in names) and notes == ""
    prints = [f for f in files if Path(f).name.startswith("colourways-print-") and f.endswith(".png")]
    assert len(prints) == 4 and all(Image.open(p).size[0] == patterns.print_pixels(5, "cm", 200) for p in prints)
    assert parse_infotext(infotext).params["Colourway"] == "Original"
    for item in gallery[1:]:
        assert len(colours_of(Image.open(item["image"]))) == 5


def _infotext(path: str) -> str:
    with Image.open(path) as image:
        return read_parameters(image) or ""


def test_the_spot_colours_endpoint_lists_what_mappings_map_from(served) -> None:
    client, folder, _ = served
    _, table = client.predict(image=handle_file(str(folder / "tile.png")), colors=4, api_name="/colourways_spots")
    spots = cw.separate(print_tile(), 4)
    assert table == {"colors": spots.hex, "pixels": list(spots.counts)}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"colors": 12, "palettes": [DUSK.name]}, "has 8 colours, but the print is separated into 12 spot colours"),
        ({"custom_palettes": "Mine: #12345G #000000"}, "'#12345G' is not a hex colour"),
        ({"colors": 20, "palettes": [DUSK.name]}, "greater than maximum value 16"),
        ({"colors": 1, "palettes": [DUSK.name]}, "less than minimum value 2"),
        ({"mappings": "#000000>#ffffff"}, "not one of the print's 6 spot colours"),
        ({"palettes": ["Nope"]}, "'Nope'"),
    ],
    ids=["fewer-colours", "bad-hex", "N-too-large", "N-too-small", "not-a-spot", "unknown-palette"],
)
def test_bad_input_through_the_api_is_refused_in_words(served, extra: dict[str, Any], message: str) -> None:
    client, folder, _ = served
    with pytest.raises(Exception, match=re.escape(message)):
        client.predict(image=handle_file(str(folder / "tile.png")), **extra, api_name="/colourways")


def test_a_file_that_is_no_image_is_refused_in_words(served, tmp_path: Path) -> None:
    client, _, _ = served
    (tmp_path / "notes.png").write_text("not a picture")
    with pytest.raises(Exception, match="not an image PIL can read"):
        client.predict(image=handle_file(str(tmp_path / "notes.png")), palettes=[DUSK.name], api_name="/colourways")


def test_the_tile_and_the_mood_photo_reach_the_engine_unconverted(tiny_dir: Path, tmp_path: Path) -> None:
    seen: list[ColourwaysRequest] = []

    def record(studio: Studio, req: ColourwaysRequest, job: Job | None = None) -> ColourwaysResult:
        seen.append(req)
        return ColourwaysResult(images=[], seed=0, params={})

    modes = [dataclasses.replace(m, run=record) if m.name == "colourways" else m for m in BUILTIN]
    settings = make_settings(tiny_dir, tmp_path / "outputs", port=free_port())
    demo = app.build_demo(app.create_studio(settings), modes=modes)
    app.launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        deep = tmp_path / "deep.png"  # 16-bit: Gradio's own image preprocessing would clip it to 8-bit RGB
        Image.fromarray((np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)).save(deep)
        client = Client(f"http://127.0.0.1:{settings.port}/", verbose=False)
        client.predict(image=handle_file(str(deep)), mood_image=handle_file(str(deep)), palettes=[DUSK.name],
                       api_name="/colourways")  # fmt: skip
        [req] = seen
        assert Path(req.image).read_bytes() == Path(req.mood_image).read_bytes() == deep.read_bytes()
        assert req.palettes == (DUSK.name,)
    finally:
        demo.close()


def test_a_colourway_png_restores_into_the_tab_and_reproduces_the_colourway(served) -> None:
    client, folder, studio = served
    tile = handle_file(str(folder / "tile.png"))
    gallery, *_ = client.predict(image=tile, colors=4, palettes=[DUSK.name], keep_order=True, merge=False,
                                 repeat="brick", dpi=120, api_name="/colourways")  # fmt: skip
    made = gallery[1]["image"]
    mode, values, note = client.predict(png=handle_file(made), api_name="/restore")
    assert mode == "colourways" and "Colourways" in note and "Ignored" not in note
    assert values["mappings"].startswith(f"{DUSK.name}: ") and values["palettes"] == []
    assert (values["colors"], values["repeat"], values["dpi"], values["keep_order"]) == (4, "brick", 120, True)
    assert values["include_original"] is False and values["merge"] is False
    with gr.Blocks():  # every restored value has its field in the tab (the shell fills the form by these names)
        ctx = UIContext(64, Limits(), lambda text: "")
        tab = COLOURWAYS.tab(ctx, ModeCalls("colourways", print, {k: print for k in COLOURWAYS.actions}))
    assert set(values) - {"prompt", "negative_prompt"} <= set(tab.fields)
    assert Restorer(BUILTIN).from_png(made).values == values
    form = {k: v for k, v in values.items() if k in tab.fields}
    again, *_ = client.predict(image=tile, **form, api_name="/colourways")
    assert len(again) == 1
    assert np.array_equal(np.asarray(Image.open(again[0]["image"])), np.asarray(Image.open(made)))


def test_textile_results_can_be_sent_to_colourways(served) -> None:
    """The shell lists every mode whose tab takes an image: Colourways is one, under Textile's results too."""
    client, _, _ = served
    config = client.config
    labels = [c.get("props", {}).get("value") for c in config["components"] if c.get("type") == "button"]
    # under every other tab's results (len(BUILTIN) - 1), the session's results and PNG Info
    assert labels.count("Send to Colourways") == len(BUILTIN) + 1
