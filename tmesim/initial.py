"""Initial conditions: where tumor cells and vessels start, and the initial fields.

Random choices (partial filling, random vessels) use the counter-based generator at step 0 in
their own streams, so the initial lattice is a pure function of the scenario and seed.
"""

from __future__ import annotations

import numpy as np

from . import codes, rng
from .errors import ScenarioError
from .grid import Grid
from .scenario import Scenario, resolve_path
from .state import State


def _centres(grid: Grid) -> list[np.ndarray]:
    """Voxel-centre coordinates in um, one broadcastable array per axis."""
    out = []
    for axis in range(grid.ndim):
        shape = [1] * grid.ndim
        shape[axis] = grid.shape[axis]
        out.append(grid.centers_um(axis).reshape(shape))
    return out


def _given_region(how: str, mask: str | None, sc: Scenario, grid: Grid) -> np.ndarray | None:
    """The region for placements "none" (no voxel) and "mask" (nonzero voxels of a .npy file)."""
    if how == "none":
        return np.zeros(grid.shape, dtype=bool)
    if how == "mask":
        assert mask is not None, "validated: a mask placement names its .npy file"
        return np.load(resolve_path(sc, mask), allow_pickle=False) != 0
    return None


def tumor_region(sc: Scenario, grid: Grid) -> np.ndarray:
    """Boolean mask (grid shape) of voxels inside the initial tumor region."""
    ti = sc.init.tumor
    given = _given_region(ti.shape, ti.mask, sc, grid)
    if given is not None:
        return given
    centre = ti.center_um or tuple(n * grid.dx_um / 2 for n in grid.shape)
    xs = _centres(grid)
    if ti.shape in ("disk", "sphere"):
        r2 = sum((x - c) ** 2 for x, c in zip(xs, centre))
        return np.broadcast_to(r2 <= ti.radius_um**2, grid.shape).copy()
    # rectangle / box
    assert ti.size_um is not None, "validated: a rectangle has size_um"
    inside = np.ones(grid.shape, dtype=bool)
    for x, c, s in zip(xs, centre, ti.size_um):
        inside &= np.abs(x - c) <= s / 2
    return inside


def vessel_region(sc: Scenario, grid: Grid) -> np.ndarray:
    """Boolean mask (grid shape) of vessel voxels (before removing those inside the tumor)."""
    vi = sc.init.vessels
    given = _given_region(vi.placement, vi.mask, sc, grid)
    if given is not None:
        return given
    if vi.placement == "random":
        u = rng.uniform_range(sc.run.seed, 0, rng.INIT_VESSELS, grid.n_sites)
        return (u < vi.density).reshape(grid.shape)
    # straight vessels along an axis, on a square lattice of spacing in the other axes
    axis = {"z": 0, "y": 1, "x": 2}[vi.axis] - (3 - grid.ndim)
    step = max(1, int(round(vi.spacing_um / grid.dx_um)))
    mask = np.ones(grid.shape, dtype=bool)
    for a in range(grid.ndim):
        if a == axis:
            continue
        idx = np.arange(grid.shape[a])
        offset = (grid.shape[a] % step) // 2 + step // 2
        on = ((idx - offset) % step) == 0
        shape = [1] * grid.ndim
        shape[a] = grid.shape[a]
        mask &= on.reshape(shape)
    return mask


def stroma_region(cfg, sc: Scenario, grid: Grid, tumor: np.ndarray, stream: int) -> np.ndarray:
    """Candidate voxels (grid shape, bool) of a stromal placement, before density thinning.

    random: everywhere; shell: the ring between shell_gap_um and shell_gap_um + shell_width_um
    outside the tumor's edge (by Euclidean distance); clusters: balls of cluster_radius_um around
    centres drawn uniformly outside the tumor; mask: nonzero voxels of a .npy file.
    """
    from scipy import ndimage

    given = _given_region(cfg.placement, cfg.mask, sc, grid)
    if given is not None:
        return given
    if cfg.placement == "random":
        return np.ones(grid.shape, dtype=bool)
    if cfg.placement == "shell":
        if not tumor.any():
            return np.zeros(grid.shape, dtype=bool)
        d = ndimage.distance_transform_edt(~tumor) * grid.dx_um
        return (d > cfg.shell_gap_um) & (d <= cfg.shell_gap_um + cfg.shell_width_um)
    # clusters: centres are the first n voxels outside the tumor in the order of a random key
    outside = np.flatnonzero(~tumor.ravel())
    key = rng.raw_at(sc.run.seed, 1, stream, outside)
    centres = outside[np.argsort(key, kind="stable")[: cfg.clusters]]
    seeds = np.zeros(grid.n_sites, dtype=bool)
    seeds[centres] = True
    d = ndimage.distance_transform_edt(~seeds.reshape(grid.shape)) * grid.dx_um
    return d <= cfg.cluster_radius_um


