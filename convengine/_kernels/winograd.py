"""Winograd F(4x4, 3x3) (Lavin & Gray, 2015) for stride-1 3x3 layers: a quarter of the GEMM
flops, in transforms kept in cache.

Each 6x6 tile of the padded input (tiles 4 apart) becomes V = Bᵀ d B, each 3x3 kernel
U = G g Gᵀ; the 36 positions of a tile are then 36 independent GEMMs ``M[k] = U[k] @ V[k]``
over the channels (F x C times C x tiles), and each 4x4 output tile is Aᵀ M A. Both 2-D
transforms are one GEMM with a Kronecker product (``kron(Bᵀ, Bᵀ)`` is 36x36, ``kron(Aᵀ, Aᵀ)``
16x36) over the 36 positions of every tile at once. The work runs image by image (or a few
small ones at a time), so that the tiles, their transforms and the GEMMs' results stay in the
2 MiB L2 cache.

Measured before it was wired in (CPU time with one BLAS thread, this machine's kind: AMD EPYC
with AVX-512, OpenBLAS 0.3.31 SkylakeX kernel), forward against im2col's: float32 resnet3x3
8x64x56x56 -> 64 0.62x, mid 16x32x56x56 -> 64 0.78x, 8x128x28x28 -> 128 0.62x; float64
0.59x, 0.70x, 0.54x. The same transforms over the whole batch at once (out of cache) took
0.93x and 1.23x (float32 resnet3x3, mid), and F(2x2, 3x3) (4/9 of the direct flops, not
1/4) 1.19x and 1.36x. Fewer channels or smaller images gain nothing (see the thresholds).

The price is rounding: the transforms' coefficients (up to 8) put results about five times
further from the exact ones than the direct path's: in float32 2.6e-6 against 5.6e-7 of the
largest output on resnet3x3 (random normal data; Lavin & Gray's own points gave 7.3e-6 to
1.0e-5, see ``_BT``), in float64 about 5e-15 against 2e-15.
tests/engine/kernels/test_winograd.py holds them to 1e-5 and 1e-13.

The input gradient of a stride-1 3x3 layer is the same correlation, of dout with the flipped
kernel whose channels are exchanged, padded by 2 minus the layer's padding on each side: it
runs here too. The weight gradient stays im2col's GEMM (:func:`.im2col.weight_gradient`).
Finite data only: an inf in a tile spreads NaN over the whole tile (the run checks).
"""

from __future__ import annotations

import numpy as np

from .._geometry import ConvGeometry
from . import im2col
from .layout import PATH_FUNCTIONS, exchange_channels, workspace

__all__ = [*PATH_FUNCTIONS, "MIN_CHANNELS", "MIN_POSITIONS", "TILE"]

TILE = 4  # output pixels per tile side: F(4x4, 3x3)
# Fewer input or output channels than this and the transforms cost more than the GEMMs save
# (mid, 32 -> 64 channels, still gains a quarter).
MIN_CHANNELS = 32
# Fewer output pixels per image than 28x28 and the GEMMs over a chunk's tiles are too short, and
# the tiles' overhang (14x14 in 4x4 tiles computes 16x16) too large: 256 -> 256 channels at
# 14x14 took 1.14-1.5x im2col's time, 128 -> 128 at 28x28 0.62x.
MIN_POSITIONS = 28 * 28
# Bytes of one chunk's transformed tiles V (36 x C x tiles), against im2col's forward (CPU time,
# one thread): 1 MiB resnet3x3 0.62x, mid 0.78x, 128 channels at 28x28 0.62x; 2 MiB 0.60x,
# 0.84x, 0.66x; 8 MiB 0.87x, 1.07x, 0.75x (out of the 2 MiB L2).
CHUNK_BYTES = 1 << 20

