"""Colourways in a real browser (Debian's chromium, headless, through Playwright, with tests/test_browser.py's
fixtures and helpers): a designer generates a print in Textile, sends it to Colourways, applies two palettes and
downloads the sheet; the tab fits a phone. Screenshots land in test-artifacts/browser/."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from studio.metadata import parse_infotext, read_parameters
from tests import test_browser as shared
from tests.conftest import REPO
from tests.test_browser import DESKTOP, PHONE, RUN_S, block, generate_print, set_number, shot, textbox, thumbnails

# tests/test_browser.py's fixtures (the headless chromium, a page of the served studio), shared as they are
browser, page = shared.browser, shared.page

pytestmark = pytest.mark.slow
PALETTES = ["SS26 Citrus Grove", "AW26 Forest Dusk"]


def open_colourways(page: Page) -> Locator:
    title = page.get_by_role("tab", name="Colourways", exact=True)
    if title.count() and title.first.is_visible():
        title.first.click()
    else:  # a narrow screen: the tabs that do not fit are in the "More tabs" menu
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=re.compile(r"^Colourways$")).click()
    tab = page.locator("#tab-colourways")
    expect(tab).to_be_visible()
    return tab


def choose_palettes(page: Page, tab: Locator, names: list[str]) -> None:
    field = tab.get_by_label("Palettes (one colourway each)")
    for name in names:
        field.click()
        page.get_by_role("option", name=name, exact=True).click()
    page.keyboard.press("Escape")
    for name in names:  # each chosen palette shows as a token and is described with its colours
        expect(tab.get_by_text(f"{name} (8 colours)")).to_be_visible()


def test_a_designer_recolours_a_print_into_two_palettes_and_downloads_the_sheet(page, running_app, tmp_path: Path):
    _, studio = running_app
    tile_name = generate_print(page)
    page.locator("#tab-textile").get_by_role("button", name="Send to Colourways").click()
    tab = page.locator("#tab-colourways")
    expect(tab).to_be_visible()
    expect(page.get_by_role("tab", name="Colourways", exact=True)).to_have_attribute("aria-selected", "true")
    received = block(tab, "Print tile image (send a Textile result here, or upload any print)").locator("img")
    expect(received).to_have_attribute("src", re.compile(rf"/{re.escape(tile_name)}$"))

    tab.get_by_role("button", name="Show the spot colours", exact=True).click()
    expect(block(tab, "Spot colours").locator("img")).to_be_visible(timeout=RUN_S)
    choose_palettes(page, tab, PALETTES)
    tab.get_by_role("button", name="Make colourways", exact=True).click()

    shown = thumbnails(tab, "Colourways")
    expect(shown).to_have_count(3, timeout=RUN_S)  # the original and the two palettes
    expect(textbox(tab, "Parameters")).to_have_value(re.compile("Mode: colourways"), timeout=RUN_S)
    expect(textbox(tab, "Palette listing")).to_have_value(re.compile(re.escape(f"Colourway: {PALETTES[1]} ")))
    expect(block(tab, "Colourway sheet").locator("img")).to_have_attribute("src", re.compile(r"\.png$"))
    shot(page, "08-colourways")

    link = block(tab, "Downloads").locator("a[download^='colourways-sheet-'][download$='.png']")
    with page.expect_download() as download:
        link.click()
    sheet = tmp_path / "sheet.png"
    download.value.save_as(sheet)
    with Image.open(sheet) as picture:
        params = parse_infotext(read_parameters(picture) or "").params
        pixels = np.asarray(picture.convert("RGB"))
    assert params["Mode"] == "colourways-sheet" and params["Colourways"] == "; ".join(["Original", *PALETTES])
    assert params["Repeat"] == "full" and params["Source"] == tile_name  # the repeat came with the Textile tile
    [served] = [
        p for p in studio.outputs.root.rglob("colourways-sheet-*.png") if p.name == download.value.suggested_filename
    ]
    assert np.array_equal(pixels, np.asarray(Image.open(served).convert("RGB")))  # the very sheet the studio wrote
    inks = {tuple(c) for c in pixels.reshape(-1, 3)}
    for palette in PALETTES:  # every ink of the palettes' colourways is on the sheet (as swatches, at least)
        listing = textbox(tab, "Palette listing").input_value().split(f"Colourway: {palette} ")[1]
        for code in re.findall(r"^#([0-9a-f]{6})", listing.split("\n\n")[0], flags=re.M):
            assert tuple(int(code[i : i + 2], 16) for i in (0, 2, 4)) in inks, (palette, code)


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_the_colourways_tab_does_not_scroll_sideways(page, size):
    page.set_viewport_size(size)
    open_colourways(page)
    page.wait_for_timeout(200)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    shot(page, f"tab-colourways-{size['width']}")
    assert overflow <= 0, f"Colourways at {size['width']} px is {overflow} px too wide"


def test_a_designer_picks_colours_by_hand(page, running_app):
    """Show the spot colours, take them into the picked colourways, change one, and get exactly that colourway."""
    tab = open_colourways(page)
    tile = block(tab, "Print tile image (send a Textile result here, or upload any print)")
    tile.locator("input[type=file]").set_input_files(REPO / "assets" / "twill_swatch.png")
    set_number(tab, "Spot colours (N)", 4)
    tab.get_by_role("button", name="Show the spot colours", exact=True).click()
    expect(block(tab, "Spot colours").locator("img")).to_be_visible(timeout=RUN_S)
    page.get_by_text("Pick colours by hand, or write your own palettes", exact=True).click()
    pickers = tab.get_by_text(re.compile(r"^Spot [1-4]: #[0-9a-f]{6}$"))
    expect(pickers).to_have_count(4)
    expect(tab.get_by_text(re.compile(r"^Spot 5"))).to_have_count(0)
    tab.get_by_role("button", name="Add the picked colours as a colourway", exact=True).click()
    mappings = textbox(tab, "Picked colourways (one per line: Name: #spot>#new, …)")
    expect(mappings).to_have_value(re.compile(r"^Picked: (#[0-9a-f]{6}>#[0-9a-f]{6}, ){3}#[0-9a-f]{6}>#[0-9a-f]{6}$"))
    first_spot = mappings.input_value().split(": ")[1][:7]
    mappings.fill(mappings.input_value().replace(f"{first_spot}>{first_spot}", f"{first_spot}>#ff00aa", 1))
    tab.get_by_role("button", name="Make colourways", exact=True).click()
    shown = thumbnails(tab, "Colourways")
    expect(shown).to_have_count(2, timeout=RUN_S)  # the original and the picked one
    expect(textbox(tab, "Palette listing")).to_have_value(
        re.compile(r"#ff00aa  rgb\(255, 0, 170\)  -  <- " + first_spot)
    )
    sheet = block(tab, "Colourway sheet").locator("img")
    sheet.scroll_into_view_if_needed()  # loaded lazily: only once it is in view
    expect(sheet).to_be_visible()
    shot(page, "09-colourways-picked")
