"""Benchmark of the engine's float32 forward and backward passes: ``python -m convengine.bench``.

Every figure is a median over interleaved rounds, and every comparison a ratio measured in the
same run: against a bare matmul of the same GEMM sizes (the BLAS limit), against the tutorial's
fancy-index im2col with ``np.add.at`` (the classic baseline), and against PyTorch when installed.
Each contender runs as a block with a pause between blocks, because OpenBLAS's threads spin for
a while after each call and would slow whatever ran next.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._functional import backward, forward
from ._geometry import ConvGeometry

__all__ = ["SHAPES", "Shape", "main"]


@dataclass(frozen=True)
class Shape:
    name: str
    x: tuple[int, int, int, int]
    w: tuple[int, int, int, int]
    hyper: dict[str, Any] = field(default_factory=dict)

    def geometry(self) -> ConvGeometry:
        return ConvGeometry.build(self.x, self.w, **self.hyper)

    def label(self) -> str:
        n, c, h, w = self.x
        f, _, kh, kw = self.w
        extra = "".join(f",{k[0]}{v}" for k, v in self.hyper.items())
        return f"N{n} C{c} {h}x{w} F{f} {kh}x{kw}{extra}"


# Input sizes 55 and 223 where ResNet uses 56 and 224: with a stride of 2 the latter give output
# sizes of 28.5 and 112.5, which this engine refuses rather than floors. The outputs (28x28,
# 112x112) and the work are those of the ResNet layers.
SHAPES = [
    Shape("small", (2, 3, 32, 32), (8, 3, 3, 3), dict(stride=1, padding=1)),
    Shape("mid", (16, 32, 56, 56), (64, 32, 3, 3), dict(stride=1, padding=1)),
    Shape("strided", (8, 64, 55, 55), (128, 64, 3, 3), dict(stride=2, padding=1)),
    Shape("stem", (4, 3, 223, 223), (64, 3, 7, 7), dict(stride=2, padding=3)),
    Shape("pointwise", (16, 256, 28, 28), (64, 256, 1, 1), dict()),
    Shape("depthwise", (8, 64, 56, 56), (64, 1, 3, 3), dict(padding=1, groups=64)),
]


# --- the classic baseline: fancy-index im2col and np.add.at col2im ---------------------------


def _indices(g: ConvGeometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    (kh, kw), s = g.kernel, g.stride[0]
    i0 = np.tile(np.repeat(np.arange(kh), kw), g.c)
    i1 = s * np.repeat(np.arange(g.h_out), g.w_out)
    j0 = np.tile(np.arange(kw), kh * g.c)
    j1 = s * np.tile(np.arange(g.w_out), g.h_out)
    k = np.repeat(np.arange(g.c), kh * kw).reshape(-1, 1)
    return k, i0.reshape(-1, 1) + i1.reshape(1, -1), j0.reshape(-1, 1) + j1.reshape(1, -1)


def _tutorial_forward(x: np.ndarray, w: np.ndarray, g: ConvGeometry) -> np.ndarray:
    p = g.pad_h[0]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    k, i, j = _indices(g)
    cols = xp[:, k, i, j].transpose(1, 2, 0).reshape(g.col_rows, -1)
    out: np.ndarray = w.reshape(g.f, -1) @ cols
    return out.reshape(g.f, g.h_out, g.w_out, g.n).transpose(3, 0, 1, 2)


def _tutorial_backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, g: ConvGeometry
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = g.pad_h[0]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    k, i, j = _indices(g)
    cols = xp[:, k, i, j].transpose(1, 2, 0).reshape(g.col_rows, -1)
    dout_rows = dout.transpose(1, 2, 3, 0).reshape(g.f, -1)
    dw = (dout_rows @ cols.T).reshape(w.shape)
    dcols = (w.reshape(g.f, -1).T @ dout_rows).reshape(g.col_rows, -1, g.n).transpose(2, 0, 1)
    dxp = np.zeros_like(xp)
    np.add.at(dxp, (slice(None), k, i, j), dcols)  # type: ignore[arg-type]
    dx = dxp[:, :, p : p + g.height, p : p + g.width] if p else dxp
    return dx, dw, dout.sum(axis=(0, 2, 3))


# --- timing -------------------------------------------------------------------------------


def _time_block(fn: Callable[[], object], reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _interleaved(
    contenders: dict[str, Callable[[], object]], rounds: int, budget: float
) -> dict[str, float]:
    """Median seconds of each contender, blocks alternating order round by round."""
    reps = {}
    for name, fn in contenders.items():
        fn()  # warm up: buffers, BLAS threads, PyTorch's first-call costs
        once = min(_time_block(fn, 2))
        reps[name] = int(min(30, max(1, budget / max(once, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders)
    for round_ in range(rounds):
        for name in order if round_ % 2 == 0 else reversed(order):
            gc.collect()
            time.sleep(0.15)
            samples[name] += _time_block(contenders[name], reps[name])
    return {name: statistics.median(times) for name, times in samples.items()}


def _matmul_limits(
    g: ConvGeometry, rng: np.random.Generator
) -> tuple[Callable[[], object], Callable[[], object]]:
    """Bare matmuls with the same sizes as the engine's GEMMs (forward; both of backward)."""
    grp, f, k, p = g.groups, g.f_per_group, g.col_rows, g.positions
    w_rows = rng.standard_normal((grp, f, k), dtype=np.float32)
    cols = rng.standard_normal((g.n, grp, k, p), dtype=np.float32)
    dout = rng.standard_normal((g.n, grp, f, p), dtype=np.float32)
    out = np.empty((g.n, grp, f, p), dtype=np.float32)
    dw = np.empty((g.n, grp, f, k), dtype=np.float32)

    def forward_gemm() -> object:
        return np.matmul(w_rows, cols, out=out)

    def backward_gemms() -> object:
        np.matmul(dout, cols.transpose(0, 1, 3, 2), out=dw)
        return np.matmul(w_rows.transpose(0, 2, 1), dout, out=cols)

    return forward_gemm, backward_gemms


