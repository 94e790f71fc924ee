"""The service on Ray Serve: the same ASGI app, one per replica, replicas as Ray actors placed
over the nodes of a cluster, autoscaled on their ongoing requests, one HTTP proxy per node.

``application(options)`` is the Serve application (``serve.run(application(...))``); the
replicas build their app on start (``serve.ingress()`` late-bound), so that each names itself
after its Ray replica and sizes its limits from the Ray resources it holds:

- ``X-Replica``, the access log and the ``convengine_replica_info`` metric say
  ``<deployment>#<replica id>@<node id, 8 hex digits>``;
- computation slots (``max_concurrent``) are the replica's CPUs, and its memory budget is its
  Ray ``memory`` less the process's baseline and the engine's kept buffers, as a container's
  limit is otherwise (:func:`app.config.budget_within`);
- every other ``CONVENGINE_*`` setting (keys file, limits, CORS) is the driver's, passed to the
  replicas' environment.

Ray's proxies speak HTTP only: the inference protocol's gRPC port (``python -m app``) is not
served here; the REST protocol (``/v2``) is.

``python -m app.ray_serve start`` starts a local cluster of two nodes on this machine (``ray
start`` twice) and deploys; ``deploy`` redeploys on it with the environment's options; ``stop``
stops every Ray process of this machine (``ray stop --force``). ``make serve-ray`` and ``make
stop-ray`` run them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.allocator import TUNABLES, huge_pages_environment
from app.config import MiB, Settings, budget_within

__all__ = ["RayOptions", "application", "deploy", "main", "replica_settings", "wait_ready"]

ROOT = Path(__file__).resolve().parents[1]  # the checkout (or the image's /app) holding app/
APP_NAME = "convengine"
_PASSED_ON = ("CONVENGINE_", "OPENBLAS_", "OMP_", "MKL_")  # to the replicas' environment


class RayOptions(BaseSettings):
    """How the service runs on Ray Serve; each is ``CONVENGINE_RAY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="CONVENGINE_RAY_", extra="ignore")

    min_replicas: int = Field(2, ge=1, description="replicas when idle")
    max_replicas: int = Field(4, ge=1, description="replicas under load at most")
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="ongoing requests per replica the autoscaler aims at"
    )
    max_ongoing_requests: int = Field(
        8, ge=1, description="requests a replica is sent at once; the proxies queue the rest"
    )
    upscale_delay_s: float = Field(3.0, ge=0, description="seconds of load before adding one")
    downscale_delay_s: float = Field(
        30.0, ge=0, description="seconds of little load before removing one"
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="replicas one node may hold; unset: Ray spreads them as it can"
    )
    cpus_per_replica: float = Field(
        1.0, gt=0, description="Ray CPUs per replica: its computation slots (at least 1)"
    )
    memory_per_replica_mb: int = Field(
        1024, ge=768, description="Ray memory per replica in MiB: its budget less the baseline"
    )
    # The local cluster of `start` (make serve-ray).
    node_cpus: int = Field(2, ge=1, description="logical CPUs each of the two local nodes offers")
    gcs_port: int = Field(6379, ge=1, le=65535, description="the head node's GCS port")
    worker_port: int | None = Field(
        None, ge=1, le=65535, description="HTTP port of the second node's proxy (port + 100)"
    )

    @model_validator(mode="after")
    def _replicas_in_order(self) -> RayOptions:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas {self.max_replicas} is below min_replicas {self.min_replicas}"
            )
        return self

    def slots(self) -> int:
        """Computation slots of one replica: its whole CPUs, at least one."""
        return max(1, int(self.cpus_per_replica))


