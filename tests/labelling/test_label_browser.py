"""The labelling page in a real headless browser (Debian's chromium driven by Playwright):
label three pairs by clicking and by keys, undo one, then read the labels back from SQLite."""

from __future__ import annotations

import shutil
import sqlite3

import pytest
from label_helpers import make_query_set, running_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install "
                                                "chromium; `make install` does it as root)"),
]


@pytest.fixture
def page():
    with sync_api.sync_playwright() as playwright:
        # The system chromium, so no browser is downloaded; Playwright adds --no-sandbox itself.
        # A small /dev/shm (containers) crashes chromium's renderer unless it uses /tmp.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--disable-dev-shm-usage"])
        context = browser.new_context()
        opened = context.new_page()
        opened.set_default_timeout(15_000)
        yield opened
        context.close()
        browser.close()


def _wait_for(page, query_id: str, state: str = "ready") -> None:
    page.wait_for_function(
        "([id, state]) => document.body.dataset.state === state"
        " && document.body.dataset.queryId === id", arg=[query_id, state])


def _live_labels(db) -> list[tuple[str, str, str]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT query_id, choice, labeller FROM labels "
                                  "WHERE undone_at IS NULL ORDER BY id").fetchall()


def test_label_three_pairs_by_click_and_key_with_undo(page, tmp_path):
    queries, db = tmp_path / "queries", tmp_path / "labels.sqlite"
    make_query_set(queries, n_queries=3)
    with running_server(queries, db) as server:
        page.goto(server.url)
        page.wait_for_function("document.body.dataset.state === 'no-name'")
        page.click("#choose-left")  # no name yet: nothing is posted
        assert "Enter your name" in page.inner_text("#status")
        page.fill("#labeller", "ana")
        page.press("#labeller", "Enter")
        _wait_for(page, "q0")
        assert page.inner_text("#instruction") == "pick up the red block (0)"
        assert page.inner_text("#progress") == "0 / 3 labelled"
        # the clips really play: chromium decoded the served mp4 (64x64 frames)
        page.wait_for_function("document.getElementById('left-video').videoWidth === 64"
                               " && document.getElementById('right-video').readyState >= 2")

        page.click("#choose-left")
        _wait_for(page, "q1")
        page.keyboard.press("ArrowRight")
        _wait_for(page, "q2")
        page.keyboard.press("u")  # take back "right" on q1
        _wait_for(page, "q1")
        assert "Undid \"right\"" in page.inner_text("#status")
        page.keyboard.press("=")
        _wait_for(page, "q2")
        assert page.inner_text("#progress") == "2 / 3 labelled"
        page.click("#choose-right")
        _wait_for(page, "", state="finished")
        assert page.is_visible("#finished")
        assert page.inner_text("#progress") == "3 / 3 labelled"

        page.reload()  # the name is remembered and the finished state resumes
        _wait_for(page, "", state="finished")
        assert page.input_value("#labeller") == "ana"

    assert _live_labels(db) == [("q0", "left", "ana"), ("q1", "equal", "ana"),
                                ("q2", "right", "ana")]
    with sqlite3.connect(db) as connection:
        undone = connection.execute("SELECT query_id, choice FROM labels "
                                    "WHERE undone_at IS NOT NULL").fetchall()
    assert undone == [("q1", "right")]
