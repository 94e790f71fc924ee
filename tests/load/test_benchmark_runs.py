"""The service benchmark itself runs: `python -m benchmarks.service --quick` (small shapes)."""

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
