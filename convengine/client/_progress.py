"""Progress of a sharded call: a function told after each shard, or a tqdm bar."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Progress = Callable[[int, int], None]


class Bar:
    """Progress: ``progress(done, total)`` after each shard, or a tqdm bar for True."""

    def __init__(self, progress: Progress | bool | None, total: int, what: str) -> None:
        self.total, self.done = total, 0
        self.report: Progress | None = None
        self.bar: Any = None
        if progress is True:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                raise ImportError(
                    "progress=True draws a tqdm bar: pip install tqdm (the client extra has it)"
                ) from None
            self.bar = tqdm(total=total, unit="shard", desc=what)
        elif callable(progress):
            self.report = progress

    def step(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        if self.report is not None:
            self.report(self.done, self.total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
