"""nginx follows its replicas' names: a replica recreated on a new address is used again, and a
replica added under the name is balanced to, without reloading nginx.

The deployment's own convengine.conf and upstreams.conf (``resolve``, nginx >= 1.27.3) run on
loopback, with dnsmasq as the DNS server in place of Docker's (only its address and the name
change), in front of replicas on 127.0.0.2, .3 and .4: addresses that a name can move between.
The replicas have API keys on, so this also shows keys and gzip bodies passing through nginx.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from ..servers import Service, free_port, start_service
from .recent_nginx import RESOLVE_SINCE, recent_nginx

ROOT = Path(__file__).resolve().parents[2]
NAME = "replicas.convengine.test"
KEY = "resolve-test-key-0123"
NGINX_CONF = """daemon off;
master_process on;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {work}/access.log;
    client_body_temp_path {work}/client_body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {root}/deploy/nginx/convengine.conf;
}}
"""


@dataclass
class Stage:
    work: Path
    port: int  # every replica's port; their addresses differ
    dns: subprocess.Popen[bytes]
    nginx: subprocess.Popen[bytes]
    url: str
    replicas: dict[str, Service] = field(default_factory=dict)

    def point_name_at(self, *addresses: str) -> None:
        """What Docker's DNS does when replicas come and go: new A records for the name."""
        (self.work / "hosts").write_text("".join(f"{a} {NAME}\n" for a in addresses))
        self.dns.send_signal(signal.SIGHUP)  # dnsmasq re-reads its hosts file, clears its cache

    def start_replica(self, name: str, address: str) -> Service:
        service = start_service(
            self.work,
            host=address,
            port=str(self.port),
            replica=name,
            log_level="warning",
            api_keys_file=str(self.work / "keys"),
        )
        service.log_path = service.log_path.rename(self.work / f"service-{name}.log")
        self.replicas[name] = service
        _wait(lambda: _ok(f"http://{address}:{self.port}/readyz"), f"replica {name}")
        return service


def _ok(url: str, **kwargs) -> bool:
    try:
        return httpx.get(url, timeout=2, **kwargs).status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.1)


def _upstreams(dns_port: int, port: int) -> str:
    """deploy/nginx/upstreams.conf with the loopback DNS server and name in place of Docker's."""
    text = (ROOT / "deploy/nginx/upstreams.conf").read_text()
    assert "resolver 127.0.0.11 valid=5s" in text and "server convengine:8000 resolve" in text
    return text.replace("127.0.0.11 valid=5s", f"127.0.0.1:{dns_port} valid=1s").replace(
        "convengine:8000", f"{NAME}:{port}"
    )


@pytest.fixture
def stage() -> Iterator[Stage]:
    dnsmasq = shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin")
    if dnsmasq is None:
        pytest.fail("dnsmasq is not installed: `make test` installs it (dnsmasq-base)")
    nginx = recent_nginx()
    work = Path(tempfile.mkdtemp(prefix="convengine-resolve-"))
    work.chmod(0o755)  # nginx's workers and dnsmasq run unprivileged
    (work / "keys").write_text(KEY + "\n")
    (work / "hosts").write_text(f"127.0.0.2 {NAME}\n")
    dns_port, port, lb_port = free_port(), free_port(), free_port()
    dns = subprocess.Popen(
        [dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
         "--listen-address=127.0.0.1", f"--port={dns_port}", f"--addn-hosts={work / 'hosts'}",
         "--pid-file=", f"--log-facility={work / 'dnsmasq.log'}", "--log-queries"],
    )  # fmt: skip
    (work / "upstreams.conf").write_text(_upstreams(dns_port, port))
    (work / "listen.conf").write_text(f"listen 127.0.0.1:{lb_port};\n")
    (work / "nginx.conf").write_text(NGINX_CONF.format(work=work, root=ROOT))
    stage = Stage(work, port, dns, None, f"http://127.0.0.1:{lb_port}")  # type: ignore[arg-type]
    try:
        stage.start_replica("a", "127.0.0.2")
        stage.nginx = subprocess.Popen([nginx, "-p", str(work), "-c", str(work / "nginx.conf")])
        _wait(lambda: _ok(f"{stage.url}/healthz"), "nginx")
        yield stage
    finally:
        if stage.nginx is not None:
            stage.nginx.send_signal(signal.SIGQUIT)
            stage.nginx.wait(timeout=30)
        dns.terminate()
        dns.wait(timeout=10)
        for replica in stage.replicas.values():
            replica.stop()
        shutil.rmtree(work, ignore_errors=True)


