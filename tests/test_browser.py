"""One real click-through in Debian's chromium (Playwright): compose -> compare (with a prompt) ->
export download -> a blind vote -> a pairwise tie with the object zoom -> leaderboard; a slow
method's run that shows finished results and stops on Stop; and a streaming Compare whose earlier
tiles stay as they are while later methods finish.

Screenshots of each step are saved to outputs/screenshots/ (ignored by git) for a person to look at."""

import contextlib
import json
import re
import shutil
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from harmony_core import registry
from harmony_core.arena.studyset import StudySet
from harmony_core.cost import Cost, Rate
from harmony_core.registry import Method
from tests.conftest import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
SHOTS = ROOT / "outputs" / "screenshots"
METHODS = StudySet.load(EXAMPLES / "study").methods

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists() and shutil.which("chromium") is None:
    pytest.skip(f"chromium is not installed ({CHROMIUM}); .ci/run installs it with apt-get", allow_module_level=True)



def compose_the_cat(page) -> None:
    """Compose: the cat example's composite and mask uploaded and used; then the Compare tab, its input shown."""
    page.locator("#compose-composite input[type=file]").set_input_files(str(EXAMPLES / "cat_composite.jpg"))
    page.locator("#compose-mask input[type=file]").set_input_files(str(EXAMPLES / "cat_mask.png"))
    page.locator("#compose-composite img").first.wait_for()
    page.locator("#compose-mask img").first.wait_for()
    page.locator("#compose-use").click()
    sync_api.expect(page.locator("#compose-notice")).to_contain_text("Ready")
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-input img").first.wait_for()


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("votes")) as address:
        yield address


