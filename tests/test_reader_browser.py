"""The reading application in headless Chromium (Debian's package, driven by Playwright; no browser download):
a full session read through the viewer and the form, a server killed mid-session and resumed, two readers at
once."""

import shutil

import pytest

from tests.browser import ARTIFACTS, chromium
from fusion_model.reader_study.loadtest import ReadingServer, run_readers

sync_api = pytest.importorskip("playwright.sync_api")

ARGS = ["--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
READY = ("() => { const s = document.getElementById('viewer') && document.getElementById('viewer').fmState;"
         " return s && (s.ready || s.error); }")


@pytest.fixture(scope="module")
def small_study(trained_model, tmp_path_factory):
    """Sequential design, ten readers (A, B, R03 ... R10), 4 cases: 8 readings each (each case unaided, then
    aided)."""
    from fusion_model.imaging.cache import ImageCache
    from fusion_model.reader_study.prepare import prepare_study

    out = tmp_path_factory.mktemp("browser-study") / "study"
    readers = ["A", "B", *(f"R{k:02d}" for k in range(3, 11))]
    result = prepare_study(trained_model["model"], trained_model["test_cohort"], out, readers,
                           ImageCache(trained_model["cache"]), design="sequential", cases=4, seed=2, progress=False)
    return out, result.tokens


@pytest.fixture()
def browser():
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium(), args=ARGS)
        yield instance
        instance.close()


def copy_of(small_study, tmp_path):
    study, tokens = small_study
    shutil.copytree(study, tmp_path / "study")
    return tmp_path / "study", tokens


def sign_in(page, url, code, token):
    page.goto(f"{url}/")
    page.fill("#code", code)
    page.fill("#token", token)
    page.click("#sign-in")


def read_one(page, likelihood: int, check_viewer: bool = False) -> dict:
    """Read the case on screen with the viewer and answer it; return what the page showed."""
    page.wait_for_function(READY, timeout=30000)
    state = page.evaluate("() => { const s = document.getElementById('viewer').fmState;"
                          " return {ready: s.ready, error: s.error, phase: s.phase, slice: s.slice}; }")
    assert state["ready"] and not state["error"], state
    shown = {"title": page.title(), "aided": page.locator("#model-panel").count() == 1, "state": state}
    if check_viewer:
        buttons = page.locator(".fm-btn")
        labels = buttons.all_text_contents()
        assert "outline" in labels and "soft tissue" in labels
        second_phase = [b for b in labels if b in ("venous", "arterial", "delayed")]
        if second_phase:
            page.locator(".fm-btn", has_text=second_phase[0]).click()
            assert page.evaluate("document.getElementById('viewer').fmState.phase") == second_phase[0]
        page.locator(".fm-btn", has_text="outline").click()
        assert page.evaluate("document.getElementById('viewer').fmState.outline") is False
        assert page.evaluate("document.getElementById('viewer').fmState.opacity('outline')") == 0
        page.locator(".fm-btn", has_text="3 planes").click()
        assert page.evaluate("document.getElementById('viewer').fmState.planes") is True
        page.screenshot(path=str(ARTIFACTS / "reader-study-planes.png"))
        page.locator(".fm-btn", has_text="3 planes").click()
        page.locator(".fm-btn", has_text="adrenal").click()
        assert page.evaluate("document.getElementById('viewer').fmState.window") == "adrenal"
        before = page.evaluate("document.getElementById('viewer').fmState.slice")
        page.locator("#viewer").focus()
        page.keyboard.press("ArrowUp")
        after = page.evaluate("document.getElementById('viewer').fmState.slice")
        assert after != before
    page.fill("#likelihood", str(likelihood))
    page.check(f"input[name=scale5][value='{1 + likelihood // 21}']")
    page.select_option("#lesion_type", "adenoma")
    page.check("input[name=confidence][value='3']")
    page.click("#submit")
    return shown


def test_a_full_session_is_read_in_chromium(small_study, tmp_path, browser):
    study, tokens = copy_of(small_study, tmp_path)
    errors = []
    with ReadingServer(study) as server:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        sign_in(page, server.url, "A", tokens["A"])
        seen = []
        for k in range(8):
            if k == 0:
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
            seen.append(read_one(page, 20 + 7 * k, check_viewer=k < 2))
        page.wait_for_selector("#message")
        assert "You have read all 8 cases" in page.inner_text("#message")
        page.screenshot(path=str(ARTIFACTS / "reader-study-done.png"))
    assert [s["title"] for s in seen] == [f"Case {k} of 8" for k in range(1, 9)]
    assert [s["aided"] for s in seen] == [False, True] * 4  # sequential: unaided, then aided, per case
    assert not errors, errors
    from fusion_model.reader_study.store import AnswerStore

    readings = AnswerStore(study / "answers.sqlite").readings()
    assert len(readings) == 8 and set(readings["source"]) == {"browser"} and (readings["seconds"] > 0).all()
    assert readings["likelihood"].tolist() == [20 + 7 * k for k in range(8)]


def test_a_server_killed_mid_session_loses_nothing_and_the_reader_resumes(small_study, tmp_path, browser):
    study, tokens = copy_of(small_study, tmp_path)
    server = ReadingServer(study).start()
    page = browser.new_page()
    sign_in(page, server.url, "B", tokens["B"])
    for k in range(3):
        read_one(page, 40 + k)
    page.wait_for_function(READY, timeout=30000)  # the fourth case is on screen when the server dies
    server.kill()
    restarted = ReadingServer(study, server.port).start()
    try:
        page.goto(f"{restarted.url}/read")  # the same browser: its sign-in cookie still holds
        assert page.title() == "Case 4 of 8"
        for k in range(3, 8):
            read_one(page, 40 + k)
        page.wait_for_selector("#message")
    finally:
        restarted.kill()
    from fusion_model.reader_study.store import AnswerStore

    readings = AnswerStore(study / "answers.sqlite").readings()
    assert len(readings) == 8 and not readings.duplicated(["session", "position"]).any()
    assert readings["likelihood"].tolist() == [40 + k for k in range(8)]


def test_two_readers_read_at_once(small_study, tmp_path, browser):
    study, tokens = copy_of(small_study, tmp_path)
    with ReadingServer(study) as server:
        pages = {}
        for code in ("A", "B"):
            pages[code] = browser.new_context().new_page()
            sign_in(pages[code], server.url, code, tokens[code])
        for k in range(4):  # half a session each, turn about
            for code, page in pages.items():
                read_one(page, (10 if code == "A" else 60) + k)
        for page in pages.values():
            page.wait_for_function(READY, timeout=30000)
            assert page.title() == "Case 5 of 8"
    from fusion_model.reader_study.store import AnswerStore

    readings = AnswerStore(study / "answers.sqlite").readings()
    assert readings.groupby("reader").size().to_dict() == {"A": 4, "B": 4}
    assert readings[readings["reader"] == "A"]["likelihood"].tolist() == list(range(10, 14))
    assert readings[readings["reader"] == "B"]["likelihood"].tolist() == list(range(60, 64))


def test_ten_readers_at_once_lose_and_duplicate_no_answer(small_study, tmp_path):
    study, tokens = copy_of(small_study, tmp_path)
    with ReadingServer(study) as server:
        result = run_readers(server.url, tokens, seed=1)
    assert all(len(done) == 8 and len(set(done)) == 8 for done in result["readings"].values())
    from fusion_model.reader_study.store import AnswerStore

    readings = AnswerStore(study / "answers.sqlite").readings()
    assert len(readings) == 80 and not readings.duplicated(["reader", "session", "position"]).any()
    assert readings.groupby("reader").size().eq(8).all()
