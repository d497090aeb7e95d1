"""Bounded displacement at division: a tumor cell due to divide with no empty neighbour pushes a
chain of cells one voxel toward the nearest free voxel within the push reach, and its daughter
takes the freed neighbour (the scenario's ``[tumor.mechanics]``, MechanicsConfig).

Why: with division into empty neighbours only, the proliferating rim of a tumor is one voxel
thick and the speed of a growing front is r dx, a lattice artefact (it halves when dx does).
Cells in a real tumor are pushed aside by divisions behind them, up to a depth set by the
mechanics of the tissue: the rim of dividing cells is some 100 um deep in spheroids (Freyer &
Sutherland 1986; Drasdo & Hoehme 2005), and the front then advances linearly in time. A bounded
reach gives that rim; an unbounded one would let every cell divide (exponential growth).

The rule, one agent step, after the other tumor rules have been applied (deaths, transitions and
divisions into empty neighbours; tmesim.steps.tumor):

1. **Distance to free space.** ``D`` is 0 at empty voxels, the chamfer length of the shortest
   path through pushable voxels to the nearest empty voxel at pushable ones, and ``INF`` at the
   other kinds and wherever it exceeds the reach. Lengths are integers in tenths of a voxel
   edge: a step along one axis is 10, a diagonal across two axes 14, across three 17 (1, 1.4, 1.7
   voxel edges; the chamfer weights that keep lattice distances within a few % of Euclidean ones,
   so a push reaches as far along a diagonal as along an axis). The reach in these units is
   ``cap = round(10 reach / dx)``; a path of length at most ``cap`` has at most ``cap // 10``
   steps, so that many Jacobi passes of ``D = min(D, min over neighbours of D[nb] + w)`` (each
   pass from the previous one's values only, so the result does not depend on any order) make
   every ``D <= cap`` exact.
2. **Paths.** Each cell that decided to divide this step and found no empty neighbour (the
   ``blocked`` cells of the tumor rules) looks at its neighbours' ``w + D[nb]``. If the least is
   at most ``cap + 10`` (free space within the reach of the neighbour its daughter will take) it
   walks the shortest path down ``D``: to a neighbour with the least ``w + D``, then each hop to a
   neighbour with ``D[nb] + w = D[cur]``, until ``D = 0`` (the empty voxel). Where several
   neighbours qualify, the k-th of them in Grid.offsets order is taken, k from the high 32 bits
   of the word (seed, step, mother, PUSH_PATH, lane = hop), as tumor.choose_target does. D falls
   strictly along the path, so a path never visits a voxel twice.
3. **Claims.** The mother claims every voxel of its path, its own included (so that no other
   path moves her), with the key of tumor.resolve_claims: (low 32 bits of her DIRECTION word <<
   32) | her site, the largest key winning each voxel. A path executes only if it won every
   voxel it touches; losers do not divide this step. Winning paths are therefore disjoint and
   every shift applies at once.
4. **Shifts.** Along a winning path (s, n1, ..., nk, e) the occupant of each voxel moves one
   voxel on (kind, tumor state, memory and time in P travel with it; fields stay where they are)
   and the daughter, a copy of the mother, takes n1. Cells of every kind are conserved; tumor
   cells grow by one per winning path; vessels and kinds that are not pushable never move.

The rule is off (nothing is computed, no random number drawn) when ``cap < 10``: no chain of even
one cell fits, which is the contact-inhibited rule exactly. The CUDA twin is
``kernels/mechanics.cu`` (tmesim.steps.mechanics_kernel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import codes, rng
from ..grid import Grid
from ..scenario import MAX_PUSH_REACH_VOXELS

#: chamfer length of one step along an axis, across two axes and across three (tenths of dx)
STEP_WEIGHTS = (10, 14, 17)
#: one voxel edge in distance units
UNIT = STEP_WEIGHTS[0]
#: the distance of voxels that are not pushable or farther than the reach: uint16, and INF plus a
#: step weight does not wrap around
INF = 0x7FFF
#: the kind code of voxels beyond the lattice in the numpy windows (never empty, never pushed)
OUTSIDE = 255
#: distances held at once in the numpy windows (uint16; a few copies of this are made)
WINDOW_BUDGET = 1 << 22
#: longest reach in voxel edges (keeps every distance below INF)
MAX_REACH_VOXELS = MAX_PUSH_REACH_VOXELS
#: pushable kinds the scenario may name, and their codes
PUSHABLE_KINDS = {
    "tumor": codes.TUMOR,
    "necrotic": codes.NECROTIC,
    "caf": codes.CAF,
    "tam": codes.TAM,
}


def step_weights(offsets: np.ndarray) -> np.ndarray:
    """Chamfer length of each neighbour offset (int64), in tenths of a voxel edge."""
    n_axes = np.abs(np.asarray(offsets)).sum(axis=1)
    return np.array((0,) + STEP_WEIGHTS, dtype=np.int64)[n_axes]


def reach_units(reach_um: float, dx_um: float) -> int:
    """The push reach in distance units (tenths of dx), rounded to the nearest (halves up)."""
    return int(math.floor(UNIT * reach_um / dx_um + 0.5))


def pushable_mask(names) -> int:
    """Bit k set where occupant kind k may be pushed (the kernels' ``pushable`` argument)."""
    bits = 0
    for name in names:
        bits |= 1 << PUSHABLE_KINDS[name]
    return bits


@dataclass
class PushCounts:
    """What one application of the push rule did."""

    pushes: int = 0  # divisions made by pushing
    lost: int = 0  # paths that lost a claim (the mother does not divide this step)
    far: int = 0  # blocked cells with no free voxel within reach
    displaced: int = 0  # cells moved one voxel (daughters not counted)


class Pushing:
    """The push rule on numpy arrays (see the module doc).

    Args:
        reach_um: the push reach (um).
        pushable: occupant kind names that may be displaced.
        grid: the lattice.
        seed: the run's seed.
    """

    def __init__(self, reach_um: float, pushable, grid: Grid, seed: int):
        self.grid = grid
        self.seed = seed
        self.cap = reach_units(reach_um, grid.dx_um)
        self.on = self.cap >= UNIT
        self.passes = self.cap // UNIT
        self.bits = pushable_mask(pushable)
        # by kind code, over all 256 values (OUTSIDE marks voxels beyond the lattice)
        self.can_push = np.array([k < 8 and bool(self.bits >> k & 1) for k in range(256)])
        self.weights = step_weights(grid.offsets)

    # ------------------------------------------------------------------------ distance field
    def relax(self, d: np.ndarray, fixed: np.ndarray) -> np.ndarray:
        """The passes of the distance field on ``d`` (uint16, spatial axes last, any leading
        batch axes; outside the array counts as INF), at ``fixed`` voxels left as they are.

        Each pass takes min(D, min over offsets of D[nb] + w) from the previous pass's values.
        The minimum over the offsets with k non-zero components is built axis by axis (min of
        the two shifts of the minimum over k - 1 components), the same minimum as offset by
        offset with fewer operations."""
        nd = self.grid.ndim
        axes = range(d.ndim - nd, d.ndim)
        moore = self.grid.neighbourhood == "moore"
        w = [np.uint16(x) for x in STEP_WEIGHTS]
        for _ in range(self.passes):
            if moore:
                # m[k]: min over the offsets with k non-zero components among the axes so far
                m = [d]
                for a in axes:
                    nm = [d]
                    for k in range(1, len(m) + 1):
                        shifted = _neighbour_min(m[k - 1], a)
                        nm.append(shifted if k == len(m) else np.minimum(m[k], shifted))
                    m = nm
                nxt = d.copy()
                for k in range(1, nd + 1):
                    np.minimum(nxt, m[k] + w[k - 1], out=nxt)  # INF + w does not wrap
            else:
                best = _neighbour_min(d, axes[0])
                for a in axes[1:]:
                    np.minimum(best, _neighbour_min(d, a), out=best)
                nxt = np.minimum(d, best + w[0])
            np.copyto(nxt, d, where=fixed)
            np.putmask(nxt, nxt > self.cap, INF)
            if np.array_equal(nxt, d):  # a fixed point: further passes change nothing
                break
            d = nxt
        return d

    def distance(self, kind: np.ndarray) -> np.ndarray:
        """D (n_sites,) uint16 on the whole lattice, exact wherever it is at most ``cap`` and
        INF elsewhere (the field the kernels compute; see the module doc)."""
        return self._relaxed(kind.reshape(self.grid.shape)).reshape(-1)

    def _relaxed(self, k: np.ndarray) -> np.ndarray:
        """The passes on the kinds ``k`` (spatial axes last): D starts at 0 at empty voxels and
        INF elsewhere; empty and non-pushable voxels never change."""
        d = np.where(k == codes.EMPTY, 0, INF).astype(np.uint16)
        return self.relax(d, (k == codes.EMPTY) | ~self.can_push[k])

    def windows(self, kind: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """D on the window of radius ``passes + 1`` around each source, (m, W, ...) uint16 with
        W = 2 passes + 3 and the source at the centre; outside the lattice is INF.

        Every value a source's walk reads is the same as on the whole lattice: a path from a
        neighbour of the source has at most ``passes`` hops, so it stays inside the window (the
        numpy rule's economy: the kernels compute the whole field)."""
        g = self.grid
        r = self.passes + 1
        kp = np.pad(kind.reshape(g.shape), r, constant_values=OUTSIDE)
        local = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * g.ndim, indexing="ij"), axis=-1)
        local = local.reshape(-1, g.ndim)
        pstrides = np.array([int(np.prod(kp.shape[a + 1 :])) for a in range(g.ndim)])
        centre = (g.coords(sources) + r) @ pstrides
        flat = centre[:, None] + (local @ pstrides)[None, :]
        kw = kp.reshape(-1)[flat].reshape((len(sources),) + (2 * r + 1,) * g.ndim)
        return self._relaxed(kw)

    # ------------------------------------------------------------------------------- paths
    def paths(self, sources: np.ndarray, Dw: np.ndarray, step: int):
        """The shortest paths of ``sources`` down their windows ``Dw``.

        Returns (movers, path, far): the sources that have free space within reach, their paths
        (len(movers), H) int64 padded with -1 (column 0 is the mother, column 1 the daughter's
        voxel, the last valid column the empty voxel), and the sources that have none."""
        g, seed = self.grid, self.seed
        nd, r = g.ndim, self.passes + 1
        offs = g.offsets
        flat_offs = offs @ np.asarray(g.strides)  # the flat-index step of each neighbour
        w = self.weights

        def at(rows, pos):  # D at local positions pos (n, nd) of the windows rows (n,)
            return Dw[(rows,) + tuple(pos[:, a] for a in range(nd))].astype(np.int64)

        def around(rows, pos):  # D of the neighbours of pos, (n, K), in Grid.offsets order
            nb = pos[:, None, :] + offs[None, :, :]
            return Dw[(rows[:, None],) + tuple(nb[..., a] for a in range(nd))].astype(np.int64)

        m0 = sources.size
        centre = np.full((m0, nd), r, dtype=np.int64)
        total = around(np.arange(m0), centre) + w[None, :]
        best = total.min(axis=1)
        ok = best <= self.cap + UNIT
        far = sources[~ok]
        movers, rows, total, best = sources[ok], np.flatnonzero(ok), total[ok], best[ok]
        m = movers.size
        if m == 0:
            return movers, np.empty((0, 2), dtype=np.int64), far
        pos = centre[ok]
        cols = [movers]
        k = _pick(seed, step, movers, 0, total == best[:, None])
        pos = pos + offs[k]
        cols.append(movers + flat_offs[k])
        active = at(rows, pos) > 0
        hop = 1
        while active.any():
            a = np.flatnonzero(active)
            here = at(rows[a], pos[a])
            down = around(rows[a], pos[a]) + w[None, :] == here[:, None]
            k = _pick(seed, step, movers[a], hop, down)
            pos[a] += offs[k]
            col = np.full(m, -1, dtype=np.int64)
            col[a] = cols[-1][a] + flat_offs[k]
            cols.append(col)
            active[a] = at(rows[a], pos[a]) > 0
            hop += 1
        return movers, np.stack(cols, axis=1), far

    # -------------------------------------------------------------------------------- apply
    def apply(
        self,
        kind: np.ndarray,
        tumor_state: np.ndarray,
        memory: np.ndarray,
        time_in_P: np.ndarray,
        sources: np.ndarray,
        step: int,
        claims: np.ndarray,
    ) -> tuple[PushCounts, np.ndarray, np.ndarray]:
        """Push for ``sources`` (sorted blocked mothers, int64) on the lattice as it stands, in
        place. ``claims`` is the (n_sites,) uint64 scratch of the tumor rules (all 0, left 0).

        Returns the counts and the mothers and daughter voxels of the divisions made."""
        from .tumor import resolve_claims

        out = PushCounts()
        none = np.empty(0, dtype=np.int64)
        if not self.on or sources.size == 0:
            out.far = int(sources.size)
            return out, none, none
        # windows in chunks: each holds (2 passes + 3)^ndim distances per mother
        chunk = max(1, WINDOW_BUDGET // (2 * self.passes + 3) ** self.grid.ndim)
        parts = [
            self.paths(sources[i : i + chunk], self.windows(kind, sources[i : i + chunk]), step)
            for i in range(0, sources.size, chunk)
        ]
        movers = np.concatenate([p[0] for p in parts])
        far = np.concatenate([p[2] for p in parts])
        width = max(p[1].shape[1] for p in parts)
        path = np.concatenate(
            [np.pad(p[1], ((0, 0), (0, width - p[1].shape[1])), constant_values=-1) for p in parts]
        )
        out.far = int(far.size)
        if movers.size == 0:
            return out, none, none
        valid = path >= 0
        rows, _ = np.nonzero(valid)
        words = rng.raw_at(self.seed, step, rng.DIRECTION, movers)
        won_voxel = resolve_claims(claims, movers[rows], path[valid], words[rows])
        lost = np.zeros(movers.size, dtype=bool)
        lost[rows[~won_voxel]] = True
        win = ~lost
        out.lost = int(lost.sum())
        out.pushes = int(win.sum())
        # shift from the far end: column j takes column j-1's occupant (column 1 the mother's
        # copy); winners' voxels are disjoint, so each column is one vectorised assignment
        for j in range(path.shape[1] - 1, 0, -1):
            r = win & valid[:, j]
            dst, src = path[r, j], path[r, j - 1]
            for a in (kind, tumor_state, memory, time_in_P):
                a[dst] = a[src]
            if j >= 2:
                out.displaced += int(r.sum())
        return out, movers[win], path[win, 1]


def _pick(seed: int, step: int, mothers: np.ndarray, hop: int, tied: np.ndarray) -> np.ndarray:
    """Which of each row's tied neighbours (``tied`` (n, K) bool, at least one True per row) the
    hop takes: the k-th True, k from the word (seed, step, mother, PUSH_PATH, lane = hop) as
    tumor.choose_target picks. A row with one candidate takes it whatever the word (k = 0), so
    words are drawn for the rows with several only (the kernels do the same)."""
    from .tumor import choose_target

    k = np.argmax(tied, axis=1)  # the first True: the pick of a single candidate
    several = np.flatnonzero(tied.sum(axis=1) > 1)
    if several.size:
        words = rng.raw_at(seed, step, rng.PUSH_PATH, mothers[several], lane=hop)
        columns = np.broadcast_to(np.arange(tied.shape[1]), (several.size, tied.shape[1]))
        k[several] = choose_target(words, tied[several], columns)
    return k


def _neighbour_min(x: np.ndarray, axis: int) -> np.ndarray:
    """min(x one voxel before, x one voxel after) along ``axis``, INF beyond the array."""
    out = np.full_like(x, INF)
    lo = [slice(None)] * x.ndim
    hi = [slice(None)] * x.ndim
    lo[axis], hi[axis] = slice(0, -1), slice(1, None)
    out[tuple(hi)] = x[tuple(lo)]
    np.minimum(out[tuple(lo)], x[tuple(hi)], out=out[tuple(lo)])
    return out
