"""What the kernels' tests share."""

from __future__ import annotations

import pytest

from convengine._kernels import gather, run


@pytest.fixture
def no_gather(monkeypatch):
    """Tiny layers, which the gather path would take, read with it set aside, so that a test
    reaches the path it is about (the gather path's own: test_gather.py)."""
    monkeypatch.setattr(gather, "MAX_IMAGE_COLUMN_ELEMENTS", 0)


@pytest.fixture
def ran_paths(monkeypatch) -> list[str]:
    """The name of each selection the run computes, in order (a volume's slices and a
    sub-pixel pass's stacked pass each a piece of their own), recorded as it computes."""
    seen: list[str] = []
    original = run._compute

    def record(pass_, selection, geometry, arrays, out=None):
        seen.append(selection.name)
        return original(pass_, selection, geometry, arrays, out)

    monkeypatch.setattr(run, "_compute", record)
    return seen
