"""The playground with API keys on, in headless Chromium: the key field, refusals beside it."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
import pytest
from playwright.sync_api import Page

from convengine import conv2d

from ..servers import Service, start_service
from .conftest import ARTIFACTS
from .test_page import _array

KEY = "playground-key-0123"


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("playground-keys")
    (folder / "keys").write_text(hashlib.sha256(KEY.encode()).hexdigest() + "\n")
    service = start_service(folder, log_level="warning", api_keys_file=str(folder / "keys"))
    service.wait_ready()
    yield service
    log = service.stop()
    assert KEY not in log


@pytest.fixture
def keyed_page(browser, keyed_service, request) -> Iterator[tuple[Page, list[str]]]:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(m.text) if m.type in ("error", "warning") else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.goto(keyed_service.url + "/")  # the page and its assets need no key
    yield page, problems
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    page.close()


def _refusal(page: Page) -> str:
    page.wait_for_function("document.getElementById('error-authorization').textContent.length")
    return page.inner_text("#error-authorization")


def test_without_a_key_the_refusal_shows_beside_the_key_field(keyed_page):
    page, problems = keyed_page
    assert "this service needs an API key" in _refusal(page)
    assert "invalid" in (page.get_attribute("#authorization", "class") or "")
    assert page.inner_text("#error-general") == ""
    # Chromium reports the 401 itself on the console; nothing else may go wrong.
    assert all("401" in problem for problem in problems), problems


def test_a_typed_key_is_sent_and_the_maps_come_back(keyed_page):
    page, problems = keyed_page
    _refusal(page)
    page.evaluate("window.playground.state.lastForward = null")
    page.fill("#authorization", KEY)
    page.dispatch_event("#authorization", "change")  # the page convolves again with the key
    page.wait_for_function("window.playground.state.lastForward")
    assert page.inner_text("#error-authorization") == ""
    x = _array(page, "window.playground.state.lastInput")
    w = _array(page, "window.playground.state.lastWeights")
    np.testing.assert_array_equal(
        _array(page, "window.playground.state.lastForward"), conv2d(x, w, padding="same")
    )
    page.click("#run-backward")
    page.wait_for_function("window.playground.state.lastBackward")
    # Kept for this tab: a reload convolves straight away.
    page.reload()
    page.wait_for_function("window.playground && window.playground.state.lastForward")
    assert page.input_value("#authorization") == KEY
    assert KEY not in page.url
    assert all("401" in problem for problem in problems), problems


def test_a_wrong_key_is_named_as_such(keyed_page):
    page, _ = keyed_page
    _refusal(page)
    page.fill("#authorization", "not-the-key")
    page.dispatch_event("#authorization", "change")
    page.wait_for_function(
        "document.getElementById('error-authorization').textContent.includes('not known')"
    )
    assert "the API key is not known here" in page.inner_text("#error-authorization")


def test_the_docs_load_without_a_key_and_offer_to_send_one(browser, keyed_service):
    docs = browser.new_page()
    failed: list[str] = []
    docs.on("requestfailed", lambda r: failed.append(r.url))
    docs.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    docs.goto(keyed_service.url + "/docs")
    docs.wait_for_selector("button.authorize", timeout=20_000)
    docs.click("button.authorize")
    docs.wait_for_selector("text=X-API-Key")
    assert failed == []
    docs.close()
