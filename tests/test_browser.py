"""The studio in a real browser (Debian's chromium, headless, driven by Playwright): a designer generates in every
tab, sends a txt2img result to Refine and to Inpaint (brushing the mask with the mouse), restores a form from a
PNG, and every tab fits a desktop and a phone screen. Screenshots land in test-artifacts/browser/.

Never `playwright install`: the browser is the system's chromium (no download).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from studio.metadata import parse_infotext, read_parameters
from tests.conftest import REPO, pixels

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts" / "browser"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TABS = {"txt2img": "Create", "refine": "Refine", "textile": "Textile", "inpaint": "Inpaint", "restyle": "Restyle",
        "png-info": "PNG Info"}  # fmt: skip
RUN_S = 60_000  # ms for one tiny generation on a busy 2-core CI machine (they take 1-5 s)
# Every expectation waits up to 15 s instead of Playwright's 5 s: on a loaded 2-core machine a click's handler may wait
# behind a generation in the queue (a restore once took longer than 5 s there). What is expected stays the same.
expect.set_options(timeout=15_000)
STEPS = 3


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, running_app) -> Iterator[Page]:
    url, _ = running_app
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(url)
    expect(page.locator("#tab-txt2img")).to_be_visible(timeout=30_000)
    try:
        yield page
    finally:
        context.close()


# ---- locating Gradio components by what the designer reads --------------------------------------------------------


def block(scope: Locator | Page, label: str) -> Locator:
    """The component whose block label (galleries, images, files) reads exactly `label`."""
    page = scope if isinstance(scope, Page) else scope.page  # `has=` locators are relative: build them unscoped
    title = page.locator("label[data-testid='block-label']", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return scope.locator("div.block").filter(has=title).last


def thumbnails(scope: Locator, label: str) -> Locator:
    """Images shown in a results gallery (not the Examples, which also use `.gallery-item`)."""
    return block(scope, label).locator("button.thumbnail-item img")


def textbox(scope: Locator, label: str) -> Locator:
    info = scope.page.locator("[data-testid='block-info']", has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return scope.locator("label.container").filter(has=info).locator("textarea")


def set_number(scope: Locator, label: str, value: float) -> None:
    field = scope.get_by_label(f"number input for {label}", exact=True)
    field.fill(str(value))
    field.press("Enter")
    expect(scope.get_by_label(f"range slider for {label}", exact=True)).to_have_value(str(value))


def open_tab(page: Page, mode: str) -> Locator:
    """Click the tab's title; on a narrow screen the tabs that do not fit sit in the "More tabs" menu."""
    title = page.get_by_role("tab", name=TABS[mode], exact=True)
    if title.count():
        title.click()
    else:
        page.get_by_role("button", name="More tabs").click()
        page.locator(".overflow-dropdown button", has_text=re.compile(rf"^{re.escape(TABS[mode])}$")).click()
    tab = page.locator(f"#tab-{mode}")
    expect(tab).to_be_visible()
    return tab


def wait_for_result(tab: Locator, gallery: str = "Results") -> str:
    """Wait until the gallery shows an image and the Parameters box is filled (an error toast fails at once);
    return the shown file's name."""
    image = thumbnails(tab, gallery).first
    error = tab.page.locator(".toast-body.error")  # info toasts ("Sent to Refine …") are the UI answering
    expect(image.or_(error).first).to_be_visible(timeout=RUN_S)
    if error.count() and not image.is_visible():
        pytest.fail(f"The UI reported: {error.first.inner_text()}")
    expect(textbox(tab, "Parameters")).not_to_have_value("", timeout=RUN_S)
    src = image.get_attribute("src") or ""
    assert "/gradio_api/file=" in src and src.endswith(".png"), src
    return Path(src).name


def shot(page: Page, name: str) -> None:
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


def saved(studio, mode: str) -> list[Path]:
    return sorted(studio.outputs.root.rglob(f"{mode}-*.png"), key=lambda p: p.stat().st_mtime)


# ---- the designer's session -----------------------------------------------------------------------------------------


