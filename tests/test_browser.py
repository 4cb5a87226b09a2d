"""The search page in a real Chromium (Debian's, driven by Playwright) against a real server:
what a person does with it, and that nothing breaks while they do."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from indexer.sync import Indexer
from search.collection import Collection
from search.model import Encoder
from tests import multilingual
from tests.conftest import (
    SAMPLES,
    TINY_THRESHOLD,
    copy_samples,
    run_cli,
    serving,
    write_shop,
)
from web.messages import MESSAGES

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if not CHROMIUM.exists():
    if os.environ.get("CLIPSEARCH_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip(f"no {CHROMIUM}; apt-get install -y chromium", allow_module_level=True)

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    with watched(browser, server, request) as page:
        yield page


@contextlib.contextmanager
def watched(browser: Browser, base: str, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh page that fails the test on any script error or failed request (an HTTP error
    too, unless the test is marked `http_errors`), but for those the page cancels itself."""
    context = browser.new_context(base_url=base)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: message.type == "error" and problems.append(f"console: {message.text}"),
    )
    page.on(
        "requestfailed",
        # ERR_ABORTED is the page's own doing: a new search cancels the one in flight.
        lambda request: (
            request.failure == "net::ERR_ABORTED"
            or problems.append(f"failed: {request.url} ({request.failure})")
        ),
    )
    yield page
    context.close()
    if request.node.get_closest_marker("http_errors"):
        problems = [p for p in problems if "server responded with a status of 4" not in p]
    assert not problems


LOADED = "[...document.querySelectorAll('#results img')].filter(i => i.naturalWidth > 0).length"
ONLY_PNG = "[...document.querySelectorAll('#results img')].every(i => i.alt.endsWith('.png'))"
ANSWERED = "!document.body.hasAttribute('aria-busy')"  # no search of the page's is in flight


