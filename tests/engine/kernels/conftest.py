"""What the kernels' tests share."""

from __future__ import annotations

import pytest

from convengine._kernels import gather


@pytest.fixture
def no_gather(monkeypatch):
    """Tiny layers, which the gather path would take, read with it set aside, so that a test
    reaches the path it is about (the gather path's own: test_gather.py)."""
    monkeypatch.setattr(gather, "MAX_IMAGE_COLUMN_ELEMENTS", 0)