def generate_txt2img(page: Page) -> str:
    tab = open_tab(page, "txt2img")
    tab.get_by_label("Prompt", exact=True).fill("a wrap dress in emerald silk, photo")
    set_number(tab, "Steps", STEPS)
    tab.get_by_role("button", name="Generate", exact=True).click()
    name = wait_for_result(tab)
    assert "a wrap dress in emerald silk" in textbox(tab, "Parameters").input_value()
    shot(page, "01-txt2img")
    return name


def send_to_refine_and_refine(page: Page, source_name: str) -> str:
    page.locator("#tab-txt2img").get_by_role("button", name="Send to Refine").click()
    tab = page.locator("#tab-refine")
    expect(tab).to_be_visible()
    expect(page.get_by_role("tab", name="Refine", exact=True)).to_have_attribute("aria-selected", "true")
    received = block(tab, "Input image (upload, paste or drop; a PNG's parameters are restored)").locator("img")
    expect(received).to_have_attribute("src", re.compile(rf"/{re.escape(source_name)}$"))
    # The look travels with the image: the sent PNG's prompt fills Refine's prompt.
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value(re.compile("a wrap dress in emerald silk"))
    set_number(tab, "Steps", STEPS)
    set_number(tab, "Loops", 1)
    tab.get_by_role("button", name="Refine", exact=True).click()
    name = wait_for_result(tab, "Loop results")
    shot(page, "02-refine")
    return name


def brush_stroke(page: Page, tab: Locator) -> None:
    """Paint across the middle of the editor's canvas with the mouse (the mask is the brush layer's alpha)."""
    tab.get_by_role("button", name="Brush", exact=True).click()
    canvas = tab.locator("canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None
    x, y = box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + box["width"] * 0.1, y + box["height"] * 0.05, steps=8)
    page.mouse.up()


def send_to_inpaint_and_inpaint(page: Page, studio) -> str:
    open_tab(page, "txt2img").get_by_role("button", name="Send to Inpaint").click()
    tab = page.locator("#tab-inpaint")
    expect(tab).to_be_visible()
    editor = block(tab, "Photo: brush over what to repaint")
    expect(editor.locator("canvas").first).to_be_visible(timeout=30_000)  # the editor starts WebGL: slow on CI
    expect(editor.get_by_text("Drop Image Here")).to_have_count(0)
    brush_stroke(page, tab)
    tab.get_by_label("Prompt", exact=True).fill("puffed sleeve in ivory organza")
    set_number(tab, "Steps", STEPS)
    tab.get_by_role("button", name="Inpaint", exact=True).click()
    name = wait_for_result(tab)
    shot(page, "03-inpaint")
    # The sent image is the one repainted, and the stroke is the mask: some pixels are kept exactly, some change.
    source, result = pixels(saved(studio, "txt2img")[0]), pixels(saved(studio, "inpaint")[-1])
    assert source.shape == result.shape
    kept = np.all(source == result, axis=-1).mean()
    assert 0.1 < kept < 0.99, kept
    return name


def generate_print(page: Page) -> str:
    tab = open_tab(page, "textile")
    tab.get_by_label("Prompt", exact=True).fill("seamless floral print, roses and leaves, flat colours")
    set_number(tab, "Steps", STEPS)
    tab.get_by_role("button", name="Generate print", exact=True).click()
    name = wait_for_result(tab, "Tiles")
    expect(block(tab, "Repeat preview").locator("img")).to_have_attribute("src", re.compile(r"\.png$"))
    shot(page, "04-textile")
    return name


def restyle_example(page: Page) -> str:
    tab = open_tab(page, "restyle")
    tab.locator("button.gallery-item").first.click()  # the Examples row: the project's own dress sketch
    expect(block(tab, "Photo or sketch").locator("img")).to_have_attribute("src", re.compile(r"dress_sketch\.png$"))
    tab.get_by_label("Prompt", exact=True).fill("fashion illustration, silk evening gown, gouache")
    set_number(tab, "Steps", STEPS)
    tab.get_by_role("button", name="Restyle", exact=True).click()
    name = wait_for_result(tab)
    shot(page, "05-restyle")
    return name


def session_results_hold_every_run(page: Page, made: list[str]) -> None:
    """The shared "This session's results" gallery lists what every tab showed, newest first."""
    page.get_by_text("This session's results", exact=True).click()
    shown = thumbnails(page.locator("body"), "Newest first")
    expect(shown).to_have_count(len(made))
    assert [Path(src).name for src in shown.evaluate_all("imgs => imgs.map(i => i.src)")] == made[::-1]