def _torch_contenders(
    x: np.ndarray, w: np.ndarray, b: np.ndarray, dout: np.ndarray, hyper: dict[str, Any]
) -> tuple[Callable[[], object], Callable[[], object]] | None:
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return None
    tx, tw, tb = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    tdout = torch.from_numpy(dout)

    def torch_forward() -> object:
        with torch.no_grad():
            return tf.conv2d(tx, tw, tb, **hyper)

    def torch_backward() -> object:
        tx.grad = tw.grad = tb.grad = None
        tf.conv2d(tx, tw, tb, **hyper).backward(tdout)
        return tx.grad

    return torch_forward, torch_backward


def _bench_shape(shape: Shape, rounds: int, budget: float) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    g = shape.geometry()
    x = rng.standard_normal(g.x_shape, dtype=np.float32)
    w = rng.standard_normal(g.w_shape, dtype=np.float32)
    b = rng.standard_normal(g.f, dtype=np.float32)
    dout = rng.standard_normal(g.out_shape, dtype=np.float32)
    forward_gemm, backward_gemms = _matmul_limits(g, rng)
    fwd = {
        "engine": lambda: forward(x, w, b, g),
        "matmul": forward_gemm,
    }
    bwd = {
        "engine": lambda: backward(dout, x, w, g),
        "matmul": backward_gemms,
    }
    if g.groups == 1 and g.stride[0] == g.stride[1] and g.pad_h == g.pad_w and g.dilation == (1, 1):
        fwd["tutorial"] = lambda: _tutorial_forward(x, w, g)
        bwd["tutorial"] = lambda: _tutorial_backward(dout, x, w, g)
    torch_pair = _torch_contenders(x, w, b, dout, shape.hyper)
    if torch_pair is not None:
        fwd["torch"], bwd["torch"] = torch_pair
    return {
        "shape": shape,
        "flops": g.flops(),
        "forward": _interleaved(fwd, rounds, budget),
        "backward": _interleaved(bwd, rounds, budget),
    }


def _blas_description() -> str:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS: unknown (pip install threadpoolctl to report it)"
    described = [
        f"{i.get('internal_api')} {i.get('version')} ({i.get('architecture')} kernel, "
        f"{i.get('num_threads')} threads)"
        for i in threadpool_info()
        if i.get("user_api") == "blas"
    ]
    return "BLAS: " + ("; ".join(described) or "none found")


def _row(result: dict[str, Any], pass_: str) -> str:
    times = result[pass_]
    engine = times["engine"]
    flops = result["flops"] * (2 if pass_ == "backward" else 1)

    def ratio(name: str) -> str:
        return f"{engine / times[name]:.2f}x" if name in times else "-"

    def speedup(name: str) -> str:
        return f"{times[name] / engine:.1f}x" if name in times else "-"

    shape: Shape = result["shape"]
    return (
        f"| {shape.name} | {shape.label()} | {pass_} | {engine * 1e3:.2f} | "
        f"{flops / engine / 1e9:.0f} | {ratio('matmul')} | {speedup('tutorial')} | "
        f"{ratio('torch')} |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per pass")
    parser.add_argument("--budget", type=float, default=0.25, help="seconds per timed block")
    parser.add_argument("--only", nargs="*", help="names of the shapes to run")
    args = parser.parse_args(argv)
    print(_blas_description())
    print(f"numpy {np.__version__}; float32; medians over {args.rounds} interleaved rounds")
    print()
    print(
        "| shape | geometry | pass | ms | GFLOP/s | vs matmul limit | faster than tutorial "
        "| vs PyTorch |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for shape in SHAPES:
        if args.only and shape.name not in args.only:
            continue
        result = _bench_shape(shape, args.rounds, args.budget)
        for pass_ in ("forward", "backward"):
            print(_row(result, pass_), flush=True)
    print()
    print("vs matmul / vs PyTorch: engine time over theirs (lower is better, 1.00x is a tie);")
    print("faster than tutorial: the fancy-index im2col + np.add.at baseline's time over ours.")


if __name__ == "__main__":
    main()