def _replicas_answering(url: str, count: int) -> Counter[str]:
    answered: Counter[str] = Counter()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(count):
            response = client.get("/healthz")
            answered[response.headers.get("x-replica", str(response.status_code))] += 1
    return answered


def _forward(url: str, **headers: str) -> httpx.Response:
    body = gzip.compress(json.dumps({"x": [[[[1.0, 2.0]]]], "w": [[[[3.0]]]]}).encode())
    headers = {"content-type": "application/json", "content-encoding": "gzip", **headers}
    return httpx.post(f"{url}/forward", content=body, headers=headers, timeout=10)


def test_a_replica_recreated_on_a_new_address_is_used_again(stage):
    assert _replicas_answering(stage.url, 5) == {"a": 5}
    master = stage.nginx.pid
    stage.replicas.pop("a").stop()  # the container is gone ...
    stage.start_replica("a2", "127.0.0.3")  # ... and recreated with a new address
    time.sleep(1.5)  # past `valid=1s`: nginx asks again, and still hears the old address
    assert _replicas_answering(stage.url, 2) == {"502": 2}  # the name, not luck, moves it
    stage.point_name_at("127.0.0.3")
    _wait(lambda: _replicas_answering(stage.url, 1) == {"a2": 1}, "nginx following the name", 15)
    assert _replicas_answering(stage.url, 20) == {"a2": 20}
    assert stage.nginx.poll() is None and stage.nginx.pid == master  # never restarted
    reloads = (stage.work / "error.log").read_text().count("reconfiguring")
    assert reloads == 0  # nor reloaded (SIGHUP)
    queries = (stage.work / "dnsmasq.log").read_text()
    assert f"query[A] {NAME}" in queries and "127.0.0.3" in queries


def test_a_replica_added_under_the_name_is_balanced_to(stage):
    stage.start_replica("b", "127.0.0.4")
    stage.point_name_at("127.0.0.2", "127.0.0.4")
    _wait(lambda: set(_replicas_answering(stage.url, 4)) == {"a", "b"}, "balancing to b", 15)
    stage.point_name_at("127.0.0.4")  # a leaves the name: scaled down
    _wait(lambda: _replicas_answering(stage.url, 4) == {"b": 4}, "dropping a", 15)


def test_keys_and_gzip_bodies_pass_through_nginx(stage):
    refused = _forward(stage.url)
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"] == 'Bearer realm="convengine"'
    assert refused.headers["x-replica"] == "a"  # the replica answered, not nginx
    for headers in ({"authorization": f"Bearer {KEY}"}, {"x-api-key": KEY}):
        answer = _forward(stage.url, **headers)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"out": [[[[3.0, 6.0]]]], "dtype": "float64"}
    log = (stage.work / "access.log").read_text() + (stage.work / "service-a.log").read_text()
    assert KEY not in log


def test_compose_pins_an_nginx_that_re_resolves():
    image = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["lb"]["image"]
    found = re.fullmatch(r"nginx:(\d+)\.(\d+)\.(\d+)(-alpine)?", image)
    assert found, f"{image}: pin an exact nginx version"
    assert tuple(int(part) for part in found.groups()[:3]) >= RESOLVE_SINCE