# The matrices of F(4, 3) for the interpolation points 0, -1, 1, 1/2, -2 and infinity (Barabasz,
# Anderson, Soodhalter & Gregg, "Error analysis and improving the accuracy of Winograd
# convolution for deep neural networks", 2020): float32 results 2.6e-6 from the exact ones
# (of the largest output, resnet3x3) where Lavin & Gray's points 0, ±1, ±2 gave 7.6e-6, and
# 1.0e-5 on one of the benchmark's seeds. Bᵀ and Aᵀ hold halves to eighths, exact in binary;
# G (thirds, fifteenths) is applied in float64. A test checks the identity they satisfy.
_BT = np.array(
    [
        [1, -3 / 2, -2, 3 / 2, 1, 0],
        [0, 1, -5 / 2, 1 / 2, 1, 0],
        [0, -1, 1 / 2, 5 / 2, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 1 / 2, -1, -1 / 2, 1, 0],
        [0, 1, -3 / 2, -2, 3 / 2, 1],
    ],
    dtype=np.float64,
)
_G = np.array(
    [
        [1, 0, 0],
        [-1 / 3, 1 / 3, -1 / 3],
        [1 / 3, 1 / 3, 1 / 3],
        [-16 / 15, -8 / 15, -4 / 15],
        [1 / 15, -2 / 15, 4 / 15],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
_AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, -1, 1, 1 / 2, -2, 0],
        [0, 1, 1, 1 / 4, 4, 0],
        [0, -1, 1, 1 / 8, -8, 1],
    ],
    dtype=np.float64,
)
_IN = TILE + 2  # input pixels per tile side
_INPUT_TRANSFORM = np.kron(_BT, _BT)  # (36, 36): a tile's 36 pixels -> its 36 positions
_OUTPUT_TRANSFORM = np.kron(_AT, _AT)  # (16, 36): 36 positions -> the 4x4 output tile


def supports(geometry: ConvGeometry) -> bool:
    """A planar 3x3 kernel, stride and dilation 1, no groups, padding at most 2 on each side
    (its input gradient is then the same kind of layer), and enough channels and pixels to
    pay. The selector takes it for finite data only."""
    g = geometry
    return (
        g.rank == 2
        and g.kernel == (3, 3)
        and g.stride == (1, 1)
        and g.dilation == (1, 1)
        and g.groups == 1
        and min(g.c, g.f) >= MIN_CHANNELS
        and min(g.positions, g.height * g.width) >= MIN_POSITIONS
        and max(*g.pad_h, *g.pad_w) <= 2
    )


