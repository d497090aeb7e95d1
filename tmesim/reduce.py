"""The deterministic float64 reduction order of numpy and the kernels (kernels/reduce.cuh).

A reduction adds per-site float64 contributions of Q quantities over a grid of
``n_sites = m0 * P`` sites (``m0`` the length of grid axis 0, ``P`` the product of the other axes,
C order), in two passes whose order is fixed, so that numpy and a GPU give the same sum to the
last bit:

1. **columns**: for every quantity q and plane position j, the sum over grid axis 0 taken
   sequentially from ``i = m0 - 1`` down to 0, starting from 0.0 (``acc = acc + v``);
2. **tree**: for each q, :data:`W` = 256 partial sums, partial t being the sequential sum (from
   0.0) of ``cols[q, t], cols[q, t + W], ...`` (real entries only), then a halving tree
   ``s = W/2, ..., 1: part[t] = part[t] + part[t + s] for t < s``; the total is ``part[0]``.

On a GPU pass 1 is one work item per plane position walking its column and pass 2 one thread
block of W threads per quantity (``tm_reduce_tree``). The functions here mirror both with
explicit loops over numpy arrays: each numpy ``+`` is elementwise, one rounding per element, so
the order is the definition's and never numpy's pairwise ``sum``. Counts may be reduced the same
way: float64 adds integers exactly below 2**53, in any order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

#: width of the tree of pass 2: threads per block of ``tm_reduce_tree`` (tmesim.launch.BLOCK)
W = 256


def grid_split(shape) -> tuple[int, int]:
    """(m0, P) of a grid ``shape``: the length of axis 0 and the product of the other axes."""
    shape = tuple(int(s) for s in shape)
    return shape[0], int(np.prod(shape[1:], dtype=np.int64))


def column_sums(plane: Callable[[int], np.ndarray], m0: int, q: int, p: int) -> np.ndarray:
    """Pass 1: (q, p) float64 column sums of the contributions ``plane(i)`` ((q, p) float64,
    those of grid plane i), added from plane m0 - 1 down to plane 0 starting from 0.0."""
    acc = np.zeros((q, p), dtype=np.float64)
    for i in range(m0 - 1, -1, -1):  # in place: the same elementwise adds, no temporary
        np.add(acc, np.asarray(plane(i), dtype=np.float64).reshape(q, p), out=acc)
    return acc


def tree_sums(cols: np.ndarray) -> np.ndarray:
    """Pass 2: (q,) float64 totals of (q, p) column sums, by the fixed tree of width :data:`W`."""
    cols = np.asarray(cols, dtype=np.float64)
    q, p = cols.shape
    part = np.zeros((q, W), dtype=np.float64)
    for k in range(0, p, W):  # partial t adds cols[:, t], cols[:, t + W], ... in turn
        chunk = cols[:, k : k + W]
        part[:, : chunk.shape[1]] = part[:, : chunk.shape[1]] + chunk
    s = W // 2
    while s >= 1:
        part[:, :s] = part[:, :s] + part[:, s : 2 * s]
        s //= 2
    return part[:, 0].copy()


def reduce_sites(values: np.ndarray, shape) -> np.ndarray:
    """(q,) float64 totals of (q, n_sites) per-site contributions over a grid ``shape``, in the
    order of the two passes (the reference of ``tm_reduce_columns`` + ``tm_reduce_tree``)."""
    m0, p = grid_split(shape)
    v = np.asarray(values, dtype=np.float64).reshape(-1, m0, p)
    return tree_sums(column_sums(lambda i: v[:, i, :], m0, v.shape[0], p))


def field_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(F,) float64 inner products of two (F, *grid) float32 arrays, each product exact in
    float64, summed in this module's order (columns down grid axis 0, then the tree): the CG's
    dot products, the same bits as the kernels' tm_dots_columns + tm_reduce_tree and the fused
    kernels that reduce as they go (kernels/fields.cu)."""
    F = x.shape[0]
    m0, p = grid_split(x.shape[1:])
    x3, y3 = x.reshape(F, m0, p), y.reshape(F, m0, p)
    cols = column_sums(
        lambda i: x3[:, i, :].astype(np.float64) * y3[:, i, :].astype(np.float64), m0, F, p
    )
    return tree_sums(cols)
