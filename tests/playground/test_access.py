"""The playground for people who use a keyboard or a screen reader: axe-core in the page, labels,
keys. axe-core is vendored for the tests (see vendor/README.md) and injected by them."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
AXE_VERSION = "4.14.1"
RUN_AXE = """async () => {
    const result = await axe.run(document, {resultTypes: ["violations"]});
    return result.violations.map((v) => ({
        id: v.id, impact: v.impact, help: v.help,
        targets: v.nodes.map((n) => n.target.join(" ")).slice(0, 5),
    }));
}"""


def _switch(page: Page, mode: str) -> None:
    page.select_option("#mode", mode)
    page.wait_for_function(
        "(m) => window.playground.state.lastForward && window.playground.state.last.mode === m",
        arg=mode,
    )


def _violations(page: Page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    assert page.evaluate("axe.version") == AXE_VERSION
    return page.evaluate(RUN_AXE)


@pytest.mark.parametrize("width, height", [(1280, 900), (390, 844)], ids=["laptop", "phone"])
@pytest.mark.parametrize("mode", ["conv2d", "transposed", "conv1d"])
def test_axe_core_finds_nothing_serious_in_any_mode(page, mode, width, height):
    page_, problems = page
    page_.set_viewport_size({"width": width, "height": height})
    if mode != "conv2d":
        _switch(page_, mode)
    page_.click("#run-backward")  # every map and plot on screen, gradients too
    page_.wait_for_function("window.playground.state.lastBackward")
    found = _violations(page_)
    serious = [v for v in found if v["impact"] in ("serious", "critical")]
    assert serious == [], serious
    # Nothing of lesser impact either, so far: a new finding shows here first.
    assert found == [], found
    assert problems == []


def test_an_error_on_screen_passes_axe_too(page):
    page_, _ = page
    page_.fill("#stride", "0")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-stride').textContent.length > 0")
    found = _violations(page_)
    assert [v for v in found if v["impact"] in ("serious", "critical")] == [], found


UNLABELLED = """() => [...document.querySelectorAll("input, select, button, textarea")]
    .filter((e) => !e.closest("[hidden]"))
    .filter((e) => !(e.labels && e.labels.length && [...e.labels].some((l) => l.textContent.trim()))
                   && !(e.getAttribute("aria-label") || "").trim()
                   && !(e.tagName === "BUTTON" && e.textContent.trim()))
    .map((e) => e.id || e.outerHTML.slice(0, 80))"""


@pytest.mark.parametrize("mode", ["conv2d", "transposed", "conv1d"])
def test_every_control_has_a_name(page, mode):
    page_, _ = page
    if mode != "conv2d":
        _switch(page_, mode)
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    assert page_.evaluate(UNLABELLED) == []
    assert page_.locator("input, select, button").count() > 30  # the kernels' cells among them


def test_the_page_works_from_the_keyboard_alone(page):
    page_, problems = page
    # Tab from the top: the first stop is the operation, then Convolve; Enter on it convolves.
    page_.evaluate("document.activeElement.blur()")
    page_.keyboard.press("Tab")  # the API docs link in the header
    page_.keyboard.press("Tab")
    assert page_.evaluate("document.activeElement.id") == "mode"
    page_.keyboard.press("Tab")
    assert page_.evaluate("document.activeElement.id") == "run-forward"
    page_.evaluate("window.playground.state.lastForward = null")
    page_.keyboard.press("Enter")
    page_.wait_for_function("window.playground.state.lastForward")
    # An output pixel picked by typing, not clicking: the outline on the input follows.
    page_.focus("#pixel-row")
    page_.keyboard.press("Control+A")
    page_.keyboard.type("10")
    page_.keyboard.press("Tab")  # change fires on leaving the field
    assert page_.inner_text("#loss-pixel") == "pixel (10, 24) of map 0"
    value = page_.evaluate("window.playground.state.lastForward.data[10 * 49 + 24]")
    shown = page_.inner_text("#outputs figure:nth-child(1) .readout")
    assert shown.startswith("out[0, 0, 10, 24] = ")
    assert float(shown.split(" = ")[1]) == pytest.approx(value, rel=2e-3, abs=1e-6)
    field = page_.locator("#input-figure svg.overlay rect.field")
    assert (field.get_attribute("y"), field.get_attribute("x")) == ("9", "23")
    # Backpropagate by keyboard.
    page_.focus("#run-backward")
    page_.keyboard.press("Enter")
    page_.wait_for_function("window.playground.state.lastBackward")
    # The operation by keyboard: arrow down in the select picks the next one.
    page_.focus("#mode")
    page_.evaluate("window.playground.state.lastForward = null")
    page_.keyboard.press("ArrowDown")
    page_.wait_for_function(
        "window.playground.state.lastForward && window.playground.state.last.mode === 'transposed'"
    )
    assert problems == []


def test_the_focus_is_visible(page):
    page_, _ = page
    page_.focus("#run-forward")
    page_.keyboard.press("Shift+Tab")
    page_.keyboard.press("Tab")
    outline = page_.evaluate(
        "(() => { const s = getComputedStyle(document.activeElement);"
        " return [document.activeElement.id, s.outlineStyle, s.outlineWidth]; })()"
    )
    assert outline == ["run-forward", "solid", "3px"]


def test_axe_does_see_a_missing_label_and_poor_contrast(page):
    """The check above can fail: the same page, broken on purpose, has findings."""
    page_, _ = page
    page_.evaluate(
        "document.body.append(document.getElementById('stride'));"
        "document.querySelector('header p').style.color = '#777'"
    )
    found = {v["id"]: v for v in _violations(page_)}
    assert found["label"]["impact"] == "critical"
    assert found["label"]["targets"] == ["#stride"]
    assert found["color-contrast"]["impact"] == "serious"


def test_only_the_picked_maps_readout_holds_a_value(page):
    page_, _ = page
    page_.select_option("#loss-map", "2")
    page_.dispatch_event("#loss-map", "change")
    readouts = page_.locator("#outputs .readout").all_inner_texts()
    assert readouts[:2] == ["hover for values"] * 2
    assert readouts[2].startswith("out[0, 2, 24, 24] = ")
