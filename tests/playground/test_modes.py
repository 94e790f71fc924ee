"""Every operation in the page: the transposed (upsampling) layer, the 1-D signal with its kernel
sliding, dilation and groups; each answer checked against the engine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from playwright.sync_api import Page

from convengine import conv, conv_backward, conv_transpose, conv_transpose_backward, explain

from .test_access import _switch
from .test_page import _array, _convolve
from .test_readouts import _field, fmt


def _arrays(page: Page) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(  # type: ignore[return-value]
        _array(page, f"window.playground.state.{name}")
        for name in ("lastInput", "lastWeights", "lastForward")
    )


def test_transposed_mode_upsamples_as_the_engine_does(page):
    page_, problems = page
    _switch(page_, "transposed")
    # The mode's own settings: stride 2, padding 1, output padding 1, a tent and a Sobel kernel.
    assert page_.input_value("#stride") == "2" and page_.input_value("#output_padding") == "1"
    assert page_.input_value("#preset-0") == "tent"
    x, w, out = _arrays(page_)
    assert x.shape == (1, 1, 17, 17) and w.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(
        out, conv_transpose(x, w, stride=2, padding=1, output_padding=1), atol=1e-5
    )
    text = page_.inner_text("#arithmetic")
    assert "output height = (17-1)*2 - 1 - 1 + 1*(3-1) + 1 + 1 = 34" in text
    assert "out (N, C_out, H_out, W_out) = (1, 2, 34, 34)" in text
    # The controls that do not apply to a transposed layer are hidden, output padding shown.
    assert page_.locator("#padding_mode").is_hidden() and page_.locator("#rounding").is_hidden()
    assert page_.locator("#output_padding").is_visible()
    # Output padding 0: one row and column fewer.
    page_.fill("#output_padding", "0")
    _convolve(page_)
    assert _array(page_, "window.playground.state.lastForward").shape == (1, 2, 33, 33)
    assert "+ 0 + 1 = 33" in page_.inner_text("#arithmetic")
    # Backward through /conv_transpose/backward.
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    x, w, out = _arrays(page_)
    dout = _array(page_, "window.playground.state.lastBackward.dout")
    assert dout.sum() == 1  # one output pixel
    dx, dw, _ = conv_transpose_backward(dout, x, w, stride=2, padding=1)
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dx"), dx, atol=1e-5
    )
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dw"), dw, atol=1e-4
    )
    assert problems == []


def test_one_input_pixel_spreads_over_the_outlined_block_of_the_output(page):
    page_, problems = page
    _switch(page_, "transposed")
    page_.select_option("#sample", "one pixel")
    _convolve(page_)
    x, _, out = _arrays(page_)
    assert np.argwhere(x[0, 0]).tolist() == [[8, 8]]
    # The input's middle pixel is picked at first; its block on each output: rows and columns
    # 8*2 - 1 + (0, 1, 2) = 15..17, a tap each.
    assert page_.input_value("#source-row") == "8"
    for f in range(2):
        field, taps = _field(page_, f"#outputs figure:nth-child({f + 1})")
        assert field == {"x": 15, "y": 15, "width": 3, "height": 3}
        assert taps == [(r, c) for r in (15, 16, 17) for c in (15, 16, 17)]
        lit = np.argwhere(out[0, f] != 0).tolist()
        assert lit and all(15 <= r <= 17 and 15 <= c <= 17 for r, c in lit)
    # The tent kernel stamped: the one pixel's 3x3 block is the kernel itself.
    np.testing.assert_allclose(
        out[0, 0, 15:18, 15:18], [[0.25, 0.5, 0.25], [0.5, 1, 0.5], [0.25, 0.5, 0.25]]
    )
    # Click another input pixel: its block moves with the stride.
    canvas = page_.locator("#input-canvas")
    box = canvas.bounding_box()
    assert box is not None
    px = (box["width"] - 2) / 17
    page_.mouse.click(box["x"] + 1 + 3.5 * px, box["y"] + 1 + 0.5 * px)  # (0, 3)
    assert (page_.input_value("#source-row"), page_.input_value("#source-col")) == ("0", "3")
    field, _ = _field(page_, "#outputs figure:nth-child(2)")
    assert field == {"x": 5, "y": -1, "width": 3, "height": 3}  # row -1 is cropped by padding
    assert "input pixel (0, 3)" in page_.inner_text("#probe-hint")
    # Output padding at or past the stride is refused beside its field.
    page_.fill("#output_padding", "2")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-output_padding').textContent.length")
    assert "output_padding 2" in page_.inner_text("#error-output_padding")
    assert [p for p in problems if "status of 422" not in p] == []


def _plot_points(page: Page, figure: str) -> np.ndarray:
    points = page.locator(f"{figure} polyline.line").get_attribute("points") or ""
    return np.array([[float(v) for v in p.split(",")] for p in points.split()])


def test_one_d_mode_plots_the_signal_and_its_outputs(page):
    page_, problems = page
    _switch(page_, "conv1d")
    x, w, out = _arrays(page_)
    assert x.shape == (1, 1, 64) and w.shape == (3, 1, 3)
    np.testing.assert_array_equal(w[1, 0], [-1, 0, 1])  # difference
    np.testing.assert_allclose(out, conv(x, w, padding="same"), atol=1e-6)
    assert "output length = (64 + 2*1 - 1*(3-1) - 1)/1 + 1 = 64" in page_.inner_text("#arithmetic")
    # Each plot draws every value: x evenly spaced, y falling linearly as the value rises.
    for figure, values in [("#input-figure", x[0, 0]), ("#outputs figure:nth-child(2)", out[0, 1])]:
        points = _plot_points(page_, figure)
        assert len(points) == 64
        assert np.allclose(np.diff(points[:, 0]), points[1, 0] - points[0, 0], atol=0.02)
        slope = np.polyfit(values, points[:, 1], 1)[0]
        assert slope < 0
        assert np.allclose(
            points[:, 1], np.polyval(np.polyfit(values, points[:, 1], 1), values), atol=0.02
        )
        # The axis numbers are the values' range (with zero).
        ticks = [float(t) for t in page_.locator(f"{figure} text.tick.y").all_text_contents()]
        assert max(ticks) == pytest.approx(max(values.max(), 0), rel=2e-3)
        assert min(ticks) == pytest.approx(min(values.min(), 0), rel=2e-3)
    # Hover: the value under the pointer.
    svg = page_.locator("#outputs figure:nth-child(2) svg").bounding_box()
    points = _plot_points(page_, "#outputs figure:nth-child(2)")
    page_.mouse.move(svg["x"] + points[20, 0] * svg["width"] / 360, svg["y"] + svg["height"] / 2)
    text = page_.inner_text("#outputs figure:nth-child(2) .readout")
    assert text == f"out[0, 1, 20] = {fmt(out[0, 1, 20])}"
    assert problems == []


def _band(page: Page) -> tuple[float, float, list[float]]:
    band = page.locator("#input-figure g.window rect.band")
    left = float(band.get_attribute("x") or 0)
    taps = page.locator("#input-figure g.window circle.tap")
    return (
        left,
        float(band.get_attribute("width") or 0),
        [float(taps.nth(k).get_attribute("cx") or 0) for k in range(taps.count())],
    )


def test_one_d_kernel_slides_by_slider_keys_and_play(page):
    page_, problems = page
    _switch(page_, "conv1d")
    page_.fill("#dilation", "2")
    page_.fill("#stride", "2")
    page_.fill("#padding", "2")
    page_.select_option("#rounding", "floor")  # (64 + 2*2 - 2*(3-1) - 1)/2 = 31.5
    _convolve(page_)
    out = _array(page_, "window.playground.state.lastForward")
    assert out.shape == (1, 3, 32)
    step = _plot_points(page_, "#input-figure")[1, 0] - _plot_points(page_, "#input-figure")[0, 0]
    points = _plot_points(page_, "#input-figure")
    # A new length: the picked position starts again at the middle, 16 of 32, which reads
    # input 16*2 - 2 + (0, 2, 4) = 30, 32, 34.
    assert page_.input_value("#position") == "16"
    left, width, taps = _band(page_)
    assert taps == pytest.approx([points[30, 0], points[32, 0], points[34, 0]], abs=0.02)
    assert width == pytest.approx(5 * step, abs=0.02)
    # The arrow key moves the window by the stride.
    page_.focus("#position")
    page_.keyboard.press("ArrowRight")
    assert page_.inner_text("#loss-pixel") == "position 17 of map 0"
    left2, _, taps2 = _band(page_)
    assert left2 - left == pytest.approx(2 * step, abs=0.02)
    assert taps2 == pytest.approx([points[32, 0], points[34, 0], points[36, 0]], abs=0.02)
    # The first window hangs over the padding: its taps there are drawn hollow.
    page_.keyboard.press("Home")
    assert page_.locator("#input-figure circle.tap.padded").count() == 1
    # Play slides it on by itself; pressing again stops it.
    page_.click("#play")
    assert page_.get_attribute("#play", "aria-pressed") == "true"
    page_.wait_for_function("Number(document.getElementById('position').value) >= 3")
    page_.click("#play")
    assert page_.get_attribute("#play", "aria-pressed") == "false"
    stopped = page_.input_value("#position")
    page_.wait_for_timeout(500)
    assert page_.input_value("#position") == stopped
    # Backward on the picked position: dx and dw are the engine's.
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    x, w, out = _arrays(page_)
    j = int(stopped)
    dout = np.zeros_like(out)
    dout[0, 0, j] = 1
    dx, dw, _ = conv_backward(dout, x, w, stride=2, padding=2, dilation=2, rounding="floor")
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dx"), dx, atol=1e-6
    )
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dw"), dw, atol=1e-5
    )
    assert len(_plot_points(page_, "#dx-figure")) == 64
    assert problems == []


def test_groups_show_which_channels_each_map_reads(page):
    page_, problems = page
    page_.select_option("#sample", "colour blobs")
    page_.select_option("#channels", "3")
    page_.fill("#groups", "3")
    _convolve(page_)
    x, w, out = _arrays(page_)
    assert w.shape == (3, 1, 3, 3)
    np.testing.assert_allclose(out, conv(x, w, padding="same", groups=3), atol=1e-5)
    captions = page_.locator("#outputs figcaption").all_inner_texts()
    assert captions == [
        "out[0, 0] (sobel x, reads x channel 0 (R))",
        "out[0, 1] (sobel y, reads x channel 1 (G))",
        "out[0, 2] (gaussian, reads x channel 2 (B))",
    ]
    assert "groups = 3: each output map reads 1 of the 3 input channels" in page_.inner_text(
        "#arithmetic"
    )
    # Groups 1: every map reads every channel.
    page_.fill("#groups", "1")
    _convolve(page_)
    assert page_.locator("#outputs figcaption").first.inner_text() == (
        "out[0, 0] (sobel x, reads x channels 0 (R) to 2 (B))"
    )
    # Groups that do not divide the channels: the service says so beside the field.
    page_.select_option("#channels", "1")
    page_.fill("#groups", "3")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-groups').textContent.length")
    assert "groups=3 must divide the input channels C=1" in page_.inner_text("#error-groups")
    assert [p for p in problems if "status of 422" not in p] == []


def test_transposed_groups_and_dilation(page):
    page_, problems = page
    _switch(page_, "transposed")
    page_.select_option("#channels", "3")
    for _ in range(4):
        page_.click("#add-filter")  # six filters: two per group of one channel
    page_.fill("#groups", "3")
    page_.fill("#dilation", "2")
    page_.fill("#output_padding", "0")
    _convolve(page_)
    x, w, out = _arrays(page_)
    assert w.shape == (3, 2, 3, 3)
    hyper = dict(stride=2, padding=1, dilation=2, groups=3)
    np.testing.assert_allclose(out, conv_transpose(x, w, **hyper), atol=1e-5)
    # Dilation spreads the taps: two pixels apart.
    _, taps = _field(page_, "#outputs figure:nth-child(1)")
    assert sorted({c for _, c in taps}) == [15, 17, 19]
    captions = page_.locator("#outputs figcaption").all_inner_texts()
    assert captions[2].endswith("reads x channel 1 (G))")
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    dout = _array(page_, "window.playground.state.lastBackward.dout")
    dx, dw, _ = conv_transpose_backward(dout, x, w, **hyper)
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dx"), dx, atol=1e-5
    )
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastBackward.dw"), dw, atol=1e-4
    )
    assert problems == []


@pytest.mark.parametrize("mode", ["conv2d", "transposed", "conv1d"])
def test_the_size_and_cost_come_from_the_services_dry_run(page, mode):
    page_, problems = page
    if mode != "conv2d":
        _switch(page_, mode)
    posted: list[str] = []
    bodies: list[dict] = []

    def record(request):
        if request.method == "POST":
            posted.append(request.url.split("/", 3)[3])
            bodies.append(json.loads(request.post_data))

    page_.on("request", record)
    _convolve(page_)
    x, w, out = _arrays(page_)
    # The page's one image or signal travels as one sample, without its batch axis, as
    # PyTorch's modules take a single image; the answer comes back so, the page adds N=1.
    assert [body["x"]["shape"] for body in bodies] == [list(x.shape[1:])] * 2
    operation = "conv_transpose" if mode == "transposed" else "forward"
    hyper = page_.evaluate("window.playground.state.lastHyper")
    plan = explain(operation, x=x.shape, w=w.shape, dtype="float32", **hyper)
    assert plan.outputs["out"].shape == out.shape
    lines = page_.inner_text("#arithmetic").splitlines()
    assert lines[-1] == (
        f"{plan.flops:,} flops, {plan.memory_bytes / 1024:.1f} KiB at most (POST /explain)"
    )
    assert lines[-2].endswith(f"= ({', '.join(map(str, out.shape))})")
    assert lines[1] == (
        f"sent as one sample, without the batch axis: x ({', '.join(map(str, x.shape[1:]))}), "
        f"out ({', '.join(map(str, out.shape[1:]))})"
    )
    assert posted == ["explain", "conv_transpose/forward" if mode == "transposed" else "forward"]
    # A refused request is refused by the dry run: the arrays are never sent.
    posted.clear()
    page_.fill("#stride", "0")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-stride').textContent.length")
    assert "greater than or equal to 1" in page_.inner_text("#error-stride")
    assert posted == ["explain"]
    assert [p for p in problems if "status of 422" not in p] == []
