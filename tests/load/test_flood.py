"""Slow and hostile clients against a real uvicorn, as the Kubernetes manifests run it (no proxy):
1,200 connections that never finish their header block, 50 uploads that stall after a few
bytes and 4 clients that never read their answers, while a normal client's requests and
/healthz keep succeeding. Each kind is then bounded in time: the header timeout closes the
floods, the body timeout answers the stalled uploads 408, the send timeout drops the unread
answers.

Figures are printed: run with -s to see them.
"""

from __future__ import annotations

import io
import resource
import socket
import threading
import time

import httpx
import numpy as np
import psutil

from ..servers import start_service

FLOOD = 1200
STALLED = 50
UNREAD = 4
HEADER_TIMEOUT = 4
BODY_TIMEOUT = 6
SEND_TIMEOUT = 3
MAX_PENDING = 256


def _npz(**arrays: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.savez(stream, **arrays)
    return stream.getvalue()


def _open(port: int, data: bytes, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer:  # before connecting, so that the window stays this small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(data)
    return sock


def _closed_by_server(sock: socket.socket, wait: float) -> bool:
    """Whether the server closed ``sock`` (EOF or reset) within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_slow_clients_cannot_starve_the_rest(tmp_path):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    service = start_service(
        tmp_path,
        log_level="warning",
        header_timeout=str(HEADER_TIMEOUT),
        body_timeout=str(BODY_TIMEOUT),
        send_timeout=str(SEND_TIMEOUT),
        max_pending_headers=str(MAX_PENDING),
    )
    sockets: list[socket.socket] = []
    try:
        service.wait_ready()
        process = psutil.Process(service.process.pid)
        port = service.port
        started = time.monotonic()
        floods = [
            _open(port, b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: ") for _ in range(FLOOD)
        ]
        stalled = [
            _open(
                port,
                b"POST /forward HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npz\r\n"
                b"Content-Length: 1000000\r\n\r\nPK\x03\x04",
            )
            for _ in range(STALLED)
        ]
        x = np.ones((4, 4, 512, 512), np.float32)
        big = _npz(x=x, w=np.ones((8, 4, 1, 1), np.float32))
        head = (
            "POST /forward HTTP/1.1\r\nHost: t\r\nContent-Type: application/x-npz\r\n"
            f"Accept: application/x-npz\r\nContent-Length: {len(big)}\r\n\r\n"
        ).encode()
        # A small receive window, so that the answer backs up into the server.
        unread = [_open(port, head + big, receive_buffer=4096) for _ in range(UNREAD)]
        sockets += floods + stalled + unread
        opened = time.monotonic() - started

        statuses: dict[str, list[int]] = {"healthz": [], "forward": [], "readyz": []}
        latencies: list[float] = []
        open_files: list[int] = []
        stop = threading.Event()

        def normal_client() -> None:
            with httpx.Client(base_url=service.url, timeout=10) as client:
                while not stop.is_set():
                    begin = time.monotonic()
                    statuses["healthz"].append(client.get("/healthz").status_code)
                    latencies.append(time.monotonic() - begin)
                    body = {"x": [[[[1.0, 2.0], [3.0, 4.0]]]], "w": [[[[2.0]]]]}
                    statuses["forward"].append(client.post("/forward", json=body).status_code)
                    statuses["readyz"].append(client.get("/readyz").status_code)
                    open_files.append(process.num_fds())
                    time.sleep(0.05)

        worker = threading.Thread(target=normal_client)
        worker.start()
        try:
            # The floods are closed by the header timeout (or evicted sooner), all of them.
            flood_closed = sum(_closed_by_server(s, HEADER_TIMEOUT + 3) for s in floods)
            flood_time = time.monotonic() - started
            # The stalled uploads are answered 408 once the body timeout has passed.
            answers = []
            for sock in stalled:
                sock.settimeout(max(0.5, BODY_TIMEOUT + 4 - (time.monotonic() - started)))
                try:
                    answers.append(sock.recv(4096).split(b"\r\n")[0])
                except (TimeoutError, ConnectionResetError):
                    answers.append(b"")
            stalled_time = time.monotonic() - started
            # The unread answers are dropped with their connections by the send timeout.
            time.sleep(SEND_TIMEOUT + 1)
            unread_closed = sum(_closed_by_server(s, 5) for s in unread)
        finally:
            stop.set()
            worker.join()

        print(
            f"\nflood: {FLOOD} unfinished header blocks, {STALLED} stalled uploads and {UNREAD} "
            f"unread answers opened in {opened:.1f} s; floods closed {flood_closed}/{FLOOD} by "
            f"{flood_time:.1f} s; stalled uploads answered {set(answers)} by {stalled_time:.1f} s; "
            f"unread answers dropped {unread_closed}/{UNREAD}; normal client: "
            f"{len(statuses['healthz'])} rounds, /healthz {set(statuses['healthz'])} (slowest "
            f"{max(latencies) * 1000:.0f} ms), /forward {set(statuses['forward'])}, /readyz "
            f"{set(statuses['readyz'])}; service's open files at most {max(open_files)}"
        )
        assert flood_closed == FLOOD
        assert flood_time < HEADER_TIMEOUT + 5
        assert set(answers) == {b"HTTP/1.1 408 Request Timeout"}, answers
        assert unread_closed == UNREAD
        assert len(statuses["healthz"]) >= 20
        assert set(statuses["healthz"]) == {200} and set(statuses["forward"]) == {200}
        assert set(statuses["readyz"]) == {200}
        assert max(open_files) < MAX_PENDING + STALLED + UNREAD + 64
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        service.stop()


def test_beyond_the_connection_limit_the_answer_is_a_json_503(tmp_path):
    service = start_service(tmp_path, log_level="warning", max_connections="20")
    sockets: list[socket.socket] = []
    try:
        service.wait_ready()
        sockets = [_open(service.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n") for _ in range(25)]
        time.sleep(0.2)
        response = httpx.get(f"{service.url}/healthz", headers={"x-request-id": "full-1"})
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-request-id"] == "full-1"
        assert "all 20 connections" in response.json()["detail"][0]["msg"]
        for sock in sockets:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{service.url}/healthz").status_code == 200
    finally:
        for sock in sockets:
            sock.close()
        service.stop()
