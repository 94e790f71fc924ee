"""The playground in a real headless Chromium (Debian's), against a real uvicorn process."""

from __future__ import annotations

import numpy as np
import pytest
from playwright.sync_api import Page

from convengine import conv2d

from .conftest import ARTIFACTS


def _array(page: Page, expression: str) -> np.ndarray:
    shape, data = page.evaluate(
        f"(() => {{ const t = {expression}; return [t.shape, Array.from(t.data)]; }})()"
    )
    return np.array(data, dtype=np.float32).reshape(shape)


def _canvas(page: Page, selector: str) -> np.ndarray:
    """The RGBA pixels of a canvas: (H, W, 4)."""
    width, height, data = page.evaluate(
        """(selector) => {
            const c = document.querySelector(selector);
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            return [c.width, c.height, Array.from(d)];
        }""",
        selector,
    )
    return np.array(data, dtype=np.uint8).reshape(height, width, 4)


RED, BLUE = np.array([178, 24, 43]), np.array([33, 102, 172])


def diverging(plane: np.ndarray) -> np.ndarray:
    """The page's diverging colour map, written out again: (H, W) -> (H, W, 3) RGB."""
    t = plane / np.abs(plane).max()
    end = np.where(t[..., None] >= 0, RED, BLUE)
    return np.round(255 + (end - 255) * np.abs(t)[..., None]).astype(int)


def _convolve(page: Page) -> None:
    """Convolve, and wait for the pass this click started: a pass still in flight from an
    earlier change could otherwise answer the wait, and redraw after it (a test flaked so)."""
    page.evaluate("window.playground.state.lastForward = null")
    page.click("#run-forward")
    page.evaluate("() => window.playground.state.inflight")  # resolves once it has drawn
    page.wait_for_function("window.playground.state.lastForward")


def test_page_loads_without_console_errors(page):
    page_, problems = page
    assert page_.title() == "convengine playground"
    assert page_.locator("canvas.feature-map").count() == 3
    assert "output height = (49 + 2*1 - 1*(3-1) - 1)/1 + 1 = 49" in page_.inner_text("#arithmetic")
    assert problems == []


