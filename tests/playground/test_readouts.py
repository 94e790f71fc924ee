"""Values you can read: the value under the pointer, colour scales with numbers, the receptive
field of a picked output pixel outlined on the input at any displayed size."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import Locator, Page

from convengine import conv2d, conv2d_backward

from .test_page import _array, _canvas, _convolve


def fmt(value: float) -> str:
    """The page's number format, written out again: three significant digits."""
    text = f"{float(f'{value:.3g}'):.10g}"
    return "0" if text == "-0" else text


def _summed_dx(page: Page) -> np.ndarray:
    """dx as the page shows it, summed over the channels: flat."""
    return np.array(page.evaluate("Array.from(window.playground.state.lastBackward.dxSummed)"))


def _hover(page: Page, canvas: Locator, i: int, j: int, h: int, w: int) -> str:
    """Move the pointer to the middle of pixel (i, j) of an (h, w) canvas; the readout's text."""
    box = canvas.bounding_box()
    assert box is not None
    inner_w, inner_h = box["width"] - 2, box["height"] - 2  # a 1 px border each side
    page.mouse.move(box["x"] + 1 + (j + 0.5) * inner_w / w, box["y"] + 1 + (i + 0.5) * inner_h / h)
    return canvas.locator("xpath=ancestor::figure[1]").locator(".readout").inner_text()


def test_the_value_under_the_pointer_on_input_output_dx_and_dw(page):
    page_, problems = page
    page_.select_option("#sample", "letter")
    page_.fill("#stride", "2")
    page_.fill("#padding", "1")
    _convolve(page_)
    x = _array(page_, "window.playground.state.lastInput")
    out = _array(page_, "window.playground.state.lastForward")
    assert out.shape == (1, 3, 25, 25)
    for i, j in [(0, 0), (20, 13), (48, 48)]:
        text = _hover(page_, page_.locator("#input-canvas"), i, j, 49, 49)
        assert text == f"x[0, 0, {i}, {j}] = {fmt(x[0, 0, i, j])}"
    for f, i, j in [(0, 5, 7), (1, 24, 0), (2, 12, 12)]:
        canvas = page_.locator(f'canvas.feature-map[data-filter="{f}"]')
        assert (
            _hover(page_, canvas, i, j, 25, 25) == f"out[0, {f}, {i}, {j}] = {fmt(out[0, f, i, j])}"
        )
    # The pointer gone, the readout says what to do.
    page_.mouse.move(0, 0)
    assert page_.locator("#input-figure .readout").inner_text() == "hover for values"
    # Gradients of the sum of squares of map 1.
    page_.select_option("#loss", "sumsq")
    page_.select_option("#loss-map", "1")
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    w = _array(page_, "window.playground.state.lastWeights")
    dout = np.zeros_like(out)
    dout[0, 1] = 2 * out[0, 1]
    dx, dw, _ = conv2d_backward(dout, x, w, stride=2, padding=1)
    summed = dx[0].sum(axis=0)
    for i, j in [(10, 10), (30, 17)]:
        text = _hover(page_, page_.locator("#dx-canvas"), i, j, 49, 49)
        assert text == f"Σc dx[0, c, {i}, {j}] = {fmt(summed[i, j])}"
    dw_canvas = page_.locator("#dw canvas.small").nth(1)
    for i, j in [(0, 0), (1, 2)]:
        assert (
            _hover(page_, dw_canvas, i, j, 3, 3) == f"Σc dw[1, c, {i}, {j}] = {fmt(dw[1, 0, i, j])}"
        )
    assert problems == []


def _ticks(page: Page, figure: str) -> list[float]:
    return [float(t) for t in page.locator(figure).locator(".ticks span").all_inner_texts()]


def test_every_map_has_a_colour_scale_with_its_numbers(page):
    page_, _ = page
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    out = _array(page_, "window.playground.state.lastForward")
    # The input: grey from its minimum to its maximum.
    assert _ticks(page_, "#input-figure") == [0, 0.5, 1]
    # Sobel outputs are signed: diverging, symmetric about zero; the Gaussian's is not.
    for f in range(3):
        plane = out[0, f]
        figure = f"#outputs figure:nth-child({f + 1})"
        if plane.min() < 0 < plane.max():
            m = np.abs(plane).max()
            assert _ticks(page_, figure) == pytest.approx([-m, 0, m], rel=2e-3)
        else:
            lo, hi = plane.min(), plane.max()
            assert _ticks(page_, figure) == pytest.approx([lo, (lo + hi) / 2, hi], rel=2e-3)
    # Gradients always diverging; each bar's ends are the colours of its ends.
    summed = _summed_dx(page_)
    m = np.abs(summed).max()
    assert _ticks(page_, "#dx-figure") == pytest.approx([-m, 0, m], rel=2e-3)
    bar = _canvas(page_, "#dx-figure canvas.bar")[0, :, :3]
    assert bar[0].tolist() == [33, 102, 172] and bar[-1].tolist() == [178, 24, 43]
    assert bar[31].min() > 240  # white near zero
    n_dw = page_.locator("#dw figure").count()
    assert n_dw == 3 and page_.locator("#dw .scale").count() == 3
    assert page_.locator("#dw .ticks .mid").all_inner_texts() == ["0"] * 3


