"""The studio as a designer lives in it, in a real browser (Debian's chromium, headless): every click answers in
words, the main action and its result stay in view together, whole images, the seed follows the picked image,
Ctrl+Enter generates, a cancel keeps earlier results, and the page logs no errors. Screenshots go to
test-artifacts/browser/."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.test_browser import (  # noqa: F401  (the `browser` fixture is shared)
    DESKTOP,
    RUN_S,
    STEPS,
    block,
    browser,
    open_tab,
    set_number,
    shot,
    textbox,
    thumbnails,
    wait_for_result,
)

pytestmark = pytest.mark.slow

# Console messages that are not the studio's: chromium's own notices about the page's fonts and favicon.
EXPECTED_CONSOLE = re.compile(r"favicon|Failed to load resource: the server responded with a status of 404")


@pytest.fixture
def designer(browser: Browser, running_app) -> Iterator[tuple[Page, list[str]]]:  # noqa: F811
    """A fresh page, with every page error and console error it logs collected."""
    url, _ = running_app
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
    page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
    page.goto(url)
    expect(page.locator("#tab-txt2img")).to_be_visible(timeout=30_000)
    try:
        yield page, problems
    finally:
        context.close()


def toast(page: Page, words: str) -> None:
    """A toast (info, warning or error) saying `words` appears."""
    expect(page.locator(".toast-body", has_text=re.compile(words)).first).to_be_visible(timeout=15_000)
    page.locator(".toast-close").first.click() if page.locator(".toast-close").count() else None


def studio_errors(problems: list[str]) -> list[str]:
    return [p for p in problems if not EXPECTED_CONSOLE.search(p)]


def test_every_click_answers_in_words_even_with_nothing_to_act_on(designer) -> None:
    page, problems = designer
    tab = open_tab(page, "txt2img")
    tab.get_by_role("button", name="Send to Refine").click()
    toast(page, "Nothing to send yet")
    expect(tab.get_by_role("button", name="Cancel", exact=True)).to_be_hidden()  # Cancel only while a run goes
    tab.get_by_role("button", name="↻ Reuse seed").click()
    toast(page, "No result yet")
    refine = open_tab(page, "refine")
    refine.get_by_role("button", name="Continue from node", exact=True).click()
    toast(page, "Pick a node in the history first")
    refine.get_by_role("button", name="Download branch", exact=True).click()
    toast(page, "Pick a node in the history first")
    page.get_by_text("This session's results", exact=True).click()
    page.get_by_role("button", name="Download this session (zip)").click()
    toast(page, "No results in this session yet")
    shot(page, "designer-01-answers")
    assert studio_errors(problems) == [], problems


def test_generate_and_its_result_in_view_whole_images_and_the_seed_follows_the_pick(designer) -> None:
    page, problems = designer
    tab = open_tab(page, "txt2img")
    tab.get_by_label("Prompt", exact=True).fill("a trench coat in stone gabardine, photo")
    set_number(tab, "Steps", STEPS)
    set_number(tab, "Batch size", 2)
    tab.get_by_label("Seed (-1 = random)").fill("41")
    tab.get_by_label("Prompt", exact=True).press("Control+Enter")  # Ctrl+Enter in a prompt generates
    wait_for_result(tab)
    expect(thumbnails(tab, "Results")).to_have_count(2, timeout=RUN_S)
    page.evaluate("window.scrollTo(0, 0)")
    button = tab.get_by_role("button", name="Generate", exact=True).bounding_box()
    results = block(tab, "Results").bounding_box()
    assert button and results
    assert button["y"] + button["height"] <= DESKTOP["height"], button  # the main button in view at 1280x800 ...
    assert results["y"] < DESKTOP["height"] / 2, results  # ... and the results beside it
    for image in thumbnails(tab, "Results").all():  # whole images: drawn with their own aspect, never cropped
        fit = image.evaluate("i => getComputedStyle(i).objectFit")
        assert fit in ("contain", "scale-down"), fit
    seed_used = tab.get_by_label("Seed used")
    expect(seed_used).to_have_value("41")
    thumbnails(tab, "Results").nth(1).click()  # the second image of the batch: its own seed and parameters
    expect(seed_used).to_have_value("42")
    expect(textbox(tab, "Parameters")).to_have_value(re.compile(r"Seed: 42"))
    page.keyboard.press("Escape")
    tab.get_by_role("button", name="↻ Reuse seed").click()
    expect(tab.get_by_label("Seed (-1 = random)")).to_have_value("42")
    shot(page, "designer-02-in-view")
    assert studio_errors(problems) == [], problems


def test_a_cancel_keeps_the_results_shown_before(designer) -> None:
    page, problems = designer
    tab = open_tab(page, "txt2img")
    tab.get_by_label("Prompt", exact=True).fill("a pleated skirt in navy wool, photo")
    set_number(tab, "Steps", STEPS)
    tab.get_by_role("button", name="Generate", exact=True).click()
    first = wait_for_result(tab)
    set_number(tab, "Steps", 150)
    set_number(tab, "Batch count", 8)
    tab.get_by_role("button", name="Generate", exact=True).click()
    page.wait_for_timeout(1500)
    tab.get_by_role("button", name="Cancel", exact=True).click()
    toast(page, "Stopping after the current step|Cancelled")
    expect(page.locator(".toast-body", has_text="Cancelled").first).to_be_visible(timeout=RUN_S)
    shown = thumbnails(tab, "Results").first
    expect(shown).to_have_attribute("src", re.compile(rf"/{re.escape(first)}$"))  # earlier results stay
    expect(tab.get_by_label("Seed used")).not_to_have_value("-1")
    shot(page, "designer-03-cancel-kept")
    assert studio_errors(problems) == [], problems