def test_sobel_feature_map_is_what_the_engine_computes(page):
    page_, problems = page
    page_.select_option("#sample", "checkerboard")
    page_.select_option("#preset-0", "sobel x")
    page_.fill("#stride", "1")
    page_.fill("#padding", "1")
    _convolve(page_)
    x = _array(page_, "window.playground.state.lastInput")
    w = _array(page_, "window.playground.state.lastWeights")
    np.testing.assert_array_equal(w[0, 0], [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    expected = conv2d(x, w, padding=1)
    np.testing.assert_array_equal(_array(page_, "window.playground.state.lastForward"), expected)
    # What the page shows: signed data on a diverging scale, white at zero, red above, blue below.
    plane = expected[0, 0]
    shown = _canvas(page_, 'canvas.feature-map[data-filter="0"]')
    assert np.abs(shown[..., :3].astype(int) - diverging(plane)).max() <= 1
    # ...and its colour scale's numbers: -max|out|, 0, max|out|.
    ticks = page_.locator("#outputs figure").nth(0).locator(".ticks span").all_inner_texts()
    m = np.abs(plane).max()
    assert [float(t) for t in ticks] == pytest.approx([-m, 0, m], rel=1e-3)
    # A map of one sign (the Gaussian's) stays grey, from its minimum to its maximum.
    gauss = expected[0, 2]
    grey = np.round((gauss - gauss.min()) / (gauss.max() - gauss.min()) * 255)
    shown = _canvas(page_, 'canvas.feature-map[data-filter="2"]')
    assert np.abs(shown[..., 0].astype(int) - grey).max() <= 1
    assert problems == []


@pytest.mark.parametrize("dilation, span", [(1, 5), (2, 9)])
def test_one_pixel_backward_lights_exactly_its_receptive_field(page, dilation, span):
    page_, problems = page
    page_.select_option("#ksize", "5")
    page_.select_option("#preset-0", "box blur")
    page_.fill("#dilation", str(dilation))
    _convolve(page_)
    page_.locator('canvas.feature-map[data-filter="0"]').click(
        position={"x": 97, "y": 97}
    )  # the centre, past a 1px border
    assert "pixel (24, 24) of map 0" in page_.inner_text("#loss-pixel")  # of 49x49
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    dx = _canvas(page_, "#dx-canvas")
    touched = np.argwhere((dx[..., :3] != 255).any(axis=-1))
    assert len(touched) == 25  # every tap of the 5x5 kernel, and nothing else
    (top, left), (bottom, right) = touched.min(axis=0), touched.max(axis=0)
    assert (bottom - top + 1, right - left + 1) == (span, span)
    assert (top + bottom) / 2 == 24 and (left + right) / 2 == 24  # centred on the pixel ("same")
    assert problems == []


@pytest.mark.parametrize(
    "stride, message",
    [
        ("2", "output height (49 + 2*0 - 1*(4-1) - 1)/2 + 1 = 23.5 is not a whole number"),
        ("0", "Input should be greater than or equal to 1, got 0"),
    ],
    ids=["not-whole", "zero"],
)
def test_a_refused_stride_shows_the_services_message_beside_the_field(page, stride, message):
    page_, _ = page
    page_.select_option("#ksize", "4")
    page_.fill("#stride", stride)
    page_.fill("#padding", "0")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-stride').textContent.length > 0")
    assert message in page_.inner_text("#error-stride")
    assert "invalid" in (page_.get_attribute("#stride", "class") or "")
    assert page_.inner_text("#error-general") == ""


def test_stride_2_works_on_the_samples_and_a_refusal_leaves_no_stale_results(page):
    page_, problems = page
    page_.fill("#stride", "2")
    page_.fill("#padding", "1")
    _convolve(page_)
    assert _array(page_, "window.playground.state.lastForward").shape == (1, 3, 25, 25)
    assert page_.inner_text("#error-stride") == ""
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    # A refused request: nothing of the last answer stays on screen.
    page_.select_option("#ksize", "4")
    page_.click("#run-forward")
    page_.wait_for_function("document.getElementById('error-stride').textContent.length > 0")
    assert 'or send rounding "floor"' in page_.inner_text("#error-stride")
    for stale in ("#arithmetic", "#forward-maps", "#backward-maps"):
        assert page_.locator(stale).is_hidden(), stale
    assert page_.evaluate("window.playground.state.lastForward") is None
    assert page_.evaluate("window.playground.state.lastBackward") is None
    # Floor rounding, as the refusal suggests, is answered.
    page_.select_option("#rounding", "floor")
    _convolve(page_)
    assert "floor((49 + 2*1 - 1*(4-1) - 1)/2) + 1 = 24" in page_.inner_text("#arithmetic")
    # The browser logs the refused request itself; nothing else went wrong.
    assert [p for p in problems if "status of 422" not in p] == []


def test_a_changed_control_clears_the_results_it_no_longer_matches(page):
    page_, _ = page
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    assert page_.locator("#forward-maps").is_visible()
    assert page_.locator("#backward-maps").is_visible()
    page_.select_option("#padding_mode", "reflect")
    for stale in ("#arithmetic", "#forward-maps", "#backward-maps"):
        assert page_.locator(stale).is_hidden(), stale
    # Edit a field, then click Backpropagate at once: the click lands (nothing moved) and
    # both passes run again with the new settings.
    page_.fill("#stride", "2")
    page_.fill("#padding", "1")
    page_.click("#run-backward")
    page_.wait_for_function("window.playground.state.lastBackward")
    assert _array(page_, "window.playground.state.lastForward").shape == (1, 3, 25, 25)
    assert page_.locator("#backward-maps").is_visible()
    # A new forward pass hides the gradients of the last one.
    page_.click("#run-forward")
    page_.wait_for_function(
        "getComputedStyle(document.getElementById('backward-maps')).visibility === 'hidden'"
    )


def test_per_side_padding_modes_and_floor_through_the_page(page):
    page_, problems = page
    page_.select_option("#sample", "letter")
    page_.fill("#stride", "2")
    page_.fill("#padding", "[[3,2],[1,0]]")
    page_.select_option("#padding_mode", "reflect")
    page_.select_option("#rounding", "floor")
    _convolve(page_)
    x = _array(page_, "window.playground.state.lastInput")
    w = _array(page_, "window.playground.state.lastWeights")
    hyper = dict(stride=2, padding=((3, 2), (1, 0)), padding_mode="reflect", rounding="floor")
    np.testing.assert_allclose(
        _array(page_, "window.playground.state.lastForward"), conv2d(x, w, **hyper), atol=1e-5
    )
    text = page_.inner_text("#arithmetic")
    assert "output height = floor((49 + 3+2 - 1*(3-1) - 1)/2) + 1 = 26" in text
    assert "padding holds the input, reflect" in text
    assert problems == []


def _png(width: int, height: int, rgb: np.ndarray) -> bytes:
    """A minimal PNG (8-bit RGB) of ``rgb`` (H, W, 3), made by hand: no imaging library needed."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\0" + rgb[i].astype(np.uint8).tobytes() for i in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_an_uploaded_image_is_convolved_in_rgb(page):
    page_, problems = page
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    rgb[:, 15:, 0] = 255  # right half red
    rgb[5:15, :, 2] = 255  # a blue band
    page_.select_option("#channels", "3")
    page_.select_option("#preset-0", "identity")
    # The upload's own pass, not one the controls started: the 49x49 sample's pass could still
    # be in flight and answer the wait (CI flaked so).
    page_.set_input_files(
        "#upload",
        files=[{"name": "bands.png", "mimeType": "image/png", "buffer": _png(30, 20, rgb)}],
    )
    page_.wait_for_function(
        "(() => { const s = window.playground.state;"
        " return s.lastForward && s.lastInput && s.lastInput.shape[2] === 20; })()"
    )
    page_.evaluate("() => window.playground.state.inflight")  # settled, drawn
    x = _array(page_, "window.playground.state.lastInput")
    assert x.shape == (1, 3, 20, 30)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), rgb / 255, atol=1 / 255)
    out = _array(page_, "window.playground.state.lastForward")
    # identity on every channel: the output is the sum of the three channels
    np.testing.assert_allclose(out[0, 0], x[0].sum(axis=0), rtol=1e-6)
    assert "x (N, C, H, W) = (1, 3, 20, 30)" in page_.inner_text("#arithmetic")
    assert problems == []


def test_api_docs_render_offline(browser, base_url):
    """Swagger UI from the package's own assets, in a browser that can reach nothing else."""
    docs = browser.new_page()
    failed: list[str] = []
    docs.on("requestfailed", lambda r: failed.append(r.url))
    docs.goto(base_url + "/docs")
    docs.wait_for_selector(".opblock-summary-path", timeout=20_000)
    paths = set(docs.locator(".opblock-summary-path").all_inner_texts())
    assert {"/forward", "/backward", "/v2/models/{name}/infer"} <= {p.strip() for p in paths}
    assert failed == []
    ARTIFACTS.mkdir(exist_ok=True)
    docs.screenshot(path=str(ARTIFACTS / "docs.png"))
    docs.close()
