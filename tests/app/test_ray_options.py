"""The Ray Serve deployment's settings, without Ray: what each replica is told (tests/ray runs
them on a real cluster)."""

from __future__ import annotations

import pydantic
import pytest

from app.allocator import HUGE_PAGES
from app.config import MiB, budget_within
from app.ray_serve import ROOT, RayOptions, replica_environment, replica_settings


def test_options_come_from_the_environment(monkeypatch):
    monkeypatch.delenv("CONVENGINE_RAY_MAX_REPLICAS", raising=False)
    monkeypatch.setenv("CONVENGINE_RAY_MIN_REPLICAS", "1")
    monkeypatch.setenv("CONVENGINE_RAY_CPUS_PER_REPLICA", "2.5")
    options = RayOptions()
    assert (options.min_replicas, options.max_replicas, options.slots()) == (1, 4, 2)


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"min_replicas": 3, "max_replicas": 2}, "max_replicas 2 is below min_replicas 3"),
        ({"memory_per_replica_mb": 256}, "greater than or equal to 768"),
        ({"cpus_per_replica": 0}, "greater than 0"),
    ],
)
def test_options_that_cannot_deploy_are_refused_by_name(fields, refusal):
    with pytest.raises(pydantic.ValidationError, match=refusal):
        RayOptions(**fields)


def test_a_replica_s_limits_are_its_ray_resources_and_the_rest_the_environment_s(monkeypatch):
    monkeypatch.setenv("CONVENGINE_MAX_BODY_BYTES", str(4 * MiB))
    monkeypatch.setenv("CONVENGINE_MEMORY_BUDGET_MB", "9999")  # Ray's resources win
    options = RayOptions(cpus_per_replica=2, memory_per_replica_mb=2048)
    settings = replica_settings(options, "convengine#abc@0123abcd")
    assert settings.replica == "convengine#abc@0123abcd"
    assert settings.max_concurrent == 2
    assert settings.memory_budget() == budget_within(2048 * MiB, 2) == (2048 - 256 - 320) * MiB
    assert settings.max_body_bytes == 4 * MiB


def test_the_replicas_get_the_service_s_settings_and_threads_and_nothing_else():
    environ = {
        "CONVENGINE_API_KEYS_FILE": "/etc/keys",
        "OPENBLAS_CORETYPE": "Haswell",
        "HOME": "/root",
        "AWS_SECRET_ACCESS_KEY": "not for the replicas",
        "PYTHONPATH": "/opt/extra",
    }
    passed = replica_environment(RayOptions(cpus_per_replica=2), environ)
    assert passed == {
        "CONVENGINE_API_KEYS_FILE": "/etc/keys",
        "OPENBLAS_CORETYPE": "Haswell",
        "OPENBLAS_NUM_THREADS": "2",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "PYTHONPATH": f"{ROOT}:/opt/extra",
        "GLIBC_TUNABLES": f"{HUGE_PAGES}=1",  # as python -m app runs
    }
    operator_off = {**environ, "GLIBC_TUNABLES": f"{HUGE_PAGES}=0"}
    passed = replica_environment(RayOptions(cpus_per_replica=2), operator_off)
    assert passed["GLIBC_TUNABLES"] == f"{HUGE_PAGES}=0"
