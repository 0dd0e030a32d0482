"""The page at /, driven in a real headless Chromium (the system's, through Playwright) against a real server."""

from contextlib import contextmanager
from urllib.parse import urlparse

import pytest
from playwright.sync_api import sync_playwright

from tests.fixtures import NEGATIVE, POSITIVE
from tests.server import running_server

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
GOOD = "这家酒店" + POSITIVE[0] + POSITIVE[1] + "。"
BAD = "房间" + NEGATIVE[0] + NEGATIVE[1] + "。"
CJK_FONTS = ("Noto Sans CJK", "Noto Serif CJK", "Source Han", "WenQuanYi", "Droid Sans Fallback")


@pytest.fixture(scope="module")
def server(trained_project):
    with running_server(trained_project.path, "--model", "finetuned") as server:
        yield server


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@contextmanager
def open_page(browser, server):
    """A fresh page that may load nothing but the server's own files: every other request is refused and kept."""
    context = browser.new_context()
    page = context.new_page()
    page.outside = []

    def only_the_server(route):
        if urlparse(route.request.url).netloc == urlparse(server.url).netloc:
            route.continue_()
        else:
            page.outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_server)
    try:
        yield page
    finally:
        context.close()


@pytest.fixture
def page(browser, server):
    with open_page(browser, server) as page:
        yield page


def test_type_reviews_submit_and_read_each_label_and_its_warnings(page, server):
    expected = [server.post({"inputs": text})[1][0]["label"] for text in (GOOD, BAD)]
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('finetuned')")
    page.fill("#reviews", f"{GOOD}\n{BAD}\nxyz")
    page.click("#classify")
    page.wait_for_selector("#results li:nth-child(3)")
    labels = page.locator("#results .label").all_inner_texts()
    assert labels[:2] == expected
    assert page.locator("#results li:nth-child(1) .warning").count() == 0
    warnings = page.locator("#results li:nth-child(3) .warning")
    assert warnings.evaluate_all("notes => notes.map(n => n.dataset.code)") == ["all_unknown"]
    assert "none of this review's characters" in warnings.inner_text()  # the model's note, in plain words
    widths = page.locator("#results li:nth-child(1) .bar > span").evaluate_all("spans => spans.map(s => s.style.width)")
    assert len(widths) == 2 and sum(float(width.rstrip("%")) for width in widths) == pytest.approx(100, abs=0.2)
    assert page.outside == []


def test_chinese_is_drawn_with_a_cjk_font(page, server):
    """Which fonts Chromium really drew the review with (not only which the CSS asks for)."""
    page.goto(server.url + "/")
    page.fill("#reviews", GOOD)
    page.click("#classify")
    page.wait_for_selector("#results .text")
    cdp = page.context.new_cdp_session(page)
    cdp.send("DOM.enable")
    cdp.send("CSS.enable")
    root = cdp.send("DOM.getDocument")["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "#results .text"})["nodeId"]
    fonts = cdp.send("CSS.getPlatformFontsForNode", {"nodeId": node})["fonts"]
    drawn = {font["familyName"]: font["glyphCount"] for font in fonts}
    cjk_glyphs = sum(count for family, count in drawn.items() if family.startswith(CJK_FONTS))
    assert cjk_glyphs >= len(GOOD) - 1, drawn  # every Chinese character (the full stop may come from another font)


def test_an_error_is_shown_in_words(page, server):
    page.goto(server.url + "/")
    page.click("#classify")  # nothing typed
    assert "Type or paste a review" in page.locator("#error").inner_text()


def test_the_openapi_page_works_without_network(page, server):
    page.goto(server.url + "/docs")
    page.wait_for_selector(".swagger-ui .opblock-summary-path[data-path='/predict']")
    assert page.outside == []
