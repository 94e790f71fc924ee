"""State that behaves: presets that survive a kernel size change, labels shown only where they
apply, and the settings in the URL (shared, reloaded)."""

from __future__ import annotations

import numpy as np
from playwright.sync_api import Page

from .test_access import _switch
from .test_page import _array, _convolve

SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]


def _kernel(page: Page, f: int) -> np.ndarray:
    values = page.evaluate(f"window.playground.state.filters[{f}].values")
    cells = [
        float(v) for v in page.locator(f"[id^='k-{f}-']").evaluate_all("es => es.map(e => e.value)")
    ]
    np.testing.assert_allclose(np.array(values).ravel(), cells, atol=1e-3)  # shown as held
    return np.array(values)


def test_presets_come_back_when_the_size_they_exist_at_does(page):
    page_, problems = page
    np.testing.assert_array_equal(_kernel(page_, 0), SOBEL_X)
    page_.select_option("#ksize", "5")
    # Sobel has no 5x5 form: the identity stands in, and the page says why.
    assert page_.input_value("#preset-0") == "identity"
    assert page_.inner_text("#preset-note-0") == "sobel x needs kernel size 3: identity until then"
    identity = np.zeros((5, 5))
    identity[2, 2] = 1
    np.testing.assert_array_equal(_kernel(page_, 0), identity)
    # The Gaussian exists at every size: 5x5, normalised.
    gauss = _kernel(page_, 2)
    assert gauss.shape == (5, 5) and abs(gauss.sum() - 1) < 1e-6
    assert page_.input_value("#preset-2") == "gaussian"
    _convolve(page_)
    assert _array(page_, "window.playground.state.lastWeights").shape == (3, 1, 5, 5)
    assert page_.inner_text("#outputs figcaption >> nth=0") == "out[0, 0] (identity)"
    page_.select_option("#ksize", "7")
    page_.select_option("#ksize", "3")
    # Back at 3: Sobel x and y again, no note.
    assert page_.input_value("#preset-0") == "sobel x"
    assert page_.input_value("#preset-1") == "sobel y"
    np.testing.assert_array_equal(_kernel(page_, 0), SOBEL_X)
    assert page_.locator("#preset-note-0").count() == 0
    # The presets that exist only at 3 say so in the list at other sizes.
    page_.select_option("#ksize", "5")
    options = page_.locator("#preset-1 option").all_inner_texts()
    assert "sobel y (size 3 only)" in options and "gaussian" in options
    # Picking one sets the size it needs.
    page_.select_option("#preset-2", "laplacian")
    assert page_.input_value("#ksize") == "3"
    assert page_.input_value("#preset-0") == "sobel x"
    assert problems == []


def test_typed_numbers_are_kept_centred_over_a_size_change(page):
    page_, _ = page
    page_.fill("#k-2-0-0", "7")
    page_.dispatch_event("#k-2-0-0", "change")
    assert page_.input_value("#preset-2") == "custom"
    page_.select_option("#ksize", "5")
    grown = _kernel(page_, 2)
    assert grown[1, 1] == 7 and grown[0].tolist() == [0] * 5 and grown[2, 2] > 0.2
    page_.select_option("#ksize", "3")
    assert _kernel(page_, 2)[0, 0] == 7


def test_labels_and_controls_that_do_not_apply_are_hidden(page):
    page_, _ = page
    assert page_.locator("#loss-pixel").is_visible()
    assert page_.inner_text("#loss-pixel") == "pixel (24, 24) of map 0"
    page_.select_option("#loss", "sumsq")
    assert page_.locator("#loss-pixel").is_hidden()
    page_.select_option("#loss", "pixel")
    assert page_.locator("#loss-pixel").is_visible()
    hidden_in = {
        "conv2d": ["#output_padding", "#position", "#play", "#source-row"],
        "transposed": ["#padding_mode", "#rounding", "#position"],
        "conv1d": ["#output_padding", "#channels", "#upload", "#pixel-row", "#source-row"],
    }
    shown_in = {
        "conv2d": ["#padding_mode", "#rounding", "#pixel-row", "#channels"],
        "transposed": ["#output_padding", "#source-row", "#pixel-row"],
        "conv1d": ["#position", "#play", "#padding_mode"],
    }
    for mode in ("conv2d", "transposed", "conv1d"):
        if mode != "conv2d":
            _switch(page_, mode)
        for selector in hidden_in[mode]:
            assert page_.locator(selector).is_hidden(), (mode, selector)
        for selector in shown_in[mode]:
            assert page_.locator(selector).is_visible(), (mode, selector)
    assert page_.inner_text("#loss-pixel") == "position 32 of map 0"


def _controls(page: Page) -> dict[str, str]:
    ids = [
        "mode",
        "sample",
        "channels",
        "ksize",
        "stride",
        "padding",
        "output_padding",
        "padding_mode",
        "dilation",
        "groups",
        "rounding",
        "loss",
        "loss-map",
    ]
    return {i: page.input_value(f"#{i}") for i in ids}