def _field(page: Page, figure: str) -> tuple[dict, list[tuple[int, int]]]:
    """The outlined window on a map (its SVG attributes) and its taps (row, column)."""
    rects = page.locator(f"{figure} svg.overlay rect")
    field, taps = None, []
    for k in range(rects.count()):
        r = rects.nth(k)
        attrs = {a: int(float(r.get_attribute(a) or 0)) for a in ("x", "y", "width", "height")}
        if r.get_attribute("class") in ("field", "spread"):
            field = attrs
        elif r.get_attribute("class") == "tap":
            taps.append((attrs["y"], attrs["x"]))
    assert field is not None
    return field, sorted(taps)


@pytest.mark.parametrize(
    "stride, dilation, padding, pixel",
    [(1, 1, "same", (24, 24)), (2, 2, "2", (3, 11)), (3, 1, "0", (0, 15))],
    ids=["plain", "strided-dilated", "corner"],
)
def test_a_picked_output_pixels_receptive_field_is_outlined_on_the_input(
    page, stride, dilation, padding, pixel
):
    page_, problems = page
    page_.select_option("#ksize", "3")
    page_.fill("#stride", str(stride))
    page_.fill("#padding", padding)
    page_.fill("#dilation", str(dilation))
    page_.select_option("#rounding", "floor")
    _convolve(page_)
    out = _array(page_, "window.playground.state.lastForward")
    h_out = out.shape[2]
    i, j = pixel
    # Click the pixel on map 1.
    canvas = page_.locator('canvas.feature-map[data-filter="1"]')
    box = canvas.bounding_box()
    assert box is not None
    scale = (box["width"] - 2) / h_out
    page_.mouse.click(box["x"] + 1 + (j + 0.5) * scale, box["y"] + 1 + (i + 0.5) * scale)
    assert page_.inner_text("#loss-pixel") == f"pixel ({i}, {j}) of map 1"
    assert (page_.input_value("#pixel-row"), page_.input_value("#pixel-col")) == (str(i), str(j))
    before = {"same": 1, "2": 2, "0": 0}[padding]
    top, left = i * stride - before, j * stride - before
    span = dilation * 2 + 1
    field, taps = _field(page_, "#input-figure")
    assert field == {"x": left, "y": top, "width": span, "height": span}
    assert taps == [(top + dilation * a, left + dilation * b) for a in range(3) for b in range(3)]
    # The outline is the receptive field indeed: one-pixel backward lights exactly its taps.
    page_.select_option("#preset-1", "box blur")
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    assert page_.inner_text("#loss-pixel") == f"pixel ({i}, {j}) of map 1"
    dx = _summed_dx(page_).reshape(49, 49)
    lit = sorted(map(tuple, np.argwhere(dx != 0).tolist()))
    assert lit == [t for t in taps if 0 <= t[0] < 49 and 0 <= t[1] < 49]
    x = _array(page_, "window.playground.state.lastInput")
    w = _array(page_, "window.playground.state.lastWeights")
    hyper = dict(stride=stride, padding=before, dilation=dilation, rounding="floor")
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastForward"), conv2d(x, w, **hyper), atol=1e-5
    )
    assert problems == []


@pytest.mark.parametrize("css_width", [100, 192, 400, 700])
def test_the_outline_sits_on_its_pixels_at_every_displayed_size(page, css_width):
    page_, _ = page
    page_.fill("#pixel-row", "30")
    page_.fill("#pixel-col", "12")
    page_.dispatch_event("#pixel-col", "change")
    page_.evaluate(f"document.getElementById('input-canvas').style.width = '{css_width}px'")
    canvas = page_.locator("#input-canvas").bounding_box()
    field = page_.locator("#input-figure svg.overlay rect.field").bounding_box()
    assert canvas is not None and field is not None
    px = (canvas["width"] - 2) / 49
    # 3x3 window of output pixel (30, 12) at "same": input rows 29..31, columns 11..13.
    # The stroke is drawn on the rectangle's edge: half of it (1.25 px) lies outside.
    assert field["x"] == pytest.approx(canvas["x"] + 1 + 11 * px - 1.25, abs=0.6)
    assert field["y"] == pytest.approx(canvas["y"] + 1 + 29 * px - 1.25, abs=0.6)
    assert field["width"] == pytest.approx(3 * px + 2.5, abs=1)
    assert field["height"] == pytest.approx(3 * px + 2.5, abs=1)
