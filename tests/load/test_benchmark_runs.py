"""The benchmarks themselves run: `python -m benchmarks.service --quick` (small shapes),
`python -m benchmarks.engine` on one small shape, `python -m benchmarks.compression` for one
round, `python -m benchmarks.client` briefly and `python -m benchmarks.transports` (few
calls)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from ..servers import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_service_benchmark_smoke_run(tmp_path):
    out = tmp_path / "report.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.service",
            "--quick",
            "--port",
            str(free_port()),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = out.read_text()
    rows = [line for line in report.splitlines() if line.startswith(("| forward", "| backward"))]
    assert len(rows) == 2 * 5  # both passes, every payload form, small shape
    # A target column beside the floor's ratio: none for small requests (mid's binary forms
    # have 1.2x), so every row ends with two empty cells.
    assert "| p50 / floor | target | met |" in report
    assert all(row.endswith("x |  |  |") for row in rows), rows
    assert "framework floor" in report and "compute floor" in report and "transfer floor" in report
    assert "floor (engine + transfer, served)" in report
    # The per-request cost: tiny requests against /healthz, each with its target.
    tiny = [line.split(" | ")[0] for line in report.splitlines() if "| tiny " in line]
    assert tiny == [
        "| tiny forward .npz",
        "| tiny forward JSON",
        "| tiny backward .npz",
        "| tiny backward JSON",
    ]
    assert "| GET /healthz (floor) |" in report and "BLAS" in report and "load average" in report
    assert "event loop held by a forward served on it" in report


def test_engine_benchmark_smoke_run():
    """`python -m benchmarks.engine` (moved from convengine.bench) runs with its flags."""
    command = ["-m", "benchmarks.engine", "--rounds", "1", "--budget", "0.01", "--only", "small"]
    result = subprocess.run(
        [sys.executable, *command, "--dtypes", "float64"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| small | N2 C3")]
    assert [row.split(" | ")[2] for row in rows] == ["forward", "backward"]
    # issue 24's target beside each row (small layers: faster than PyTorch), and the means
    assert all(row.split(" | ")[-2] == "1.00x" for row in rows)
    # Met or missed beside PyTorch's column, and the geometric means; where PyTorch (the bench
    # extra) is absent, as in CI, "-" and no mean.
    if importlib.util.find_spec("torch") is not None:
        assert all(row.split(" | ")[-1] in ("met |", "missed |") for row in rows), rows
        assert "over 1 layers" in result.stdout.split("float64 forward: geometric mean")[1]
    else:
        assert all(row.split(" | ")[-1] == "- |" for row in rows), rows
        assert "geometric mean" not in result.stdout
    assert "float32" not in result.stdout.split("| shape |")[-1]  # --dtypes is honoured


def test_compression_benchmark_smoke_run():
    """One interleaved round and one block of each form: the table and both verdicts on the
    base64 JSON target."""
    command = ["-m", "benchmarks.compression", "--rounds", "1", "--block", "1"]
    result = subprocess.run(
        [sys.executable, *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| JSON b64")]
    assert [row.split(" | ")[0] for row in rows] == [
        "| JSON b64, default headers",
        "| JSON b64, plain",
        "| JSON b64, gzip",
        "| JSON b64, default headers",  # one kind at a time
    ]
    verdicts = [line for line in result.stdout.splitlines() if "target 1.3x:" in line]
    assert [line.split(":")[0] for line in verdicts] == [
        "JSON b64, default headers, interleaved",
        "JSON b64, default headers, one kind at a time",
    ]
    assert all(line.endswith(("met", "missed")) for line in verdicts), verdicts


def test_client_benchmark_smoke_run():
    """`python -m benchmarks.client` times the three ways to send a tiny call."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.client", "--rounds", "1", "--calls", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split(" | ")[0] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[1:] == [
        "| ConvClient (generated)",
        "| portal over AsyncConvClient",
        "| bare httpx.Client POST",
    ]


def test_transports_benchmark_smoke_run():
    """`python -m benchmarks.transports`: gRPC and REST .npz on one process, answers equal."""
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.transports", "--calls", "2", "--count", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [row[2] for row in rows] == ["gRPC", "REST", "gRPC", "REST"]
    assert all(float(row[-1]) > 0 and float(row[-2]) > 0 for row in rows)
