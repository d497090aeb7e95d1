"""Lattice geometry: 2D (y, x) or 3D (z, y, x), voxel edge, neighbourhoods, flat site indices.

Sites are numbered in C order over the grid's shape, so ``site = (z*ny + y)*nx + x``; every state
array is flat over sites and reshaped (for free) to the grid's shape when a step needs axes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """A regular lattice.

    Args:
        shape: voxels per axis, (ny, nx) or (nz, ny, nx).
        dx_um: voxel edge in um.
        neighbourhood: "moore" (8 in 2D, 26 in 3D) or "von_neumann" (4 or 6).
    """

    shape: tuple[int, ...]
    dx_um: float
    neighbourhood: str = "moore"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def n_sites(self) -> int:
        return int(np.prod(self.shape))

    @property
    def strides(self) -> tuple[int, ...]:
        """Flat-index step per axis."""
        out, acc = [], 1
        for n in reversed(self.shape):
            out.append(acc)
            acc *= n
        return tuple(reversed(out))

    @property
    def offsets(self) -> np.ndarray:
        """Neighbour offsets, shape (n_neighbours, ndim), in a fixed order (the order matters for
        reproducibility: the k-th empty neighbour is chosen by a random number)."""
        if self.neighbourhood == "von_neumann":
            offs = []
            for axis in range(self.ndim):
                for sign in (-1, 1):
                    o = [0] * self.ndim
                    o[axis] = sign
                    offs.append(o)
            return np.array(offs, dtype=np.int64)
        moore = [o for o in itertools.product((-1, 0, 1), repeat=self.ndim) if any(o)]
        return np.array(moore, dtype=np.int64)

    def coords(self, sites: np.ndarray) -> np.ndarray:
        """Integer coordinates (n, ndim) of flat site indices."""
        return np.stack(np.unravel_index(sites, self.shape), axis=-1)

    def neighbours(self, sites: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbour site indices (n, k) of ``sites`` and a mask (n, k) of those inside the grid.

        Neighbours outside the grid get index 0 and mask False.
        """
        c = self.coords(sites)[:, None, :] + self.offsets[None, :, :]
        shape = np.asarray(self.shape)
        inside = np.all((c >= 0) & (c < shape), axis=-1)
        flat = (np.where(inside[..., None], c, 0) * np.asarray(self.strides)).sum(axis=-1)
        return flat, inside

    def centers_um(self, axis: int) -> np.ndarray:
        """Voxel-centre positions along ``axis`` in um (the first voxel's centre is dx/2)."""
        return (np.arange(self.shape[axis]) + 0.5) * self.dx_um