def placed_resistant(
    sc: Scenario, grid: Grid, kind: np.ndarray, eligible: np.ndarray
) -> np.ndarray:
    """Sites of the initial resistant cells under ``resistant_placement`` "edge" or "interior".

    Exactly round(resistant_fraction x tumor cells) cells, drawn (smallest counter-based keys)
    among the eligible tumor cells with at least one empty lattice neighbour (edge) or with none
    (interior), so two tumors of the same cells differ only in where their resistant cells sit.
    """
    ti = sc.init.tumor
    cells = np.flatnonzero(kind == codes.TUMOR)
    want = int(round(ti.resistant_fraction * cells.size))
    nbr, inside = grid.neighbours(cells)
    free = (inside & (kind[nbr] == codes.EMPTY)).any(axis=1)
    pool = cells[(free if ti.resistant_placement == "edge" else ~free) & eligible[cells]]
    if pool.size < want:
        raise ScenarioError(
            "init.tumor.resistant_placement",
            ti.resistant_placement,
            f"{want} resistant cells ({ti.resistant_fraction:g} of {cells.size}) among "
            f"{pool.size} {ti.resistant_placement} cells: a smaller resistant_fraction, another "
            "placement or a more compact tumor",
        )
    key = rng.raw_at(sc.run.seed, 0, rng.INIT_STATE, pool, lane=1)
    return pool[np.argsort(key, kind="stable")[:want]]


def initial_state(sc: Scenario, grid: Grid) -> State:
    """The state at time zero: vessels, tumor cells (sensitive, with the scenario's fractions of
    persisters and resistant cells), CAFs and TAMs in empty voxels, fields at their initial
    values, drug plasma levels at time zero."""
    state = State.empty(grid, len(sc.fields), len(sc.drugs))
    vessels = vessel_region(sc, grid).ravel()
    tumor = tumor_region(sc, grid).ravel()
    if sc.init.vessels.outside_tumor:
        vessels &= ~tumor
    ff = sc.init.tumor.fill_fraction
    if ff < 1.0:
        tumor &= rng.uniform_range(sc.run.seed, 0, rng.INIT_TUMOR, grid.n_sites) < ff
    tumor &= ~vessels
    state.kind[vessels] = codes.VESSEL
    state.kind[tumor] = codes.TUMOR
    state.tumor_state[tumor] = codes.SENSITIVE
    ti = sc.init.tumor
    u = rng.uniform_range(sc.run.seed, 0, rng.INIT_STATE, grid.n_sites)
    p_frac = ti.persister_fraction if sc.tumor.transitions.pre_existing else 0.0
    state.tumor_state[tumor & (u < p_frac)] = codes.PERSISTER
    if ti.resistant_placement == "random":
        state.tumor_state[tumor & (u >= p_frac) & (u < p_frac + ti.resistant_fraction)] = (
            codes.RESISTANT
        )
    else:
        state.tumor_state[placed_resistant(sc, grid, state.kind, tumor & (u >= p_frac))] = (
            codes.RESISTANT
        )
    occupied = tumor | vessels
    for cfg, code, stream in (
        (sc.init.caf, codes.CAF, rng.INIT_CAF),
        (sc.init.tam, codes.TAM, rng.INIT_TAM),
    ):
        if cfg.placement == "none":
            continue
        region = stroma_region(cfg, sc, grid, tumor.reshape(grid.shape), stream).ravel()
        keep = rng.uniform_range(sc.run.seed, 0, stream, grid.n_sites) < cfg.density
        if cfg.placement == "mask":
            keep[:] = True
        place = region & keep & ~occupied
        state.kind[place] = code
        occupied |= place
    for i, fc in enumerate(sc.fields):
        state.fields[i] = fc.initial
        state.fields[i][vessels] = fc.vessel_value
    if sc.drugs:
        from .drugs import Pharmacokinetics

        state.plasma[:] = Pharmacokinetics(
            sc.drugs, sc.run.dt_min, sc.run.duration_days * 1440.0
        ).initial()
    return state