@contextlib.contextmanager
def launched(votes_dir: Path, **launch_options) -> Iterator[str]:
    """The studio launched on a free local port, closed on exit: its address."""
    from app import build_app

    demo = build_app(max_side=400, votes_dir=votes_dir)
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        **launch_options)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@contextlib.contextmanager
def chromium_page(width: int, height: int) -> Iterator:
    """A page of Debian's headless chromium at this viewport (60 s timeouts), closed on exit."""
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True,
                                    args=["--no-sandbox", "--disable-background-networking", "--disable-dev-shm-usage"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def test_click_through_in_chromium(url, tmp_path):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(1400, 1000) as page:
        try:
            page.goto(url)
            page.get_by_text("Harmony Studio").first.wait_for()

            # Compose, then Compare: it shows the composite it will run on; a prompt; every runnable method streams in.
            compose_the_cat(page)
            if page.locator("#compare-prompt textarea").is_visible():  # shown only while freepih can run
                page.locator("#compare-prompt textarea").fill("a cat's face")
            page.locator("#compare-run").click()
            sync_api.expect(page.locator("#compare-status")).to_contain_text("poisson", timeout=120_000)
            sync_api.expect(page.locator("#compare-gallery").get_by_text("poisson ·").first).to_be_visible()
            sync_api.expect(page.locator("#compare-gallery").get_by_text("ptl ·").first).to_be_visible(timeout=120_000)
            # The first visit's example shows four results already: wait for this run's last one.
            sync_api.expect(page.locator("#compare-gallery .thumbnail-item")).to_have_count(6, timeout=120_000)
            sync_api.expect(page.locator("#compare-status")).to_contain_text("ptl-paper", timeout=120_000)

            # Export: a figure and a ZIP to download.
            page.get_by_text("Export: a paper-style figure").click()
            page.locator("#export-run").click()
            link = page.locator("#export-files a[download$='.zip']").first
            link.wait_for(timeout=120_000)
            with page.expect_download() as download:
                link.click()
            saved = tmp_path / download.value.suggested_filename
            download.value.save_as(saved)
            with zipfile.ZipFile(saved) as archive:
                assert "results.json" in archive.namelist() and "outputs/poisson.png" in archive.namelist()
                summary = archive.read("results.json").decode()
                assert "a cat's face" in summary or "freepih" not in summary
            page.screenshot(path=str(SHOTS / "compare-export.png"), full_page=True)

            # Blind study: letters only, then the names after the vote.
            page.get_by_role("tab", name="Blind study").click()
            page.locator("#study-next").click()
            sync_api.expect(page.locator("#vote-B")).to_be_enabled()
            page.locator("#slot-B img").first.wait_for()
            before_vote = page.evaluate("""() => [...document.querySelectorAll('[id^="slot-"]')].map(slot => ({
                text: slot.innerText,
                images: [...slot.querySelectorAll('img')].map(img => [img.src, img.alt, img.title]),
                links: [...slot.querySelectorAll('a')].map(a => [a.href, a.download]),
            }))""")
            assert sum(len(slot["images"]) for slot in before_vote) >= 2
            shown = json.dumps(before_vote).lower()
            assert not any(method in shown for method in METHODS), before_vote
            page.locator("#vote-B").click()
            sync_api.expect(page.locator("#study-message")).to_contain_text("Recorded")
            sync_api.expect(page.locator("#vote-A")).to_be_disabled()
            sync_api.expect(page.locator("#slot-B")).to_contain_text("your pick")
            picked = next(m for m in METHODS if f"· {m}" in page.locator("#slot-B").inner_text())
            page.screenshot(path=str(SHOTS / "study.png"), full_page=True)

            # Pairwise with the object zoom: the two images become the same crop, then a tie.
            page.get_by_text("Pairwise (A/B)").click()
            page.locator("#study-next").click()
            sync_api.expect(page.locator("#vote-both-good")).to_be_enabled()
            whole = [page.locator(f"#slot-{letter} img").first.get_attribute("src") for letter in "AB"]
            page.locator("#study-zoom input").check()
            for letter, src in zip("AB", whole):
                sync_api.expect(page.locator(f"#slot-{letter} img").first).not_to_have_attribute("src", src)
            page.wait_for_function("""() => ['A', 'B'].every(l => {
                const img = document.querySelector(`#slot-${l} img`); return img && img.complete && img.naturalWidth > 0; })""")
            sizes = page.evaluate("""() => ['A', 'B'].map(l => {
                const img = document.querySelector(`#slot-${l} img`); return [img.naturalWidth, img.naturalHeight]; })""")
            assert sizes[0] == sizes[1] and sizes[0][0] == sizes[0][1]  # the same square crop in both
            page.screenshot(path=str(SHOTS / "study-zoom.png"), full_page=True)
            page.locator("#vote-both-good").click()
            sync_api.expect(page.locator("#study-message")).to_contain_text("both good")
            sync_api.expect(page.locator("#vote-both-bad")).to_be_disabled()
            sync_api.expect(page.locator("#slot-A")).to_contain_text(" · ")  # names revealed
            zoomed = page.locator("#slot-A img").first.get_attribute("src")
            page.locator("#study-difference input").check()
            sync_api.expect(page.locator("#slot-A img").first).not_to_have_attribute("src", zoomed)
            page.locator("#slot-B img").first.wait_for()
            page.wait_for_function("() => [...document.querySelectorAll('[id^=slot-] img')].every(i => i.complete)")
            page.screenshot(path=str(SHOTS / "study-tie-difference.png"), full_page=True)

            # Leaderboard: the vote is counted.
            page.get_by_role("tab", name="Leaderboard").click()
            sync_api.expect(page.locator("#board-headline")).to_contain_text("preferred", timeout=60_000)
            sync_api.expect(page.locator("#board-table")).to_contain_text(picked)  # a round shows 4 of the 5 methods
            sync_api.expect(page.locator("#board-headline")).to_contain_text("both good")
            sync_api.expect(page.locator("#board-pairs")).to_contain_text(" vs ")
        finally:
            page.screenshot(path=str(SHOTS / "studio.png"), full_page=True)
    assert (SHOTS / "studio.png").stat().st_size > 10_000


class SlowMethod:
    """Registered for the test below: 30 s of small steps unless stopped (records how it ended)."""

    ended: list[str] = []


@pytest.fixture
def slow_url(tmp_path_factory):  # per test: test-slow is unregistered before the other apps start
    import time

    from harmony_core.errors import Cancelled

    class Slow(registry.Method):
        name, family, title, summary = "test-slow", "network", "x", "x"
        cost = Cost(gpu=False, on_cpu=Rate(1.0))  # within Compare's time budget: ticked by default

        def harmonize(self, request, progress):
            try:
                for step in range(1500):
                    progress(step / 1500, f"test-slow: step {step + 1}/1500")
                    time.sleep(0.02)
            except Cancelled:
                SlowMethod.ended.append("stopped")
                raise
            SlowMethod.ended.append("finished")
            return request.composite.copy()

    registry.register(Slow)
    try:
        with launched(tmp_path_factory.mktemp("votes")) as address:
            yield address
    finally:
        registry.unregister(Slow.name)


def test_finished_results_stay_visible_and_stop_stops_the_run(slow_url):
    """Issue 30, 1 and 5: the progress overlay hid finished results, and there was no Stop."""
    with chromium_page(1400, 1000) as page:
        page.goto(slow_url)
        compose_the_cat(page)
        page.locator("#compare-run").click()
        status = page.locator("#compare-status")
        sync_api.expect(status).to_contain_text("running: test-slow: step", timeout=120_000)
        sync_api.expect(status).to_contain_text(re.compile(r"method (\d+) of \1 · about"), timeout=30_000)  # the time left
        thumb = page.locator("#compare-gallery img").first
        thumb.wait_for()
        thumb.scroll_into_view_if_needed()  # the first visit's example sits above it
        box = thumb.bounding_box()
        on_top = page.evaluate("([x, y]) => document.elementFromPoint(x, y).tagName",
                               [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2])
        assert on_top == "IMG"  # no overlay over the finished results while test-slow runs
        page.screenshot(path=str(SHOTS / "compare-running.png"), full_page=True)
        page.locator("#compare-stop").click()
        deadline = page.evaluate("Date.now()") + 10_000
        while not SlowMethod.ended and page.evaluate("Date.now()") < deadline:
            page.wait_for_timeout(100)
        assert SlowMethod.ended == ["stopped"]
        sync_api.expect(page.locator("#compare-gallery img").first).to_be_visible()


class LastGate(Method):
    """Registered last, so it runs last; it finishes only when the test opens it."""

    name, family, title, summary = "zz-test-gate", "classical", "x", "x"
    cost = Cost(gpu=False, on_cpu=Rate(0.1))  # within Compare's time budget: ticked by default
    opened = threading.Event()

    def harmonize(self, request, progress):
        assert self.opened.wait(120)
        return 255 - request.composite


@pytest.fixture
def gated_url(tmp_path):
    registry.register(LastGate)
    LastGate.opened.clear()
    try:
        with launched(tmp_path / "votes") as address:
            yield address
            LastGate.opened.set()  # before the app closes: a run still waiting would hold it
    finally:
        registry.unregister(LastGate.name)


def test_streaming_compare_shows_results_as_they_finish_and_never_reloads_a_tile(gated_url):
    SHOTS.mkdir(parents=True, exist_ok=True)
    with chromium_page(1400, 1000) as page:
        fetched: list[str] = []
        page.on("request", lambda request: fetched.append(request.url))
        try:
            page.goto(gated_url)
            compose_the_cat(page)
            page.locator("#compare-run").click()

            # Every other method's tile is shown while the last method is still running.
            gallery = page.locator("#compare-gallery")
            # The first visit's example shows reinhard..ptl already: wait for this run's own tiles.
            sync_api.expect(gallery.get_by_text("composite ·").first).to_be_visible(timeout=120_000)
            sync_api.expect(gallery.get_by_text("ptl-paper ·").first).to_be_visible(timeout=120_000)
            sync_api.expect(gallery.get_by_text(f"{LastGate.name} ·")).to_have_count(0)  # still running (its status row says so)
            first = gallery.locator("img").first
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
            src = first.evaluate("img => img.src")
            first.evaluate("img => { img.dataset.seen = 'before the last method'; }")
            tiles = gallery.locator("img").count()

            LastGate.opened.set()
            sync_api.expect(gallery.get_by_text(f"{LastGate.name} ·").first).to_be_visible(timeout=60_000)
            sync_api.expect(page.locator("#compare-status")).to_contain_text(LastGate.name)
            assert gallery.locator("img").count() > tiles
            # The first tile is the same element showing the same file, fetched once.
            assert first.evaluate("img => img.src") == src and first.get_attribute("data-seen") == "before the last method"
            assert sum(url == src for url in fetched) == 1, [u for u in fetched if "file=" in u]
        finally:
            page.screenshot(path=str(SHOTS / "compare-streaming.png"), full_page=True)


ARTIFACTS = ROOT / "tmp" / "artifact" / "visitor"
NO_RED_BADGES = """() => [...document.querySelectorAll('[data-testid="status-tracker"] .error')]
    .filter(e => e.offsetParent !== null && e.textContent.trim()).length"""
CLIPPED_TILES = """selector => {
    const clipped = [];
    for (const gallery of document.querySelectorAll(selector)) {
        if (gallery.offsetParent === null) continue;
        const wrap = gallery.querySelector('.grid-wrap');
        const box = wrap.getBoundingClientRect();
        if (wrap.scrollHeight > wrap.clientHeight + 2 || wrap.scrollWidth > wrap.clientWidth + 2)
            clipped.push(`${selector} scrolls: ${wrap.scrollWidth}x${wrap.scrollHeight} in `
                         + `${wrap.clientWidth}x${wrap.clientHeight}`);
        for (const tile of gallery.querySelectorAll('.thumbnail-item')) {
            const t = tile.getBoundingClientRect();
            if (t.top < box.top - 1 || t.bottom > box.bottom + 1 || t.left < box.left - 1 || t.right > box.right + 1
                || t.right > document.documentElement.clientWidth + 1)
                clipped.push(`${tile.getAttribute('aria-label')} at ${JSON.stringify(t)} outside ${JSON.stringify(box)}`);
            const caption = tile.querySelector('.caption-label');
            if (caption && (caption.scrollWidth > caption.clientWidth + 1 || caption.scrollHeight > caption.clientHeight + 1
                            || caption.getBoundingClientRect().bottom > t.bottom + 1))
                clipped.push(`caption "${caption.textContent}" cut (${caption.scrollWidth} > ${caption.clientWidth})`);
        }
    }
    return clipped;
}"""


def open_tab(page, name: str) -> None:
    """A tab by its name; on a phone the tabs that do not fit are in the "more" menu."""
    tab = page.get_by_role("tab", name=name)
    if not tab.is_visible():
        page.locator(".overflow-menu button").first.click()
        tab = page.locator(".overflow-dropdown").get_by_text(name, exact=True)
    tab.click()


@pytest.fixture(scope="module")
def styled_url(tmp_path_factory):
    """The app as `python app.py` serves it: with its CSS and theme."""
    import gradio as gr

    from app import CSS

    with launched(tmp_path_factory.mktemp("visitor-votes"), css=CSS, theme=gr.themes.Soft()) as address:
        yield address


@pytest.mark.parametrize("width", [1280, 390])
def test_what_a_visitor_sees(styled_url, width):
    """A first visit at a laptop's and a phone's width: a finished example at once, galleries that
    fit, one plain message for a button pressed too early, an Explain click that changes the view."""
    shots = ARTIFACTS / str(width)
    shots.mkdir(parents=True, exist_ok=True)
    with chromium_page(width, 900) as page:
        try:
            page.goto(styled_url)
            # The first visit: the example is composed and finished, before any upload.
            page.locator("#example-slider img").first.wait_for()
            sync_api.expect(page.locator("#compose-notice")).to_contain_text("example")
            page.locator("#compose-working img").first.wait_for()
            sync_api.expect(page.get_by_role("button", name="Invert mask")).to_be_hidden()
            page.screenshot(path=str(shots / "1-first-visit.png"), full_page=True)

            # A button pressed with its input missing: one plain message, no red badges.
            page.locator("#compose-use").click()
            toast = page.locator(".toast-body")
            sync_api.expect(toast.first).to_contain_text("Upload a composite image first")
            page.wait_for_timeout(500)
            assert toast.count() == 1 and "**" not in toast.first.inner_text()
            assert page.evaluate(NO_RED_BADGES) == 0
            sync_api.expect(page.locator("#compose-working img").first).to_be_visible()  # the example stays
            page.screenshot(path=str(shots / "2-missing-input.png"), full_page=True)

            # Compare: the example's results, every tile whole; the slider names its right side.
            open_tab(page, "Compare")
            gallery = page.locator("#compare-gallery")
            sync_api.expect(gallery.locator(".thumbnail-item")).to_have_count(4)
            sync_api.expect(page.locator("#compare-slider")).to_contain_text("ptl on the right")
            sync_api.expect(page.locator("#compare-prompt")).to_be_hidden()  # freepih cannot run here
            page.wait_for_function("() => [...document.querySelectorAll('#compare-gallery img')].every(i => i.complete)")
            assert page.evaluate(CLIPPED_TILES, "#compare-gallery") == []
            gallery.locator(".thumbnail-item").nth(2).click()
            sync_api.expect(page.locator("#compare-slider")).to_contain_text("poisson on the right")
            page.keyboard.press("Escape")  # back from the gallery's preview to its grid
            # The default run: six results, the last two on a second row, whole too.
            page.locator("#compare-run").click()
            sync_api.expect(gallery.locator(".thumbnail-item")).to_have_count(6, timeout=120_000)
            sync_api.expect(page.locator("#compare-status")).to_contain_text("ptl-paper", timeout=120_000)
            page.wait_for_function("() => [...document.querySelectorAll('#compare-gallery img')].every(i => i.complete)")
            assert page.evaluate(CLIPPED_TILES, "#compare-gallery") == []
            page.screenshot(path=str(shots / "3-compare.png"), full_page=True)

            # Explain: the first run uses the default point (shown in the boxes); a click on the object
            # changes the main view to a point map.
            open_tab(page, "Explain")
            page.locator("#explain-run").click()
            page.wait_for_function(f"() => document.querySelector('#explain-gallery .thumbnail-item') || ({NO_RED_BADGES})()",
                                   timeout=120_000)
            assert page.evaluate(NO_RED_BADGES) == 0, page.locator(".toast-body").all_inner_texts()
            sync_api.expect(page.locator("#explain-x input")).not_to_have_value("", timeout=60_000)
            x, y = (int(page.locator(f"#explain-{axis} input").input_value()) for axis in "xy")
            assert (x, y) != (0, 0)
            page.evaluate("() => document.querySelectorAll('#explain-gallery img').forEach(i => { i.loading = 'eager'; })")
            page.wait_for_function("() => [...document.querySelectorAll('#explain-gallery img')].every(i => i.complete)")
            assert page.evaluate(CLIPPED_TILES, "#explain-gallery") == []
            page.screenshot(path=str(shots / "4-explain.png"), full_page=True)
            main = page.locator("#explain-view img").first
            before = main.get_attribute("src")
            box = main.bounding_box()
            main.click(position={"x": box["width"] * 0.45, "y": box["height"] * 0.4})
            sync_api.expect(main).not_to_have_attribute("src", before, timeout=120_000)
            sync_api.expect(page.locator("#explain-choice input")).to_have_value(re.compile("point"))
            clicked = (int(page.locator("#explain-x input").input_value()), int(page.locator("#explain-y input").input_value()))
            assert clicked != (x, y)
            page.screenshot(path=str(shots / "5-explain-point.png"), full_page=True)

            # Blind study: the caption is readable, the buttons within reach on a phone.
            open_tab(page, "Blind study")
            page.locator("#study-next").click()
            sync_api.expect(page.locator("#vote-B")).to_be_enabled()
            page.locator("#vote-B").click()
            sync_api.expect(page.locator("#slot-B")).to_contain_text("your pick")
            page.wait_for_function("() => [...document.querySelectorAll('[id^=slot-] img')].every(i => i.complete)")
            label = page.locator("#slot-B [data-testid=block-label]").first
            assert label.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
            page.screenshot(path=str(shots / "6-study.png"), full_page=False)
            page.locator("#slot-A").scroll_into_view_if_needed()
            votes = page.locator("#study-votes").bounding_box()
            assert votes["y"] + votes["height"] <= 900 + 1  # in view beside the images, on a phone too
            if width < 640:  # the row is pinned to the screen's bottom, whatever the scroll
                page.mouse.wheel(0, -400)
                page.wait_for_timeout(300)
                assert abs(page.locator("#study-votes").bounding_box()["y"] - votes["y"]) < 2
            page.screenshot(path=str(shots / "6-study-full.png"), full_page=True)
        finally:
            page.screenshot(path=str(shots / "last.png"), full_page=True)
