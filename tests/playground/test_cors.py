"""A browser's CORS preflight, for real: pages on two other origins call the service."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..servers import Service, free_port, start_service

KEY = "cors-key-0123"
CALL = """async ([url, key]) => {
    try {
        const response = await fetch(url + "/forward", {
            method: "POST",
            headers: {"content-type": "application/json", "authorization": "Bearer " + key},
            body: JSON.stringify({x: [[[[1, 2]]]], w: [[[[3]]]]}),
        });
        return {status: response.status, body: await response.json(),
                replica: response.headers.get("x-replica")};
    } catch (error) {
        return {error: String(error)};
    }
}"""


class _Pages:
    """A plain static file server on 127.0.0.1: another origin for the browser."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None  # type: ignore[method-assign]
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def origins(tmp_path_factory) -> Iterator[tuple[Service, _Pages, _Pages]]:
    folder = tmp_path_factory.mktemp("cors")
    (folder / "index.html").write_text('<!doctype html><link rel="icon" href="data:,"><p>page')
    (folder / "keys").write_text(KEY + "\n")
    allowed, refused = _Pages(folder), _Pages(folder)
    service = start_service(
        folder, cors_origins=allowed.origin, api_keys_file=str(folder / "keys"), log_level="info"
    )
    try:
        service.wait_ready()
        yield service, allowed, refused
    finally:
        service.stop()
        allowed.close()
        refused.close()


def _call_from(browser, page_origin: str, service_url: str) -> dict:
    page = browser.new_page()
    try:
        page.goto(page_origin + "/index.html")
        return page.evaluate(CALL, [service_url, KEY])
    finally:
        page.close()


def test_an_allowed_origin_passes_the_preflight_and_reads_the_answer(browser, origins):
    service, allowed, _ = origins
    result = _call_from(browser, allowed.origin, service.url)
    assert result == {"status": 200, "body": {"out": [[[[3.0, 6.0]]]], "dtype": "float64"},
                      "replica": result["replica"]}  # fmt: skip
    assert result["replica"]  # an exposed header
    log = service.log()
    assert (
        '"method":"OPTIONS","route":"unmatched","operation":null,"path":"/forward","status":200'
        in log
    )


def test_a_refused_origin_fails_the_preflight_and_sends_nothing(browser, origins):
    service, _, refused = origins
    before = service.log().count('"method":"POST"')
    result = _call_from(browser, refused.origin, service.url)
    assert result == {"error": "TypeError: Failed to fetch"}
    assert (
        '"method":"OPTIONS","route":"unmatched","operation":null,"path":"/forward","status":400'
        in service.log()
    )
    assert service.log().count('"method":"POST"') == before  # the POST itself never came
