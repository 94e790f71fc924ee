"""Swagger UI's "Try it out" in Chromium (the offline /docs page) answers 200 for every
operation and every payload form, with the document's examples: each JSON example as it
is, the multipart form as it comes pre-filled (the example's arrays chosen as .npy files,
an optional array left empty) and an .npz upload with the example's hyperparameters."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from playwright.sync_api import Locator, Page

from app.main import create_app
from convengine import OPERATIONS

DOCUMENT = create_app().openapi()


def _file(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "mimeType": "application/octet-stream", "buffer": data}


def _npy(value: Any) -> bytes:
    stream = io.BytesIO()
    np.save(stream, np.asarray(value, np.float32))
    return stream.getvalue()


def _npz(arrays: dict[str, Any]) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **{name: np.asarray(v, np.float32) for name, v in arrays.items()})
    return stream.getvalue()


def _open(page: Page, base_url: str, operation_id: str) -> Locator:
    page.goto(base_url + "/docs")
    block = page.locator(f"#operations-convolution-{operation_id}")
    block.locator(".opblock-summary").click()
    block.locator("button.try-out__btn").click()
    return block


def _execute(page: Page, block: Locator) -> tuple[int, str]:
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        block.locator("button.execute").click()
    response = answer.value
    shown = block.locator(".live-responses-table tbody .response-col_status").first
    assert shown.inner_text().strip() == str(response.status)  # what the page shows
    return response.status, response.text()[:500]


def _form(block: Locator, media_type: str) -> Locator:
    block.locator(".opblock-section-request-body select.content-type").select_option(media_type)
    return block.locator(".opblock-section-request-body")


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_try_it_out_answers_200_for_every_payload_form(browser, base_url, name):
    operation = OPERATIONS[name]
    entry = DOCUMENT["paths"][operation.path]["post"]
    examples = entry["requestBody"]["content"]["application/json"]["examples"]
    example = next(iter(examples.values()))["value"]
    arrays = {k: v for k, v in example.items() if k in operation.inputs}
    hyper = {k: str(v) for k, v in example.items() if k not in operation.inputs}
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        block = _open(page, base_url, name)
        for title in examples:  # JSON: each example, as the page fills it in
            block.locator(".opblock-section-request-body select").nth(1).select_option(title)
            status, text = _execute(page, block)
            assert status == 200, (title, text)

        form = _form(block, "multipart/form-data")
        for field in operation.inputs:
            row = form.locator(f'tr[data-property-name="{field}"]')
            if field in arrays:  # an optional array not in the example stays empty
                row.locator("input[type=file]").set_input_files(
                    _file(f"{field}.npy", _npy(arrays[field]))
                )
        for field, value in hyper.items():
            text_box = form.locator(f'tr[data-property-name="{field}"] input[type=text]')
            assert text_box.input_value() == value  # pre-filled with the example
        for field in operation.hyperparameters - hyper.keys():
            text_box = form.locator(f'tr[data-property-name="{field}"] input[type=text]')
            assert text_box.input_value() not in ("", "string"), field
        status, text = _execute(page, block)
        assert status == 200, ("multipart", text)

        form = _form(block, "application/x-npz")
        form.locator("input[type=file]").set_input_files(_file("in.npz", _npz(arrays)))
        for field, value in hyper.items():
            block.locator(f'tr[data-param-name="{field}"] input').fill(value)
        status, text = _execute(page, block)
        assert status == 200, ("npz", text)
    finally:
        page.close()