def restore_from_png(page: Page, png: Path) -> None:
    with Image.open(png) as image:
        info = parse_infotext(read_parameters(image) or "")
    tab = open_tab(page, "txt2img")
    tab.get_by_label("Prompt", exact=True).fill("something else entirely")
    set_number(tab, "Steps", 17)
    info_tab = open_tab(page, "png-info")
    block(info_tab, "Atelier or A1111 PNG").locator("input[type=file]").set_input_files(png)
    expect(textbox(info_tab, "Parameters stored in the PNG")).to_have_value(re.compile(re.escape(info.prompt)))
    info_tab.get_by_role("button", name="Use these settings in Create").click()
    expect(page.get_by_role("tab", name="Create", exact=True)).to_have_attribute("aria-selected", "true")
    expect(tab).to_be_visible()
    expect(tab.get_by_label("Prompt", exact=True)).to_have_value(info.prompt)
    expect(tab.get_by_label("number input for Steps", exact=True)).to_have_value(info.params["Steps"])
    shot(page, "06-restored")


def test_a_designer_generates_in_every_tab_sends_results_on_and_restores_a_png(page, running_app):
    _, studio = running_app
    made = [generate_txt2img(page)]
    made.append(send_to_refine_and_refine(page, made[0]))
    made.append(send_to_inpaint_and_inpaint(page, studio))
    made.append(generate_print(page))
    made.append(restyle_example(page))
    session_results_hold_every_run(page, made)
    restore_from_png(page, next(studio.outputs.root.rglob(made[0])))  # the PNG txt2img showed first
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        for mode in TABS:
            open_tab(page, mode)
            page.wait_for_timeout(200)
            shot(page, f"tab-{mode}-{size_name}-{size['width']}")


@pytest.mark.parametrize("size", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_no_tab_scrolls_sideways(page, size):
    """Every control stays reachable: no tab is wider than the window at 1280 px or on a 390 px phone."""
    page.set_viewport_size(size)
    for mode in TABS:
        open_tab(page, mode)
        page.wait_for_timeout(200)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{mode} at {size['width']} px is {overflow} px too wide"


def test_refine_history_survives_a_page_reload(page, running_app):
    """The Refine tree lives in this browser: after a reload the same nodes are listed, and Continue still works."""
    _, studio = running_app
    tab = open_tab(page, "refine")
    block(tab, "Input image (upload, paste or drop; a PNG's parameters are restored)").locator(
        "input[type=file]"
    ).set_input_files(REPO / "assets" / "twill_swatch.png")
    tab.get_by_label("Prompt", exact=True).fill("a block print of tulips")
    set_number(tab, "Steps", STEPS)
    set_number(tab, "Loops", 2)
    tab.get_by_role("button", name="Refine", exact=True).click()
    wait_for_result(tab, "Loop results")
    nodes = tab.locator("#refine-tree button[data-node] img")
    expect(nodes).to_have_count(3, timeout=RUN_S)  # the source and two loops
    before = [Path(src).name for src in nodes.evaluate_all("imgs => imgs.map(i => i.src)")]

    page.reload()
    expect(page.get_by_role("tab", name="Create", exact=True)).to_be_visible(timeout=30_000)
    tab = open_tab(page, "refine")
    nodes = tab.locator("#refine-tree button[data-node] img")
    expect(nodes).to_have_count(3, timeout=30_000)  # the browser's copy comes back after the page loads
    assert [Path(src).name for src in nodes.evaluate_all("imgs => imgs.map(i => i.src)")] == before
    # The restored tree is live, not a picture of one: continue from the first loop.
    nodes.nth(1).click()
    expect(tab.locator("#refine-tree button[aria-selected='true']")).to_have_attribute("data-node", "2")
    tab.get_by_role("button", name="Continue from node", exact=True).click()
    received = block(tab, "Input image (upload, paste or drop; a PNG's parameters are restored)").locator("img")
    expect(received).to_have_attribute("src", re.compile(rf"/{re.escape(before[1])}$"))
    shot(page, "07-refine-after-reload")
