"""The views the README shows, built as a user would and checked; their screenshots are saved in
artifacts/ (readme-*.png), from where docs/ takes its copies."""

from __future__ import annotations

import numpy as np
from playwright.sync_api import Page

from .conftest import ARTIFACTS
from .test_access import _switch
from .test_page import _array, _convolve


def _save(page: Page, name: str, **options) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.activeElement && document.activeElement.blur()")
    page.mouse.move(0, 0)
    page.screenshot(path=str(ARTIFACTS / f"readme-{name}.png"), **options)


def _backward(page: Page) -> None:
    page.click("#run-backward")
    page.wait_for_function("window.playground.state.lastBackward")


def test_laptop_view_sobel_and_gaussian_on_a_letter(page):
    page_, problems = page
    page_.select_option("#sample", "letter")
    page_.fill("#stride", "2")
    page_.select_option("#padding_mode", "reflect")
    _convolve(page_)
    page_.select_option("#loss", "sumsq")
    _backward(page_)
    assert _array(page_, "window.playground.state.lastForward").shape == (1, 3, 25, 25)
    _save(page_, "laptop", full_page=True)
    assert problems == []


def test_phone_view(page):
    page_, problems = page
    page_.set_viewport_size({"width": 390, "height": 844})
    page_.select_option("#sample", "letter")
    _convolve(page_)
    page_.fill("#pixel-row", "14")
    page_.fill("#pixel-col", "20")
    page_.dispatch_event("#pixel-col", "change")
    page_.locator("#results h2").first.scroll_into_view_if_needed()
    page_.evaluate("scrollTo(0, document.getElementById('results').offsetTop - 4)")
    canvas = page_.locator("#input-canvas").bounding_box()
    assert canvas is not None and canvas["y"] + canvas["height"] < 844  # the maps in view
    _save(page_, "phone")
    assert problems == []


def test_transposed_view(page):
    page_, problems = page
    _switch(page_, "transposed")
    page_.select_option("#sample", "letter")
    _convolve(page_)
    page_.fill("#source-row", "6")
    page_.fill("#source-col", "8")
    page_.dispatch_event("#source-col", "change")
    out = _array(page_, "window.playground.state.lastForward")
    assert out.shape == (1, 2, 34, 34)
    assert page_.evaluate("window.playground.state.source") == {"i": 6, "j": 8}
    assert page_.inner_text("#probe-hint").startswith(
        "Click the input, or type a row and column: input pixel (6, 8)"
    )
    _save(page_, "transposed")
    assert problems == []


def test_one_d_view(page):
    page_, problems = page
    _switch(page_, "conv1d")
    page_.select_option("#sample", "noisy steps")
    page_.wait_for_function("window.playground.state.lastForward")
    page_.focus("#position")
    for _ in range(6):
        page_.keyboard.press("ArrowLeft")
    page_.select_option("#loss-map", "1")
    page_.dispatch_event("#loss-map", "change")
    _backward(page_)
    dx = _array(page_, "window.playground.state.lastBackward.dx")
    assert np.count_nonzero(dx) == 2  # the difference kernel's two non-zero taps
    _save(page_, "1d", full_page=True)
    assert problems == []