def _open(browser, url: str) -> Page:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(url)
    page.wait_for_function("window.playground && window.playground.state.lastForward")
    return page


def test_the_url_holds_the_settings_and_a_new_tab_shows_the_same(page, browser):
    page_, problems = page
    page_.select_option("#sample", "letter")
    page_.select_option("#channels", "3")
    page_.select_option("#ksize", "5")
    page_.select_option("#preset-1", "box blur")
    page_.fill("#k-2-1-3", "-2.5")
    page_.dispatch_event("#k-2-1-3", "change")
    page_.fill("#stride", "2")
    page_.fill("#padding", "[[2,2],[1,3]]")
    page_.select_option("#padding_mode", "reflect")
    page_.select_option("#rounding", "floor")
    _convolve(page_)
    page_.fill("#pixel-row", "7")
    page_.dispatch_event("#pixel-row", "change")
    page_.select_option("#loss-map", "2")
    page_.dispatch_event("#loss-map", "change")
    page_.select_option("#loss", "sumsq")
    url = page_.url
    assert "padding_mode=reflect" in url and "ksize=5" in url
    settings, label = _controls(page_), page_.inner_text("#loss-pixel")
    weights = _array(page_, "window.playground.state.lastWeights")
    out = _array(page_, "window.playground.state.lastForward")

    other = _open(browser, url)
    try:
        assert _controls(other) == settings
        assert other.input_value("#preset-1") == "box blur"
        assert other.input_value("#preset-2") == "custom"
        assert other.input_value("#k-2-1-3") == "-2.5"
        np.testing.assert_array_equal(_array(other, "window.playground.state.lastWeights"), weights)
        np.testing.assert_array_equal(_array(other, "window.playground.state.lastForward"), out)
        assert other.input_value("#pixel-row") == "7"
        other.select_option("#loss", "pixel")
        assert other.inner_text("#loss-pixel") == label
        # A reload restores the same view too.
        other.reload()
        other.wait_for_function("window.playground && window.playground.state.lastForward")
        assert _controls(other)["padding"] == "[[2,2],[1,3]]"
        np.testing.assert_array_equal(_array(other, "window.playground.state.lastForward"), out)
    finally:
        other.close()
    assert problems == []


def test_a_transposed_and_a_one_d_view_are_shared_too(page, browser):
    page_, _ = page
    _switch(page_, "transposed")
    page_.fill("#source-col", "3")
    page_.dispatch_event("#source-col", "change")
    other = _open(browser, page_.url)
    try:
        assert other.input_value("#mode") == "transposed"
        assert other.input_value("#output_padding") == "1"
        assert other.input_value("#source-col") == "3"
        np.testing.assert_array_equal(
            _array(other, "window.playground.state.lastForward"),
            _array(page_, "window.playground.state.lastForward"),
        )
    finally:
        other.close()
    _switch(page_, "conv1d")
    page_.select_option("#sample", "chirp")
    page_.wait_for_function("window.playground.state.lastForward")
    page_.focus("#position")
    page_.keyboard.press("End")
    other = _open(browser, page_.url)
    try:
        assert other.input_value("#mode") == "conv1d"
        assert other.input_value("#sample") == "chirp"
        assert other.input_value("#position") == "63"
        assert other.input_value("#preset-2") == "second difference"
    finally:
        other.close()


def test_a_url_with_nonsense_falls_back_to_what_it_can(browser, base_url):
    page = _open(browser, base_url + "/?mode=warp&ksize=99&filters=sobel%20x;1,2;nope&sample=zzz")
    try:
        assert page.input_value("#mode") == "conv2d"
        assert page.input_value("#ksize") == "3"
        assert page.input_value("#preset-0") == "sobel x"
        assert page.input_value("#preset-1") == "identity"
        assert page.locator(".filter").count() == 3
    finally:
        page.close()


def test_a_late_answer_to_an_older_pass_is_not_drawn(page):
    """Two passes in flight, the first answered last: the page shows the second."""
    page_, problems = page
    page_.evaluate(
        """() => {
            const real = window.fetch; let first = true;
            window.fetch = async (url, options) => {
                const response = await real(url, options);
                if (url === "/forward" && first) {
                    first = false; await new Promise((r) => setTimeout(r, 800));
                }
                return response;
            };
        }"""
    )
    page_.fill("#stride", "2")
    page_.fill("#padding", "1")
    page_.evaluate("window.playground.state.lastForward = null")
    page_.click("#run-forward")  # stride 2: answered late
    page_.fill("#stride", "1")
    page_.click("#run-forward")  # stride 1
    page_.wait_for_function("window.playground.state.lastForward")
    page_.wait_for_timeout(1200)  # the late answer has come and gone
    assert _array(page_, "window.playground.state.lastForward").shape == (1, 3, 49, 49)
    assert "= (1, 3, 49, 49)" in page_.inner_text("#arithmetic")
    assert page_.evaluate("window.playground.state.lastHyper.stride") == 1
    assert problems == []