def wait_until(page: Page, expression: str, timeout: float = 20) -> None:
    """Poll an expression. Playwright's wait_for_function evaluates strings with eval(), which
    the app's Content-Security-Policy forbids, as it should."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(50)


def test_typing_a_query_shows_loaded_thumbnails(page: Page) -> None:
    page.goto("/")
    page.locator("#q").press_sequentially("a red apple", delay=40)
    wait_until(page, f"{LOADED} >= 5")
    assert re.search(r"[?&]q=a\+red\+apple", page.url)
    expect(page.locator("#status")).to_contain_text("Results: 12 in")
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)


def test_a_query_the_model_cannot_read_says_so_until_the_next(page: Page) -> None:
    page.goto("/")
    page.locator("#q").fill("红色的苹果")
    expect(page.locator("#notice")).to_have_text(MESSAGES["en"]["notice_english_only"])
    wait_until(page, f"{LOADED} >= 5")  # answered all the same
    page.locator("#q").fill("a red apple")
    expect(page).to_have_url(re.compile(r"q=a\+red\+apple"))
    expect(page.locator("#notice")).to_be_hidden()


def test_lightbox_and_more_like_this(page: Page) -> None:
    page.goto("/?q=boat")
    first = page.locator("#results li a[data-index]").first
    first.wait_for()
    first.click()
    dialog = page.locator("#lightbox")
    expect(dialog).to_be_visible()
    wait_until(page, "document.getElementById('lightbox-image').naturalWidth > 0")
    expect(page.locator("#lightbox-meta")).to_contain_text("path")
    title = page.locator("#lightbox-title").inner_text()
    page.keyboard.press("ArrowRight")
    expect(page.locator("#lightbox-title")).not_to_have_text(title)
    page.locator("#lightbox-like").click()
    expect(dialog).to_be_hidden()
    expect(page).to_have_url(re.compile(r"image_id=\d+"))
    like_id = re.search(r"image_id=(\d+)", page.url).group(1)
    expect(page.locator("#status")).to_contain_text(f"More like image {like_id}")
    hrefs = page.locator("#results li a[data-index]").evaluate_all("a => a.map(x => x.href)")
    assert len(hrefs) == 11 and not any(h.endswith(f"/images/{like_id}") for h in hrefs)
    page.keyboard.press("Escape")
    page.go_back()
    expect(page).to_have_url(re.compile(r"q=boat"))


@pytest.fixture(scope="module")
def shop(indexed: Collection) -> Iterator[str]:
    """The collection served under /shop, as behind a reverse proxy."""
    with serving(indexed.root, "--url-prefix", "/shop") as (base, _process):
        yield f"{base}/shop"


def test_under_a_url_prefix_the_page_works_as_at_the_root(
    browser: Browser, shop: str, request: pytest.FixtureRequest
) -> None:
    with watched(browser, shop, request) as page:
        asked: list[str] = []  # a proxy passes on what is under /shop only
        page.on("request", lambda sent: asked.append(sent.url))
        page.goto(f"{shop}/")
        page.locator("#q").press_sequentially("a red apple", delay=40)
        wait_until(page, f"{LOADED} >= 5")
        page.locator("#filters summary").click()
        page.locator("select[name=ext]").select_option("png")  # the choices of /api/facets
        wait_until(page, ONLY_PNG)
        page.locator("#results li a[data-index]").first.click()
        expect(page.locator("#lightbox-meta")).to_contain_text("bytes")  # from /api/images/ID
        page.locator("#lightbox-like").click()
        expect(page).to_have_url(re.compile(rf"^{re.escape(shop)}/\?.*image_id=\d+"))
        wait_until(page, f"{LOADED} >= 2")
    assert asked and [url for url in asked if not url.startswith(f"{shop}/")] == []


def test_a_lightbox_closed_before_its_details_came_stays_closed(page: Page) -> None:
    """The lightbox showed only once /api/images/ID had answered, so an answer that came after
    the reader had closed it (or gone on to the next) opened it again."""
    page.goto("/?q=boat")
    wait_until(page, ANSWERED)
    held: list[Route] = []
    page.route("**/api/images/*", lambda route: held.append(route))
    page.locator("#results li a[data-index]").first.click()
    dialog = page.locator("#lightbox")
    expect(dialog).to_be_visible()  # at once, with the details still to come
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    while not held:  # Playwright hands the held request over between page calls
        page.wait_for_timeout(20)
    with page.expect_response("**/api/images/*"):
        held.pop().continue_()
    page.wait_for_timeout(300)
    assert not dialog.is_visible()


def test_search_by_uploaded_image(page: Page) -> None:
    page.goto("/")
    page.locator("#upload").set_input_files(SAMPLES / "red-house.jpg")
    expect(page.locator("#status")).to_contain_text("Images like red-house.jpg")
    wait_until(page, f"{LOADED} >= 5")
    alts = page.locator("#results img").evaluate_all("images => images.map(i => i.alt)")
    assert "red-house.jpg" not in alts  # the image searched by is left out


def test_filters_narrow_the_results(page: Page) -> None:
    page.goto("/?q=sky")
    page.locator("#results img").first.wait_for()
    page.locator("#filters summary").click()
    page.locator("select[name=ext]").select_option("png")
    expect(page).to_have_url(re.compile(r"ext=png"))
    wait_until(page, ONLY_PNG)
    assert page.locator("#results img").count() == 4


def test_a_link_with_filters_opens_filtered(page: Page) -> None:
    """The extension, tag and attribute fields are built from /api/facets, after the page's
    first search: that search used to go without their filters and drop them from the URL."""
    page.goto("/?q=sky&ext=png")
    wait_until(page, ANSWERED)  # the script's own search
    wait_until(page, f"{LOADED} >= 4")
    assert page.locator("#results img").count() == 4 and page.evaluate(ONLY_PNG)
    expect(page).to_have_url(re.compile(r"ext=png"))
    expect(page.locator("select[name=ext]")).to_have_value("png")
    expect(page.locator("#filters")).to_have_attribute("open", "")


def test_a_tag_on_a_result_narrows_the_results_to_it(page: Page, server: str) -> None:
    page.goto("/?q=sky")
    # The script searches again on load (40 results, not the 20 rendered): a chip is clicked
    # once that answer is in, not while the list under it is being replaced.
    wait_until(page, ANSWERED)
    chip = page.locator("#results .tag").first
    chip.wait_for()
    name = chip.inner_text()
    facets = requests.get(f"{server}/api/facets", timeout=30).json()["tags"]
    count = next(tag["count"] for tag in facets if tag["name"] == name)
    chip.click()
    expect(page).to_have_url(re.compile(r"[?&]tag="))
    expect(page.locator("select[name=tag]")).to_have_value(name)
    every = "[...document.querySelectorAll('#results li')]"
    has_tag = f"[...li.querySelectorAll('.tag')].some(t => t.textContent === {name!r})"
    wait_until(page, f"{every}.length === {count} && {every}.every(li => {has_tag})")


def test_query_text_is_never_markup(page: Page) -> None:
    page.goto("/?q=%3Cimg%20src%3Dx%20onerror%3Dwindow.pwned%3D1%3E")
    page.locator("#results img").first.wait_for()
    assert page.evaluate("window.pwned") is None
    assert page.locator("#q").input_value() == "<img src=x onerror=window.pwned=1>"


@pytest.mark.http_errors
def test_error_and_keyboard(page: Page) -> None:
    page.goto("/?image_id=999999")
    expect(page.locator("#status [role=alert]")).to_have_text("There is no image with id 999999.")
    page.locator("body").click()
    page.keyboard.press("/")
    assert page.evaluate("document.activeElement.id") == "q"


def test_the_page_in_chinese_and_a_switch_that_is_remembered(browser: Browser, server: str) -> None:
    """Accept-Language zh-CN gives the Chinese page; the switch to English outlives reloads."""
    context = browser.new_context(base_url=server, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/")
    expect(page.locator("html")).to_have_attribute("lang", "zh")
    expect(page.locator("#q")).to_have_attribute("placeholder", MESSAGES["zh"]["placeholder"])
    expect(page.locator("#status")).to_have_text(MESSAGES["zh"]["idle"])
    page.locator("#q").press_sequentially("海边的日落 + 红苹果", delay=40)
    wait_until(page, f"{LOADED} >= 5")
    results = MESSAGES["zh"]["results"].split("{ms}")[0].format(count=12)
    expect(page.locator("#status")).to_contain_text(results)
    assert "q=%E6%B5%B7" in page.url  # the Chinese query, kept in the link

    with page.expect_navigation():
        page.locator("#language").select_option("en")
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#status")).to_contain_text("Results: 12 in")
    page.reload()
    expect(page.locator("#q")).to_have_attribute("placeholder", MESSAGES["en"]["placeholder"])
    expect(page.locator("#q")).to_have_value("海边的日落 + 红苹果")
    context.close()
    assert not errors


@pytest.fixture(scope="module")
def chinese_shop(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[str]:
    """A shop whose catalog names its columns in Chinese, with prices left blank or 询价."""
    root = tmp_path_factory.mktemp("shop")
    products = [("red-apple", "水果", "1.5"), ("yellow-flower", "花园", "4")]
    products += [("pine-forest", "花园", "120"), ("sailing-boat", "花园", "询价")]
    products += [("red-house", "花园", "")]
    rows = [
        {"image": f"img/{name}.jpg", "货号": name, "类别": kind, "价格": price}
        for name, kind, price in products
    ]
    collection = Collection.create_or_open(root / "data", encoder.spec)
    Indexer(collection, encoder, workers=0, progress=False).run_catalog(write_shop(root, rows))
    with serving(root / "data") as (base, _process):
        yield base


def test_a_chinese_shop_filters_by_its_own_columns(
    browser: Browser, chinese_shop: str, request: pytest.FixtureRequest
) -> None:
    with watched(browser, chinese_shop, request) as page:
        page.set_extra_http_headers({"Accept-Language": "zh-CN"})
        page.goto("/?q=garden")
        page.locator("#filters summary").click()
        kind = page.locator("select[name=attr_类别]")  # built from /api/facets
        expect(kind.locator("option").first).to_have_text(MESSAGES["zh"]["any"])
        kind.select_option("花园")
        expect(page.locator("#results li")).to_have_count(4)
        price = page.locator("input[name=attr_价格_max]")
        expect(price).to_have_attribute("placeholder", "120")  # 询价 and a blank are no prices
        price.fill("100")
        price.press("Enter")
        expect(page.locator("#results li")).to_have_count(1)  # not the blank price, not 询价
        expect(page).to_have_url(re.compile("attr_%E4%BB%B7%E6%A0%BC_max=100"))
        page.reload()  # the link: the first search has both filters before the facets come
        wait_until(page, ANSWERED)
        expect(page.locator("#results li")).to_have_count(1)
        expect(page.locator("input[name=attr_价格_max]")).to_have_value("100")


@pytest.fixture(scope="module")
def multilingual_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample photos indexed with a tiny multilingual model (tests/multilingual.py)."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("zh")
    tiny = multilingual.build(root)
    photos = copy_samples(root / "photos")
    run_cli("index", str(photos), *tiny.args, "--data-dir", str(root / "data"), "-q")
    with serving(root / "data") as (base, _process):
        yield base


def test_a_chinese_query_with_a_multilingual_model(browser: Browser, multilingual_server: str):
    context = browser.new_context(base_url=multilingual_server, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto("/")
    page.locator("#q").press_sequentially("猫 + 2:草地 - 狗", delay=40)
    wait_until(page, f"{LOADED} >= 5")
    results = MESSAGES["zh"]["results"].split("{ms}")[0].format(count=12)
    expect(page.locator("#status")).to_contain_text(results)
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    page.locator("#q").fill("猫 - 猫")  # the server's error, said in the page's language
    expect(page.locator("#status [role=alert]")).to_have_text(MESSAGES["zh"]["error_terms_cancel"])
    context.close()
    assert not errors


def test_the_duplicates_page_shows_each_group_best_copy_first(
    browser: Browser, copies: Path
) -> None:
    """From the search page's link to the groups, in Chinese, every thumbnail loaded."""
    with serving(copies) as (base, _process):
        context = browser.new_context(base_url=base, locale="zh-CN")
        page = context.new_page()
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on(
            "requestfailed",
            # ERR_ABORTED is the page's own doing: a new search cancels the one in flight.
            lambda request: (
                request.failure == "net::ERR_ABORTED"
                or problems.append(f"failed: {request.url} ({request.failure})")
            ),
        )
        page.goto("/")
        with page.expect_navigation():
            page.get_by_role("link", name=MESSAGES["zh"]["duplicates"]).click()
        loaded = "[...document.querySelectorAll('.group img')].every(i => i.complete)"
        wait_until(page, loaded)  # the default threshold's groups, before leaving them
        page.locator("#threshold").fill(TINY_THRESHOLD)
        with page.expect_navigation():
            page.locator("#duplicates button").click()
        wait_until(page, f"{loaded} && document.querySelectorAll('.group img').length == 4")
        assert page.evaluate(
            "[...document.querySelectorAll('.group img')].every(i => i.naturalWidth > 0)"
        )
        expect(page.locator(".group li").first).to_contain_text(MESSAGES["zh"]["best_copy"])
        expect(page.locator(".group li").first).to_contain_text("red-apple.jpg")
        expect(page.locator("#status")).to_contain_text("共 1 组")
        page.screenshot(path=str(copies.parent / "duplicates.png"), full_page=True)
        context.close()
    assert not problems
