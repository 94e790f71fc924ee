"""The benchmarks themselves run: `python -m benchmarks.service --quick` (small shapes) and
`python -m benchmarks.transports` (few calls)."""

from __future__ import annotations

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
    assert "framework floor" in report and "compute floor" in report and "transfer floor" in report
    assert "floor (engine + transfer, served)" in report


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
