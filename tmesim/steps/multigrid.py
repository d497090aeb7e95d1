"""The multigrid preconditioner of the field solver's conjugate gradients (``[solver]
preconditioner = "multigrid"``, the default): one symmetric V-cycle of aggregation multigrid per
CG iteration, every field at once, float32, every operation in a fixed order so that the kernels
(``kernels/multigrid.cu``, driver tmesim.steps.fields_kernel) give the same bits.

Why. The ADI line-factor preconditioner takes more CG iterations as the grid grows (oxygen on
scenarios/bench_3d_256.toml: 10 iterations a step at 64^3, 17 at 128^3, about 30 at 256^3, each
moving five line solves), because one pseudo-step cannot damp every scale of error at once. A
V-cycle damps each scale on the grid that resolves it, so the count stays flat with the grid
size (3 at 64^3 and at 128^3) and one V-cycle moves fewer bytes than five line solves.

The operator. On the free voxels (not pinned: vessels and held bath) the CG solves
A x = b with, per field,

    (A x)_i = w_i x_i + sum over neighbours j of e_ij (x_i - x_j)

the graph form of (1/dt + U) - D lap with pinned neighbours and Dirichlet faces folded into w:
on the fine grid e_ij = D/h^2 between two free neighbours (0 otherwise) and
w_i = 1/dt + U_i + D/h^2 * (neighbour slots of i that are pinned voxels or Dirichlet faces); a
no-flux face adds nothing. This is the CG's operator on the free voxels (to rounding: the CG
evaluates it as diag * x - D lap x).

The hierarchy (rebuilt every agent step, since the occupants move): level l + 1 aggregates
blocks of 2 x 2 (x 2) voxels of level l (an odd axis gets a last block of one layer; an axis of
length 1 stays 1). With P the piecewise-constant prolongation onto the free voxels, the coarse
operator is the Galerkin product P^T A P, which keeps the graph form exactly:
w_I = sum of the children's w (free children), e_IJ = sum of the fine edges between the two
blocks (2^(ndim-1) of them at most). No subtraction: the coarse values carry no cancellation.
A block with no free child is not free at the coarse level. Coarsening stops at COARSEST_SITES
sites (or when every axis is 1).

The V-cycle (``vcycle``), from level 0 with the CG residual r:
    x = omega r / d                     (one damped Jacobi sweep from zero, d = w + sum of e)
    res = r - A x;  r_c = P^T res       (the children's residuals summed into their block)
    x_c = vcycle(level + 1, r_c)
    x = x + P x_c
    x = x + omega (r - A x) / d         (one damped Jacobi sweep, the pre-sweep's adjoint)
and on the coarsest level COARSEST_SWEEPS damped Jacobi sweeps from zero. Jacobi sweeps are
symmetric in A's inner product, the restriction is the prolongation's transpose and the coarse
operators are Galerkin products, so the cycle is a symmetric positive definite operator (damped
Jacobi with omega < 1 on a diagonally dominant M-matrix contracts), as conjugate gradients
requires. Pinned voxels hold 0 in every vector, as the CG's residuals do.

Arithmetic order (what the kernels mirror): sums over children run in C order of the child
offsets (z, y, x), starting from 0.0 with a missing or non-free child adding 0.0; A x adds, per
kernel axis in order z, y, x, the lower neighbour's term then the upper one's, each term
e * (x_i - x_j) rounded as written; d adds the lower then the upper edge per axis to w.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: damping of the Jacobi sweeps
OMEGA = np.float32(0.8)
#: coarsening stops once a level has at most this many sites
COARSEST_SITES = 64
#: damped Jacobi sweeps on the coarsest level
COARSEST_SWEEPS = 8


@dataclass
class Level:
    """One level of the hierarchy: w (F, *shape) float32 (1/min; 1 at non-free voxels), the edge
    weights e (ndim, F, *shape) float32 (1/min; e[a] at index i couples i and i + 1 along grid
    axis a; 0 on the last layer and wherever an end is not free), d = w + incident edges
    (F, *shape) float32, free (*shape) bool."""

    w: np.ndarray
    e: np.ndarray
    d: np.ndarray
    free: np.ndarray

    @property
    def shape(self) -> tuple:
        return self.free.shape


def coarse_shape(shape) -> tuple:
    """Shape of the next level: every axis halved, rounded up."""
    return tuple((m + 1) // 2 for m in shape)


def n_levels(shape) -> int:
    """Levels of the hierarchy of a grid of this shape (the kernels' driver allocates them)."""
    n, s = 1, tuple(shape)
    while int(np.prod(s)) > COARSEST_SITES and any(m > 1 for m in s):
        s = coarse_shape(s)
        n += 1
    return n


def _ax(nd: int, a: int, s) -> tuple:
    """Index of the (F, *grid) array selecting ``s`` along grid axis a."""
    t = [slice(None)] * (nd + 1)
    t[a + 1] = s
    return tuple(t)


def _diag(w: np.ndarray, e: np.ndarray) -> np.ndarray:
    """d = w + the edges incident to each voxel (per axis: the lower edge, then the upper)."""
    nd = w.ndim - 1
    d = w.copy()
    for a in range(nd):
        lo, hi = _ax(nd, a, slice(None, -1)), _ax(nd, a, slice(1, None))
        d[hi] += e[a][lo]  # the edge to the lower neighbour
        d[lo] += e[a][lo]  # the edge to the upper neighbour
    return d


def fine_level(diag, D_over_h2, free, dirichlet) -> Level:
    """Level 0 from the CG's diagonal.

    Args:
        diag: (F, *grid) float32, 1/dt + U in 1/min.
        D_over_h2: (F,) float32, D / h^2 in 1/min.
        free: (*grid) bool, the voxels that are not pinned.
        dirichlet: per grid axis (lo, hi), each (F,) bool: the faces held at a bath value.
    """
    F = diag.shape[0]
    nd = diag.ndim - 1
    shape = diag.shape[1:]
    Dh = np.asarray(D_over_h2, dtype=np.float32).reshape((F,) + (1,) * nd)
    fr = free[None]
    # neighbour slots lost to a pinned neighbour or a Dirichlet face, per field
    lost = np.zeros(diag.shape, dtype=np.float32)
    e = np.zeros((nd,) + diag.shape, dtype=np.float32)
    for a in range(nd):
        m = shape[a]
        lo, hi = _ax(nd, a, slice(None, -1)), _ax(nd, a, slice(1, None))
        both = fr[lo] & fr[hi]
        e[a][lo] = np.where(both, Dh, np.float32(0))
        lost[hi] += ~fr[lo]  # lower neighbour pinned
        lost[lo] += ~fr[hi]  # upper neighbour pinned
        for side, idx in ((0, 0), (1, m - 1)):
            is_d = np.asarray(dirichlet[a][side], dtype=bool).reshape((F,) + (1,) * nd)
            lost[_ax(nd, a, slice(idx, idx + 1))] += is_d
    w = np.where(fr, diag + Dh * lost, np.float32(1))
    return Level(w, e, _diag(w, e), np.asarray(free, dtype=bool))


def _children(x: np.ndarray, shape_c: tuple, axes) -> list[np.ndarray]:
    """The child slices of x (F, *grid) for the block offsets along ``axes`` (C order), each of
    the coarse shape along those axes, zero-padded where an odd axis has no second child."""
    nd = x.ndim - 1
    out = [x]
    for a in axes:
        nxt = []
        for y in out:
            mc = shape_c[a]
            for off in (0, 1):
                s = y[_ax(nd, a, slice(off, None, 2))]
                if s.shape[a + 1] < mc:
                    pad = [(0, 0)] * (nd + 1)
                    pad[a + 1] = (0, mc - s.shape[a + 1])
                    s = np.pad(s, pad)
                nxt.append(s)
        out = nxt
    return out


def _sum_children(x: np.ndarray, shape_c: tuple, axes) -> np.ndarray:
    """Sum of the children along ``axes`` in C order of their offsets, from 0.0 (float32)."""
    parts = _children(x, shape_c, axes)
    acc = np.zeros(parts[0].shape, dtype=np.float32)
    for p in parts:
        acc += p
    return acc


def coarsen(lv: Level) -> Level:
    """The Galerkin coarse level of ``lv`` (see the module docstring)."""
    nd = lv.w.ndim - 1
    F = lv.w.shape[0]
    sc = coarse_shape(lv.shape)
    fr = lv.free[None]
    w_c = _sum_children(np.where(fr, lv.w, np.float32(0)), sc, range(nd))
    e_c = np.zeros((nd, F) + sc, dtype=np.float32)
    for a in range(nd):
        # fine edges leaving a block on its upper side along a: odd positions 1, 3, ...
        up = lv.e[a][_ax(nd, a, slice(1, None, 2))]
        others = [b for b in range(nd) if b != a]
        shape_part = list(sc)
        shape_part[a] = up.shape[a + 1]
        s = _sum_children(up, tuple(shape_part), others)
        e_c[a][_ax(nd, a, slice(0, s.shape[a + 1]))] = s
    free_c = np.zeros(sc, dtype=bool)
    for ch in _children(lv.free[None].astype(np.uint8), sc, range(nd)):
        free_c |= ch[0].astype(bool)
    w_c = np.where(free_c[None], w_c, np.float32(1))
    return Level(w_c, e_c, _diag(w_c, e_c), free_c)


def hierarchy(diag, D_over_h2, free, dirichlet) -> list[Level]:
    """Every level, fine to coarsest."""
    levels = [fine_level(diag, D_over_h2, free, dirichlet)]
    while len(levels) < n_levels(levels[0].shape):
        levels.append(coarsen(levels[-1]))
    return levels


@dataclass
class Work:
    """Work arrays of one level for :func:`vcycle`, (F, *shape) float32 each: the iterate x,
    the residual or next iterate t, a scratch s, and (coarse levels) the restricted residual r.
    Kept between calls (allocating and page-faulting fresh arrays every iteration costs as much
    as the arithmetic)."""

    x: np.ndarray
    t: np.ndarray
    s: np.ndarray
    r: np.ndarray | None


def work_arrays(levels: list[Level], F: int, old: list[Work] | None = None) -> list[Work]:
    """Work arrays for ``levels`` (``old`` reused when its shapes fit)."""
    if (
        old is not None
        and len(old) == len(levels)
        and all(w.x.shape == (F,) + lv.shape for w, lv in zip(old, levels, strict=True))
    ):
        return old
    out = []
    for i, lv in enumerate(levels):
        shp = (F,) + lv.shape
        x, t, s = (np.empty(shp, dtype=np.float32) for _ in range(3))
        out.append(Work(x, t, s, np.empty(shp, dtype=np.float32) if i else None))
    return out


def apply(lv: Level, x: np.ndarray, out: np.ndarray, s: np.ndarray) -> np.ndarray:
    """out = A x on one level, (F, *shape) float32 (the operator of the module docstring);
    ``s`` a scratch of the same shape."""
    nd = x.ndim - 1
    np.multiply(lv.w, x, out=out)
    for a in range(nd):
        lo, hi = _ax(nd, a, slice(None, -1)), _ax(nd, a, slice(1, None))
        ea = lv.e[a][lo]
        t = s[lo]
        np.subtract(x[hi], x[lo], out=t)  # lower neighbour's term at the upper sites
        np.multiply(ea, t, out=t)
        out[hi] += t
        np.subtract(x[lo], x[hi], out=t)  # upper neighbour's term at the lower sites
        np.multiply(ea, t, out=t)
        out[lo] += t
    return out


def jacobi(lv: Level, x: np.ndarray, r: np.ndarray, out: np.ndarray, s: np.ndarray):
    """out = x + ((r - A x) omega) / d, one damped Jacobi sweep (out is not x)."""
    apply(lv, x, out, s)
    np.subtract(r, out, out=out)
    out *= OMEGA
    out /= lv.d
    out += x
    return out


def restrict(lv: Level, res: np.ndarray, out: np.ndarray) -> np.ndarray:
    """out = P^T res: each block's sum of its free children's values (C order of the child
    offsets, from 0.0; a missing child adds nothing, which is the kernels' + 0.0f: a sum
    started at +0.0 is never -0.0 in round-to-nearest, so adding +0.0 changes no bit)."""
    out[...] = 0
    for sl_f, sl_c in _child_slices(lv.shape, out.shape[1:]):
        out[sl_c] += np.where(lv.free[sl_f[1:]], res[sl_f], np.float32(0))
    return out


def prolong_add(lv: Level, x: np.ndarray, xc: np.ndarray) -> np.ndarray:
    """x = x + P xc in place: each free voxel adds its block's value."""
    for sl_f, sl_c in _child_slices(lv.shape, xc.shape[1:]):
        x[sl_f] += np.where(lv.free[sl_f[1:]], xc[sl_c], np.float32(0))
    return x


def _child_slices(shape: tuple, shape_c: tuple):
    """Per child offset (C order): the (F, *grid) index of those children on the fine grid and
    of their blocks on the coarse grid (blocks with no such child left out)."""
    nd = len(shape)
    for k in range(1 << nd):
        offs = [(k >> (nd - 1 - a)) & 1 for a in range(nd)]
        fine, coarse = [slice(None)], [slice(None)]
        for a, o in enumerate(offs):
            cnt = (shape[a] - o + 1) // 2  # children at offset o along a
            fine.append(slice(o, None, 2))
            coarse.append(slice(0, cnt))
        yield tuple(fine), tuple(coarse)


def vcycle(
    levels: list[Level], r: np.ndarray, work: list[Work], out: np.ndarray, level: int = 0
) -> np.ndarray:
    """out = one V-cycle from ``level`` applied to r, (F, *shape) float32: approximately
    A^-1 r, 0 off the free voxels (r must be 0 there)."""
    lv, wk = levels[level], work[level]
    if level == len(levels) - 1:
        cur, nxt = wk.x, wk.t
        np.multiply(r, OMEGA, out=cur)
        cur /= lv.d
        for _ in range(COARSEST_SWEEPS - 1):
            jacobi(lv, cur, r, nxt, wk.s)
            cur, nxt = nxt, cur
        np.copyto(out, cur)
        return out
    x = wk.x
    np.multiply(r, OMEGA, out=x)
    x /= lv.d
    apply(lv, x, wk.t, wk.s)
    np.subtract(r, wk.t, out=wk.t)  # the residual
    below = work[level + 1]
    assert below.r is not None  # coarse levels hold their restricted residual
    restrict(lv, wk.t, below.r)
    vcycle(levels, below.r, work, below.t, level + 1)
    prolong_add(lv, x, below.t)
    return jacobi(lv, x, r, out, wk.s)
