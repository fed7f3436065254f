"""The studio as a designer lives in it, part two, in a real browser (Debian's chromium, headless): every tab in
sight and nothing sideways on a 390 px phone, the brush editor's tools beside the photo (not over it), the Refine
history as a tree whose one selection Compare follows, Cancel only while something runs, progress written once,
and the PNG Info tab. Screenshots of every tab at 1280x800 and 390 px go to test-artifacts/browser/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin
from playwright.sync_api import Locator, Page, expect

from tests.conftest import REPO
from tests.test_browser import (  # noqa: F401  (the `browser` fixture is shared)
    ARTIFACTS,
    DESKTOP,
    PHONE,
    RUN_S,
    STEPS,
    block,
    browser,
    set_number,
    textbox,
)
from tests.test_browser_designer import designer, studio_errors, toast  # noqa: F401  (the `designer` fixture)

pytestmark = pytest.mark.slow

REFINE_INPUT = "Input image (upload, paste or drop; a PNG's parameters are restored)"


def tab_titles(page: Page) -> list[str]:
    return page.get_by_role("tab").all_inner_texts()


def open_by_title(page: Page, title: str) -> Locator:
    button = page.get_by_role("tab", name=title, exact=True)
    button.click()
    expect(button).to_have_attribute("aria-selected", "true")
    panel = page.locator(f"#{button.get_attribute('aria-controls')}")
    expect(panel).to_be_visible()
    return panel


def box(locator: Locator) -> dict[str, float]:
    found = locator.bounding_box()
    assert found is not None, locator
    return found


def overlaps(a: dict[str, float], b: dict[str, float]) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


def test_every_tab_is_in_sight_and_fits_a_desktop_and_a_phone(designer) -> None:  # noqa: F811
    """At 390 px every tab title is a visible tab (none in a "More tabs" menu), no tab scrolls sideways, and the
    header's model status stays one line. Screenshots of every tab at both widths."""
    page, problems = designer
    titles = tab_titles(page)
    assert len(titles) >= 7 and "PNG Info" in titles, titles  # every mode's tab and PNG Info
    for size_name, size in (("desktop", DESKTOP), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.wait_for_timeout(300)
        expect(page.get_by_role("button", name="More tabs")).to_have_count(0)
        for title in titles:
            expect(page.get_by_role("tab", name=title, exact=True)).to_be_in_viewport()
        status = page.locator("#model-status p").first  # as long as it gets with every companion resident:
        status.evaluate("p => { p.textContent = 'Current: tiny · resident: ' + 'controlnet (1,377 MiB), '.repeat(6); }")
        line = status.evaluate("p => parseFloat(getComputedStyle(p).lineHeight) || 24")
        assert box(status)["height"] < 1.5 * line, "the model status wraps onto several lines"
        for title in titles:
            open_by_title(page, title)
            page.wait_for_timeout(200)
            overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{title} at {size['width']} px is {overflow} px too wide"
            name = re.sub(r"\W+", "-", title.lower())
            page.screenshot(path=ARTIFACTS / f"phone-test-{name}-{size_name}.png", full_page=size_name == "desktop")
    assert studio_errors(problems) == [], problems


def test_the_brush_tools_sit_beside_the_photo_on_a_phone(designer) -> None:  # noqa: F811
    page, problems = designer
    page.set_viewport_size(PHONE)
    tab = open_by_title(page, "Inpaint")
    editor = block(tab, "Photo: brush over what to repaint")
    editor.locator("input[type=file]").first.set_input_files(REPO / "assets" / "twill_swatch.png")
    canvas = editor.locator("canvas").first
    expect(editor.get_by_text("Upload an image")).to_have_count(0)
    expect(canvas).to_be_visible()
    editor.scroll_into_view_if_needed()
    tools, photo = box(editor.locator(".toolbar-wrap").first), box(canvas)
    assert tools["x"] + tools["width"] <= photo["x"], (tools, photo)  # the tool bar ends before the photo begins
    label, top = box(editor.locator("label[data-testid='block-label']")), box(editor.locator(".top-panel"))
    assert not overlaps(label, top), (label, top)  # zoom and undo do not cut the label
    editor.screenshot(path=ARTIFACTS / "phone-test-inpaint-editor.png")
    assert studio_errors(problems) == [], problems


def refine_node(tab: Locator, node: int) -> Locator:
    return tab.locator(f"#refine-tree button[data-node='{node}']")


def node_file(tab: Locator, node: int) -> str:
    return Path(refine_node(tab, node).locator("img").get_attribute("src") or "").name


def test_the_refine_tree_and_compare_follow_one_selection_through_a_branch_run(designer) -> None:  # noqa: F811
    page, problems = designer
    tab = open_by_title(page, "Refine")
    expect(tab.locator("#refine-compare")).to_be_hidden()  # no empty boxes before there is something to show
    for action in ("Continue from node", "Compare with parent", "Restore recipe (replay)", "Download branch"):
        tab.get_by_role("button", name=action, exact=True).click()
        toast(page, "Pick a node in the history first")
    block(tab, REFINE_INPUT).locator("input[type=file]").set_input_files(REPO / "assets" / "twill_swatch.png")
    tab.get_by_label("Prompt", exact=True).fill("a block print of tulips")
    set_number(tab, "Steps", STEPS)
    set_number(tab, "Loops", 2)
    tab.get_by_role("button", name="Refine", exact=True).click()
    expect(tab.locator("#refine-tree button[data-node]")).to_have_count(3, timeout=RUN_S)  # source and 2 loops
    expect(refine_node(tab, 3)).to_have_attribute("aria-selected", "true")  # the newest node is the selection
    expect(refine_node(tab, 3)).to_contain_text("#3 ← #2")
    expect(refine_node(tab, 3)).to_contain_text("loop 2")
    refine_node(tab, 2).click()  # pick a node in the tree: the picker follows
    expect(tab.get_by_label("Node")).to_have_value(re.compile(r"#2 ← #1"))
    expect(tab.locator("#refine-tree button[aria-selected='true']")).to_have_attribute("data-node", "2")
    tab.get_by_role("button", name="Compare with parent", exact=True).click()
    compare = tab.locator("#refine-compare img")
    expect(compare).to_have_count(2)
    shown = [Path(src).name for src in compare.evaluate_all("l => l.map(i => i.src)")]
    assert shown == [node_file(tab, 1), node_file(tab, 2)]  # the parent, then the node
    tab.get_by_role("button", name="Continue from node", exact=True).click()
    toast(page, "Input set to #2")
    set_number(tab, "Loops", 1)
    tab.get_by_role("button", name="Refine", exact=True).click()  # a branch: #4 grows under #2, beside #3
    expect(tab.locator("#refine-tree button[data-node]")).to_have_count(4, timeout=RUN_S)
    expect(refine_node(tab, 4)).to_contain_text("#4 ← #2")
    # one selection: the picker, the tree's highlight and Compare all show #4 (beside its parent #2)
    expect(tab.get_by_label("Node")).to_have_value(re.compile(r"#4 ← #2"))
    expect(tab.locator("#refine-tree button[aria-selected='true']")).to_have_count(1)
    expect(refine_node(tab, 4)).to_have_attribute("aria-selected", "true")
    expected = [node_file(tab, 2), node_file(tab, 4)]
    expect(compare.last).to_have_attribute("src", re.compile(re.escape(expected[1]) + "$"), timeout=15_000)
    assert [Path(src).name for src in compare.evaluate_all("l => l.map(i => i.src)")] == expected
    tab.locator("#refine-tree").screenshot(path=ARTIFACTS / "phone-test-refine-tree.png")
    assert studio_errors(problems) == [], problems


def overlays_with(tab: Locator, pattern: str, samples: int = 30) -> list[int]:
    """How many of the tab's loading overlays (Gradio's status trackers) show text matching `pattern`, sampled
    every 100 ms (an overlay's text comes and goes between a generator's yields)."""
    return tab.evaluate(
        """async (tab, [pattern, samples]) => {
          const counts = [];
          for (let i = 0; i < samples; i++) {
            const shown = tab.querySelectorAll("[data-testid='status-tracker']:not(.hide)");
            counts.push(Array.from(shown).filter((t) => new RegExp(pattern).test(t.innerText)).length);
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          return counts;
        }""",
        [pattern, samples],
    )


def overlays_visibly_with(tab: Locator, pattern: str, samples: int = 20) -> list[int]:
    """Like `overlays_with`, counting only overlays whose text a designer can see (not hidden by the page)."""
    return tab.evaluate(
        """async (tab, [pattern, samples]) => {
          const counts = [];
          for (let i = 0; i < samples; i++) {
            const texts = tab.querySelectorAll("[data-testid='status-tracker']:not(.hide) .progress-text");
            const seen = Array.from(texts).filter((t) => t.checkVisibility({visibilityProperty: true}));
            counts.push(seen.filter((t) => new RegExp(pattern).test(t.innerText)).length);
            await new Promise((resolve) => setTimeout(resolve, 100));
          }
          return counts;
        }""",
        [pattern, samples],
    )


def test_cancel_shows_only_while_a_run_goes_and_its_progress_is_written_once(designer) -> None:  # noqa: F811
    page, problems = designer
    tab = open_by_title(page, "Create")
    cancel = tab.get_by_role("button", name="Cancel", exact=True)
    expect(cancel).to_be_hidden()
    tab.get_by_label("Prompt", exact=True).fill("a wrap dress in emerald silk, photo")
    set_number(tab, "Steps", 150)
    tab.get_by_role("button", name="Generate", exact=True).click()
    expect(cancel).to_be_visible()
    expect(tab.locator("[data-testid='status-tracker']", has_text=re.compile(r"\d+/150"))).to_have_count(
        1, timeout=RUN_S
    )
    counts = overlays_with(tab, r"\d+/150")
    assert max(counts) == 1, counts  # the steps are written once, never on several outputs at a time
    expect(tab.locator("[data-testid='status-tracker']", has_text="left")).to_have_count(1, timeout=RUN_S)
    page.screenshot(path=ARTIFACTS / "phone-test-progress-once.png")
    cancel.click()
    expect(page.locator(".toast-body", has_text="Cancelled").first).to_be_visible(timeout=RUN_S)
    expect(cancel).to_be_hidden(timeout=15_000)
    # a tab with many outputs (a print's tile, preview, palette, files, seed, parameters) writes it once too
    tab = open_by_title(page, "Textile")
    tab.get_by_label("Prompt", exact=True).fill("seamless floral print, roses")
    set_number(tab, "Steps", 150)
    tab.get_by_role("button", name="Generate print", exact=True).click()
    expect(tab.get_by_text(re.compile(r"\d+/150 steps")).first).to_be_visible(timeout=RUN_S)
    counts = overlays_visibly_with(tab, r"\d+/150")
    assert max(counts) == 1, counts
    tab.get_by_role("button", name="Cancel", exact=True).click()
    expect(page.locator(".toast-body", has_text="Cancelled").first).to_be_visible(timeout=RUN_S)
    assert studio_errors(problems) == [], problems


def png_with_parameters(path: Path) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text(
        "parameters",
        "a linen shirt dress, photo\nNegative prompt: blurry\n"
        "Steps: 7, Sampler: Euler, CFG scale: 6, Seed: 42, Size: 64x64, Model: tiny",
    )
    Image.new("RGB", (64, 64), (180, 60, 90)).save(path, pnginfo=info)
    return path


def test_png_info_shows_a_dropped_png_and_sends_its_settings_and_picture_on(designer, tmp_path) -> None:  # noqa: F811
    page, problems = designer
    tab = open_by_title(page, "PNG Info")
    expect(tab.get_by_role("button", name="Send to Refine")).to_be_hidden()  # nothing to send before a drop
    png = png_with_parameters(tmp_path / "look.png")
    block(tab, "Atelier or A1111 PNG").locator("input[type=file]").set_input_files(png)
    expect(block(tab, "The dropped PNG").locator("img").first).to_be_visible()
    expect(textbox(tab, "Parameters stored in the PNG")).to_have_value(re.compile(r"Steps: 7, Sampler: Euler"))
    page.screenshot(path=ARTIFACTS / "phone-test-png-info-dropped.png")
    tab.get_by_role("button", name="Use these settings in Create").click()
    txt2img = page.locator("#tab-txt2img")
    expect(txt2img).to_be_visible()
    expect(txt2img.get_by_label("Prompt", exact=True)).to_have_value("a linen shirt dress, photo")
    expect(txt2img.get_by_label("number input for Steps", exact=True)).to_have_value("7")
    tab = open_by_title(page, "PNG Info")
    tab.get_by_role("button", name="Send to Refine").click()
    refine = page.locator("#tab-refine")
    expect(refine).to_be_visible()
    expect(block(refine, REFINE_INPUT).locator("img")).to_be_visible()
    expect(refine.get_by_label("Prompt", exact=True)).to_have_value(re.compile("a linen shirt dress"))
    assert studio_errors(problems) == [], problems