def replica_settings(options: RayOptions, replica: str) -> Settings:
    """The service's settings in one replica: the environment's, named ``replica``, with its
    computation slots and memory budget from the Ray resources the replica holds."""
    budget = budget_within(options.memory_per_replica_mb * MiB, options.slots())
    return Settings(replica=replica, max_concurrent=options.slots(), memory_budget_mb=budget // MiB)


def _replica_name() -> str:
    import ray
    from ray import serve

    context = serve.get_replica_context()
    node = ray.get_runtime_context().get_node_id()
    return f"{context.deployment}#{context.replica_tag}@{node[:8]}"


def _deployment_class() -> type:
    from ray import serve

    @serve.ingress()
    class Convengine:
        """One replica: the service's ASGI app, built on the replica when it starts."""

        def __init__(self, options: dict[str, Any]) -> None:
            self.options = RayOptions.model_validate(options)

        def __serve_build_asgi_app__(self) -> Any:
            from app.limits.memory import keep_heap_small
            from app.main import create_app

            keep_heap_small()  # freed arrays go back to the system, as under python -m app
            return create_app(replica_settings(self.options, _replica_name()))

    return Convengine


def replica_environment(options: RayOptions, environ: dict[str, str]) -> dict[str, str]:
    """The replicas' environment: the service's settings and thread counts from ``environ``,
    BLAS held to the replica's slots, glibc's malloc on huge pages (app.allocator), and this
    checkout importable."""
    passed = {key: value for key, value in environ.items() if key.startswith(_PASSED_ON)}
    threads = str(options.slots())
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        passed.setdefault(name, threads)
    passed["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), environ.get("PYTHONPATH")]))
    # Large blocks on huge pages, as under python -m app: a worker process reads it at start.
    tunables = huge_pages_environment(environ) or environ
    if TUNABLES in tunables:
        passed[TUNABLES] = tunables[TUNABLES]
    return passed


def application(options: RayOptions, environ: dict[str, str] | None = None) -> Any:
    """The Serve application: the service's deployment with ``options``."""
    from ray import serve

    environ = dict(os.environ if environ is None else environ)
    settings = Settings()  # the driver's, checked here before any replica reads them
    per_node = options.max_replicas_per_node
    spread = {"max_replicas_per_node": per_node} if per_node else {}  # Serve's default: unset
    deployment = serve.deployment(
        _deployment_class(),
        name=APP_NAME,
        ray_actor_options={
            "num_cpus": options.cpus_per_replica,
            "memory": options.memory_per_replica_mb * MiB,
            "runtime_env": {"env_vars": replica_environment(options, environ)},
        },
        max_ongoing_requests=options.max_ongoing_requests,
        **spread,
        autoscaling_config={
            "min_replicas": options.min_replicas,
            "initial_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
            "upscale_delay_s": options.upscale_delay_s,
            "downscale_delay_s": options.downscale_delay_s,
            "metrics_interval_s": 1.0,
            "look_back_period_s": 3.0,
        },
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
        health_check_period_s=2.0,
    )
    return deployment.bind(options.model_dump())


def _ray(*arguments: str, env: dict[str, str], timeout: float = 180) -> None:
    """One ``ray`` command of this interpreter's Ray, its output shown on failure."""
    ray = str(Path(sys.executable).with_name("ray"))
    done = subprocess.run(
        [ray, *arguments], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"ray {' '.join(arguments)} failed:\n{done.stdout}{done.stderr}")


def _cluster_environment() -> dict[str, str]:
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def start_cluster(options: RayOptions, settings: Settings) -> None:
    """Two Ray nodes on this machine: the head (GCS on ``gcs_port``, its proxy on the service's
    port) and a worker (its proxy on ``worker_port``). No dashboard: it costs a CPU's share."""
    env = _cluster_environment()
    common = ["--node-ip-address=127.0.0.1", f"--num-cpus={options.node_cpus}"]
    common += ["--disable-usage-stats"]
    head = ["--head", f"--port={options.gcs_port}", "--include-dashboard=false"]
    _ray("start", *head, *common, env=env)
    worker_env = dict(env, RAY_SERVE_WORKER_PROXY_HTTP_PORT=str(worker_port(options, settings)))
    _ray("start", f"--address=127.0.0.1:{options.gcs_port}", *common, env=worker_env)


def worker_port(options: RayOptions, settings: Settings) -> int:
    return options.worker_port or settings.port + 100


def deploy(options: RayOptions, settings: Settings, timeout: float = 300) -> list[str]:
    """Serve the application on the running cluster, a proxy on every node; the proxies' URLs
    once each answers ``/readyz``."""
    import ray
    from ray import serve

    ray.init(address=f"127.0.0.1:{options.gcs_port}", log_to_driver=False)
    try:
        serve.start(
            http_options={"host": settings.host, "port": settings.port, "location": "EveryNode"}
        )
        serve.run(application(options), name=APP_NAME, route_prefix="/", blocking=False)
    finally:
        ray.shutdown()
    ports = (settings.port, worker_port(options, settings))
    urls = [f"http://{settings.host}:{port}" for port in ports]
    for url in urls:
        wait_ready(url, timeout)
    return urls


def wait_ready(url: str, timeout: float) -> None:
    """Until ``url`` answers /readyz with 200; SystemExit after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer /readyz within {timeout:.0f} s")
        time.sleep(0.5)


def stop_cluster() -> None:
    """Every Ray process of this machine stopped (``ray stop --force``: SIGKILL at once)."""
    _ray("stop", "--force", env=_cluster_environment())


def main(argv: list[str] | None = None) -> None:
    cli = argparse.ArgumentParser(
        prog="python -m app.ray_serve",
        description="convengine on Ray Serve: settings from CONVENGINE_* and CONVENGINE_RAY_*",
    )
    cli.add_argument("command", choices=("start", "deploy", "stop"))
    command = cli.parse_args(argv).command
    if command == "stop":
        stop_cluster()
        return
    options, settings = RayOptions(), Settings()
    if command == "start":
        start_cluster(options, settings)
    urls = deploy(options, settings)
    print(f"convengine on Ray Serve, a proxy per node: {' '.join(urls)}", flush=True)


if __name__ == "__main__":
    main()
