"""The playground's layout at a phone's width and a laptop's: no sideways scroll, the controls
above or beside the maps, the main action in view without scrolling."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page

from .test_access import _switch

PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1280, "height": 900}
OVERFLOWING = """() => [...document.querySelectorAll("body *")]
    .filter((e) => e.getClientRects().length && !e.closest(".overlay"))
    .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 0.5
                   || e.getBoundingClientRect().left < -0.5)
    .map((e) => e.id || e.className || e.tagName)"""


def _box(page: Page, selector: str) -> dict[str, float]:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    return box


@pytest.mark.parametrize("mode", ["conv2d", "transposed", "conv1d"])
def test_no_sideways_scroll_at_a_phones_width(page, mode):
    page_, problems = page
    page_.set_viewport_size(PHONE)
    if mode != "conv2d":
        _switch(page_, mode)
    page_.select_option("#ksize", "7")  # the widest kernel grid
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    width = page_.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert width == [390, 390]
    assert page_.evaluate(OVERFLOWING) == []
    # One column: the controls above the maps, each as wide as the screen allows.
    controls, results = _box(page_, "#controls"), _box(page_, "#results")
    assert controls["y"] + controls["height"] <= results["y"]
    assert controls["width"] > 340 and results["width"] > 340
    # The header is whole.
    header = _box(page_, "header h1")
    assert header["x"] >= 0 and header["x"] + header["width"] <= 390
    assert problems == []


def test_at_a_laptops_size_the_controls_sit_beside_the_maps_and_convolve_is_in_view(page):
    page_, _ = page
    assert page_.viewport_size == LAPTOP
    assert page_.evaluate("scrollY") == 0
    controls, results = _box(page_, "#controls"), _box(page_, "#results")
    assert controls["x"] + controls["width"] <= results["x"]
    assert abs(controls["y"] - results["y"]) < 2
    button = _box(page_, "#run-forward")
    assert button["y"] >= 0 and button["y"] + button["height"] <= LAPTOP["height"]
    # The input and the first feature map are in view too, beside each other.
    first_map = _box(page_, 'canvas.feature-map[data-filter="0"]')
    assert first_map["y"] + first_map["height"] <= LAPTOP["height"]
    assert page_.evaluate("document.documentElement.scrollWidth") == LAPTOP["width"]


def test_on_a_phone_convolve_is_in_view_at_the_top(page):
    page_, _ = page
    page_.set_viewport_size(PHONE)
    page_.evaluate("scrollTo(0, 0)")
    button = _box(page_, "#run-forward")
    assert button["y"] + button["height"] <= PHONE["height"]
    # It works: a tap convolves.
    page_.evaluate("window.playground.state.lastForward = null")
    page_.click("#run-forward")
    page_.wait_for_function("window.playground.state.lastForward")


@pytest.mark.parametrize("width", [390, 600, 899, 900, 1280])
def test_the_switch_from_one_column_to_two_is_at_900_px(page, width):
    page_, _ = page
    page_.set_viewport_size({"width": width, "height": 900})
    controls, results = _box(page_, "#controls"), _box(page_, "#results")
    beside = controls["x"] + controls["width"] <= results["x"]
    assert beside == (width >= 900)
    assert page_.evaluate("document.documentElement.scrollWidth") == width