def work_elements(geometry: ConvGeometry) -> int:
    """An upper bound on the array elements one pass allocates here.

    What :func:`.im2col.work_elements` counts (the weight gradient runs there), and the larger
    of a forward pass and an input gradient: its result, and the kernel's transform (with
    its float64 intermediates), and the padded tiles, their transforms, the GEMMs' results and
    the output tiles of a chunk of images, each counted with the larger channel count, as if
    a chunk held the whole batch. Outputs on either side are at most the input's size + 2
    (padding at most 2).
    """
    g = geometry
    rows, cols = (-(-(size + 2) // TILE) for size in g.size)
    channels = max(g.c, g.f)
    canvas = g.n * channels * (TILE * rows + 2) * (TILE * cols + 2)
    tiles = g.n * rows * cols * channels * (3 * _IN * _IN + TILE * TILE)
    results = g.n * channels * (g.height + 2) * (g.width + 2)
    kernel = 5 * _IN * _IN * g.c * g.f
    return im2col.work_elements(g) + canvas + tiles + results + kernel


def forward(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    geometry: ConvGeometry,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """x (N, C, H, W), w (F, C, 3, 3), b (F,) or None -> out (N, F, H_out, W_out), written
    into ``out`` where one is given."""
    g = geometry
    if out is None:
        out = np.empty(g.out_shape, dtype=x.dtype)
    _correlate(np.ascontiguousarray(x), _kernel_transform(w), g.pad_h[0], g.pad_w[0], out)
    if b is not None:
        out += b[:, None, None]
    return out


def backward(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dout (N, F, H_out, W_out), x (N, C, H, W), w (F, C, 3, 3) -> dx, dw, db.

    ``wide``: for the weight gradient's im2col (see :func:`.im2col.weight_gradient`).
    """
    dout = np.ascontiguousarray(dout)
    dx = input_gradient(dout, w, geometry, wide)
    dw = im2col.weight_gradient(dout, x, w, geometry, wide)
    return dx, dw, dout.sum(axis=(0, 2, 3))


def input_gradient(
    dout: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool = False
) -> np.ndarray:
    """dx alone: dout (N, F, H_out, W_out), w (F, C, 3, 3) -> dx (N, C, H, W), the correlation
    of dout, padded by 2 minus the layer's padding, with the flipped, exchanged kernel.
    ``wide`` is ignored (no junk columns here)."""
    g = geometry
    flipped = exchange_channels(w, g)[:, :, ::-1, ::-1]
    top, left = 2 - g.pad_h[0], 2 - g.pad_w[0]
    dx = np.empty(g.x_shape, dtype=dout.dtype)
    _correlate(np.ascontiguousarray(dout), _kernel_transform(flipped), top, left, dx)
    return dx


def weight_gradient(
    dout: np.ndarray, x: np.ndarray, w: np.ndarray, geometry: ConvGeometry, wide: bool
) -> np.ndarray:
    """dw alone, on im2col's GEMM; shapes as in :func:`backward`."""
    return im2col.weight_gradient(dout, x, w, geometry, wide)


def _kernel_transform(w: np.ndarray) -> np.ndarray:
    """w (F, C, 3, 3) -> U (36, F, C) = G w Gᵀ per filter and channel, computed in float64."""
    f, c = w.shape[:2]
    # (F*C, 6, 6) by two small matmuls (an einsum over all four axes took 20 ms at 256x256)
    u = _G @ w.reshape(f * c, 3, 3).astype(np.float64) @ _G.T
    return np.ascontiguousarray(u.reshape(f, c, _IN * _IN).transpose(2, 0, 1), dtype=w.dtype)


def _correlate(x: np.ndarray, u: np.ndarray, top: int, left: int, out: np.ndarray) -> None:
    """x (N, C, H, W) zero-padded by ``top`` and ``left`` (and as much as the tiles need on
    the other sides), correlated with the kernel whose transform is u (36, F, C), written
    into out (N, F, *out_size)."""
    n, c = x.shape[:2]
    rows, cols = (-(-size // TILE) for size in out.shape[2:])
    step = max(1, CHUNK_BYTES // (_IN * _IN * c * rows * cols * x.dtype.itemsize))
    for start in range(0, n, step):
        images = slice(start, min(start + step, n))
        tiles = _input_tiles(x[images], top, left, rows, cols)
        products = _tile_products(u, tiles)
        _write_output_tiles(products, out[images])


def _input_tiles(x: np.ndarray, top: int, left: int, rows: int, cols: int) -> np.ndarray:
    """x (n, C, H, W) -> V (36, C, n*rows*cols): Bᵀ d B of every 6x6 tile d, tiles 4 apart."""
    n, c, h, w_in = x.shape
    height, width = TILE * rows + 2, TILE * cols + 2
    canvas = workspace("winograd_canvas", (c, n, height, width), x.dtype)
    canvas.fill(0)
    bottom, right = min(height, top + h), min(width, left + w_in)
    canvas[:, :, top:bottom, left:right] = x[:, :, : bottom - top, : right - left].transpose(
        1, 0, 2, 3
    )
    # pixels: (6, 6, C, n, rows, cols), pixel (a, b) of every tile
    pixels = workspace("winograd_pixels", (_IN, _IN, c, n, rows, cols), x.dtype)
    for a in range(_IN):
        for b in range(_IN):
            pixels[a, b] = canvas[:, :, a : a + TILE * rows : TILE, b : b + TILE * cols : TILE]
    tiles = workspace("winograd_tiles", (_IN * _IN, c, n * rows * cols), x.dtype)
    transform = _INPUT_TRANSFORM.astype(x.dtype)
    np.matmul(transform, pixels.reshape(_IN * _IN, -1), out=tiles.reshape(_IN * _IN, -1))
    return tiles


def _tile_products(u: np.ndarray, tiles: np.ndarray) -> np.ndarray:
    """u (36, F, C), tiles (36, C, t) -> M (36, F, t): one GEMM per tile position."""
    products = workspace("winograd_products", (u.shape[0], u.shape[1], tiles.shape[2]), u.dtype)
    np.matmul(u, tiles, out=products)
    return products


def _write_output_tiles(products: np.ndarray, out: np.ndarray) -> None:
    """M (36, F, n*rows*cols) -> out (n, F, H_out, W_out): Aᵀ M A of every tile, cropped."""
    n, f, h_out, w_out = out.shape
    rows, cols = -(-h_out // TILE), -(-w_out // TILE)
    # pixels: (4, 4, F, n, rows, cols), output pixel (a, b) of every tile
    pixels = workspace("winograd_out", (TILE, TILE, f, n, rows, cols), out.dtype)
    transform = _OUTPUT_TRANSFORM.astype(out.dtype)
    np.matmul(transform, products.reshape(_IN * _IN, -1), out=pixels.reshape(TILE * TILE, -1))
    by_filter = out.transpose(1, 0, 2, 3)
    for a in range(TILE):
        for b in range(TILE):
            target = by_filter[:, :, a::TILE, b::TILE]
            target[...] = pixels[a, b, :, :, : target.shape[2], : target.shape[3]]
