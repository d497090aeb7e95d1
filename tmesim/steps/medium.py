"""The culture medium: where a stirred bath holds the fields (numpy reference).

A spheroid in a spinner flask or on a shaker sits in medium that is mixed up to a thin unstirred
layer around it: oxygen (and any field with a bath) is at its bath value a short way from the
cells, whatever the cells take up. ``[medium] stirred = true`` models that: every agent step, the
field solver holds each field at its **bath value** (the one value of its Dirichlet faces, which
``set_supply`` moves for drugs) in every **held** voxel, as it holds vessels at their value
(Dirichlet nodes). A voxel is held when

1. it is empty (medium: no occupant of any kind);
2. it is farther than the unstirred layer ``boundary_layer_um`` from every occupied voxel, in
   the chamfer length of the lattice: steps across 1, 2, 3 axes weigh 10, 14, 17 tenths of a
   voxel edge (within a few % of the Euclidean length; the layer is a length, not a count of
   voxels, and does not depend on ``grid.neighbourhood``); the layer is ``cap =
   round(10 boundary_layer_um / dx)`` tenths (halves up), and held means distance > cap, so a
   layer of 0 holds every empty voxel, even one touching a cell;
3. it is **open to a domain face along a grid axis**: on one of the 2 ndim axis-parallel rays
   from the voxel to the faces, every voxel (itself included) is empty. Medium enclosed by cells
   -- a cavity left where necrotic debris was cleared from a spheroid's core, a pocket between
   cells -- is therefore never held, however large: stirring does not reach it, and the field
   diffuses there as in any unheld medium. The ray test is a cheap stand-in for "connected to
   the faces through medium" (a flood fill would need as many passes as the domain is wide): it
   is exact for convex and star-shaped tumours (spheroids, colonies) and errs only by leaving
   some deep concave pockets unheld (unstirred), never by stirring an enclosed cavity.

Distances are computed only as far as needed, bounded Jacobi passes of the chamfer distance from
the occupied voxels (0 there), capped: a value above cap is INF. A distance d <= cap is a path of
at most d / 10 steps, so cap // 10 passes (at least one) find every distance <= cap; the held
test reads only "distance > cap". The kernels (kernels/fields.cu, tm_medium_*) run the same
passes in place in one uint16 buffer, which gives exactly this field whatever the order of the
work items (the argument of kernels/mechanics.cu's push distance, whose passes these mirror), and
the ray test one line per work item.

The result is a **pin code** per voxel (uint8): the occupant kind, or :data:`BATH` at a held
voxel; the field solver pins vessels (``codes.VESSEL``) at their value and BATH voxels at the
bath value. Rates are read from the true kinds (a held voxel's rates are never used).

Units: lengths in um; distances in tenths of a voxel edge.
"""

from __future__ import annotations

import itertools

import numpy as np

from .. import codes
from .mechanics import STEP_WEIGHTS, UNIT, reach_units

#: pin code of a held medium voxel (kernels/fields.cu TM_PIN_BATH; no occupant kind uses it)
BATH = 255
#: distance of a voxel farther than the cap from every occupied voxel (uint16)
INF = 0xFFFF


def layer_units(boundary_layer_um: float, dx_um: float) -> int:
    """The unstirred layer in distance units (tenths of a voxel edge), rounded to the nearest
    (halves up): a held voxel is farther than this from every occupied voxel. The same
    rounding as the push reach (mechanics.reach_units)."""
    return reach_units(boundary_layer_um, dx_um)


def n_passes(cap: int) -> int:
    """Distance passes that find every chamfer distance <= cap (each step weighs >= 10): cap //
    10, at least one (the first pass, which also sets INF everywhere beyond the cap)."""
    return max(1, cap // UNIT)


def moore(ndim: int) -> list[tuple[tuple[int, ...], int]]:
    """Every neighbour offset of the full Moore neighbourhood (8 in 2D, 26 in 3D) with its
    chamfer weight (mechanics.STEP_WEIGHTS: 10, 14, 17 for a step across 1, 2, 3 axes)."""
    return [
        (off, STEP_WEIGHTS[sum(1 for o in off if o) - 1])
        for off in itertools.product((-1, 0, 1), repeat=ndim)
        if any(off)
    ]


def distance(kind: np.ndarray, shape: tuple[int, ...], cap: int) -> np.ndarray:
    """The capped chamfer distance (uint16, (n_sites,), tenths of a voxel edge) of every voxel
    from the nearest occupied voxel: 0 at occupied voxels, the length of the shortest path of
    Moore steps at an empty voxel if that is at most ``cap``, else INF. Jacobi passes
    (:func:`n_passes`), each reading only the previous pass's field; twin of
    tm_medium_distance_first + tm_medium_distance."""
    k = np.asarray(kind).reshape(shape)
    empty = k == codes.EMPTY
    d = np.where(empty, INF, 0).astype(np.int32)
    steps = moore(len(shape))
    for _ in range(n_passes(cap)):
        padded = np.pad(d, 1, constant_values=INF)
        new = d.copy()
        for off, w in steps:
            view = padded[tuple(slice(1 + o, 1 + o + n) for o, n in zip(off, shape))]
            np.minimum(new, view + w, out=new)
        new[new > cap] = INF  # the capped update: beyond the cap a distance is only INF
        d = new
    return d.astype(np.uint16).reshape(-1)


def exterior(kind: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(n_sites,) bool: the voxel and every voxel from it to a domain face, along one of the
    2 ndim axis directions, are empty (the ray test of the module docstring); twin of
    tm_medium_exterior over every axis."""
    empty = np.asarray(kind).reshape(shape) == codes.EMPTY
    out = np.zeros(shape, dtype=bool)
    for ax in range(len(shape)):
        out |= np.logical_and.accumulate(empty, axis=ax)
        out |= np.flip(np.logical_and.accumulate(np.flip(empty, ax), axis=ax), ax)
    return out.reshape(-1)


def held(kind: np.ndarray, shape: tuple[int, ...], cap: int) -> np.ndarray:
    """(n_sites,) bool: the voxels a stirred bath holds (module docstring: empty, farther than
    ``cap`` from every occupied voxel, open to a face along an axis)."""
    kind = np.asarray(kind).reshape(-1)
    return (kind == codes.EMPTY) & exterior(kind, shape) & (distance(kind, shape, cap) > cap)


def pin_codes(kind: np.ndarray, shape: tuple[int, ...], cap: int) -> np.ndarray:
    """(n_sites,) uint8: ``kind`` with the held voxels set to :data:`BATH` (twin of the
    tm_medium_* launches of tmesim.steps.fields_kernel.medium_pins)."""
    kind = np.asarray(kind).reshape(-1)
    return np.where(held(kind, shape, cap), np.uint8(BATH), kind).astype(np.uint8)
