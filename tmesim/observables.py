"""Per-step observables: one time-series row, computed from the state arrays.

Column names follow DESIGN.md so that every tool agrees (see tmesim.io.schema).

A row's counts and float64 sums come from one fused pass (``kernels/observe.cu`` with a kernel
launcher, its numpy twin :func:`numpy_totals` without one) in the deterministic reduction order of
:mod:`tmesim.reduce`, so the two agree bit for bit; the totals reach the host in one small copy
and the means are divided there.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from . import codes, reduce
from .backend import array_module, as_host
from .io import schema


def columns(sc) -> dict:
    """{column: units} of a scenario's time series, in a fixed order."""
    cols = dict(schema.BASE_COLUMNS)
    cols.update(schema.field_columns(sc.field_names, [f.units for f in sc.fields]))
    cols.update(schema.drug_columns(sc.drug_names))
    return cols


#: the layout of a row's reduction, ``TM_OBS_*`` of kernels/observe.cu: index of each quantity
#: (kept here so that the numpy path needs no kernel sources; tests/test_observables.py checks
#: that the two agree)
OBS = {
    "N_KINDS": 6,
    "KINDS": 0,
    "STATES": 6,
    "MEMORY": 11,
    "TIME_IN_P": 12,
    "HYPOXIC": 13,
    "NEAR_TUMOR": 14,
    "NEAR_PERSISTERS": 15,
    "FIELDS": 16,
    "PERSISTER": codes.PERSISTER,
    "EXPANDED": codes.EXPANDED,
}


def n_quantities(n_fields: int) -> int:
    """How many totals a row reduces: the cell counts and sums, then two sums per field."""
    return OBS["FIELDS"] + 2 * n_fields


@functools.lru_cache(maxsize=16)
def near_ball(distance_um: float, dx_um: float, ndim: int) -> np.ndarray:
    """The offsets within ``distance_um`` of a voxel, as (n_rows, 3) int32 rows (dz, dy, w): the
    offsets (dz, dy, -w..w) (2D: dz = 0), for a grid of spacing ``dx_um``.

    An integer offset o is in the ball when ``sqrt(o.o) * dx_um <= distance_um`` in float64, the
    arithmetic of the Euclidean distance transform (integer squared distance, exact sqrt, then
    times dx), so "some offset of the ball lands on a CAF" is exactly "the distance transform of
    the non-CAF voxels times dx is at most distance_um". Radius floor(distance/dx) voxels.
    Read-only (cached)."""
    if not (dx_um > 0) or ndim not in (2, 3):
        raise ValueError(f"near_ball: need dx_um > 0 and ndim 2 or 3, got {dx_um!r}, {ndim!r}")
    if not (distance_um >= 0):
        return np.zeros((0, 3), dtype=np.int32)
    r = int(math.floor(distance_um / dx_um)) + 1  # a bound: the test below decides
    sq = np.arange((r + 1) ** 2 + 1, dtype=np.int64)
    inside = np.sqrt(sq.astype(np.float64)) * np.float64(dx_um) <= distance_um
    k = int(sq[inside].max())  # largest squared offset in the ball (monotone in o.o)
    rz = math.isqrt(k) if ndim == 3 else 0
    rows = [
        (dz, dy, math.isqrt(k - dz * dz - dy * dy))
        for dz in range(-rz, rz + 1)
        for dy in range(-math.isqrt(k - dz * dz), math.isqrt(k - dz * dz) + 1)
    ]
    out = np.array(rows, dtype=np.int32).reshape(-1, 3)
    out.setflags(write=False)
    return out


def _near_in_box(xp, caf, rows, lo, hi):
    """(box) bool: voxels of the box ``lo`` .. ``hi`` (inclusive corners, (z, y, x)) of the
    (nz, ny, nx) bool grid ``caf`` that some offset of ``rows`` (:func:`near_ball`) takes to a
    CAF. Computed on the box grown by the ball's radius: per voxel the distance along x to the
    nearest CAF of its line (capped), then for each row (dz, dy, w) a test of that distance <= w
    on the line (dz, dy) away."""
    r = int(np.abs(np.asarray(rows)).max()) if len(rows) else 0
    glo = [max(0, a - r) for a in lo]
    ghi = [min(n - 1, b + r) for n, b in zip(caf.shape, hi)]
    c = caf[glo[0] : ghi[0] + 1, glo[1] : ghi[1] + 1, glo[2] : ghi[2] + 1]
    big = r + 1
    xd = xp.where(c, 0, big).astype(xp.int32)
    for k in range(1, min(r, c.shape[2] - 1) + 1):
        hit = xp.zeros(c.shape, dtype=bool)
        hit[:, :, k:] |= c[:, :, :-k]
        hit[:, :, :-k] |= c[:, :, k:]
        xd = xp.where(hit & (xd > k), k, xd)
    shape = [b - a + 1 for a, b in zip(lo, hi)]
    near = xp.zeros(shape, dtype=bool)
    o = [a - g for a, g in zip(lo, glo)]  # the box's corner within the grown box
    for dz, dy, w in np.asarray(rows).tolist():
        # box voxels whose line (dz, dy) away lies in the grown box (else outside the grid)
        z0, z1 = max(0, -(o[0] + dz)), min(shape[0], c.shape[0] - o[0] - dz)
        y0, y1 = max(0, -(o[1] + dy)), min(shape[1], c.shape[1] - o[1] - dy)
        if z0 >= z1 or y0 >= y1:
            continue
        src = xd[
            o[0] + dz + z0 : o[0] + dz + z1,
            o[1] + dy + y0 : o[1] + dy + y1,
            o[2] : o[2] + shape[2],
        ]
        near[z0:z1, y0:y1, :] |= src <= w
    return near


def _grid3(shape) -> tuple[int, int, int]:
    """(nz, ny, nx) of a 2D or 3D grid shape (2D: nz = 1), as the kernels index it."""
    shape = tuple(int(v) for v in shape)
    return (1, *shape) if len(shape) == 2 else shape


def near_caf(kind, shape, dx_um: float, distance_um: float = schema.NEAR_CAF_UM):
    """(n_sites,) bool: voxels within ``distance_um`` (Euclidean, centre to centre) of a CAF.

    ``kind`` numpy or cupy; the result lives where ``kind`` does. Computed from the ball of
    offsets (:func:`near_ball`), the same set as a distance transform gives."""
    xp = array_module(kind)
    g3 = _grid3(shape)
    caf = (kind == codes.CAF).reshape(g3)
    if not caf.any():
        return xp.zeros(kind.shape, dtype=bool)
    rows = near_ball(float(distance_um), float(dx_um), len(shape))
    near = _near_in_box(xp, caf, rows, (0, 0, 0), tuple(n - 1 for n in g3))
    return near.ravel()


def numpy_totals(state, shape, n_fields: int, o2: int, hypoxic: np.float32, rows) -> np.ndarray:
    """The (n_quantities,) float64 totals of ``tm_observe_columns`` + ``tm_reduce_tree`` with
    numpy, bit for bit: counts are exact in any order (bincount, count_nonzero; the near-CAF
    counts by :func:`_near_in_box` over the tumor's bounding box), the float64 sums in the order of
    :mod:`tmesim.reduce`. ``o2`` -1: no hypoxic count."""
    kind, ts = state.kind, state.tumor_state
    nk, ns = OBS["N_KINDS"], len(codes.TUMOR_STATE_NAMES)
    out = np.zeros(n_quantities(n_fields), dtype=np.float64)
    out[OBS["KINDS"] : OBS["KINDS"] + nk] = np.bincount(kind, minlength=nk)[:nk]
    tumor = kind == codes.TUMOR
    t_state = ts[tumor]
    out[OBS["STATES"] : OBS["STATES"] + ns] = np.bincount(t_state, minlength=ns)[:ns]
    if o2 >= 0:
        out[OBS["HYPOXIC"]] = np.count_nonzero(state.fields[o2][tumor] < hypoxic)
    n_caf = out[OBS["KINDS"] + codes.CAF]
    if n_caf and len(t_state) and len(rows):
        # near-CAF on the tumor's bounding box only (the ball's reach around it is read)
        g3 = _grid3(shape)
        t3 = tumor.reshape(g3)
        ext = [np.flatnonzero(t3.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        lo, hi = tuple(int(e[0]) for e in ext), tuple(int(e[-1]) for e in ext)
        box = tuple(slice(a, b + 1) for a, b in zip(lo, hi))
        near = _near_in_box(np, (kind == codes.CAF).reshape(g3), rows, lo, hi)
        near &= t3[box]
        out[OBS["NEAR_TUMOR"]] = np.count_nonzero(near)
        s3 = ts.reshape(g3)[box]
        out[OBS["NEAR_PERSISTERS"]] = np.count_nonzero(
            near & ((s3 == codes.PERSISTER) | (s3 == codes.EXPANDED))
        )
    # the float64 sums: memory, time in P, then per field all sites and tumor sites
    m0, p = reduce.grid_split(shape)
    k2, s2 = kind.reshape(m0, p), ts.reshape(m0, p)
    mem2, tip2 = state.memory.reshape(m0, p), state.time_in_P_min.reshape(m0, p)
    f3 = state.fields.reshape(n_fields, m0, p)
    nq = 2 + 2 * n_fields

    def plane(i):
        t = k2[i] == codes.TUMOR
        st = s2[i]
        pers = t & ((st == codes.PERSISTER) | (st == codes.EXPANDED))
        v = np.empty((nq, p), dtype=np.float64)
        v[0] = np.where(t, mem2[i], 0)
        v[1] = np.where(pers, tip2[i], 0)
        f = f3[:, i, :].astype(np.float64)
        v[2::2] = f
        v[3::2] = np.where(t, f, 0.0)
        return v

    sums = reduce.tree_sums(reduce.column_sums(plane, m0, nq, p))
    out[OBS["MEMORY"]], out[OBS["TIME_IN_P"]] = sums[0], sums[1]
    out[OBS["FIELDS"] :] = sums[2:]
    return out


_DEVICE_ROWS: dict = {}


def kernel_totals(state, shape, n_fields: int, o2: int, hypoxic: np.float32, rows, launcher):
    """The (n_quantities,) float64 totals of a row by ``tm_observe_columns`` and
    ``tm_reduce_tree`` through ``launcher``, as numpy (one device-to-host copy of the totals)."""
    xp = launcher.xp
    m0, p = reduce.grid_split(shape)
    nz, ny, nx = _grid3(shape)
    q = n_quantities(n_fields)
    key = (rows.tobytes(), xp.__name__, getattr(launcher, "device_id", None))
    if key not in _DEVICE_ROWS:  # a few hundred int32, copied to a device once
        dev = xp.array(rows if len(rows) else np.zeros((1, 3), np.int32))
        _DEVICE_ROWS[key] = dev
    fields = state.fields if n_fields else xp.zeros(1, dtype=xp.float32)
    cols = xp.empty((q, p), dtype=xp.float64)
    out = xp.empty(q, dtype=xp.float64)
    launcher(
        "tm_observe_columns",
        (1 + n_fields) * p,
        state.kind,
        state.tumor_state,
        state.memory,
        state.time_in_P_min,
        fields,
        np.int64(n_fields),
        np.int64(o2),
        np.float32(hypoxic),
        _DEVICE_ROWS[key],
        np.int64(len(rows)),
        np.int64(m0),
        np.int64(p),
        np.int32(nz),
        np.int32(ny),
        np.int32(nx),
        cols,
    )
    launcher("tm_reduce_tree", q * reduce.W, cols, np.int64(q), np.int64(p), out)
    return as_host(out)


def observe(
    state, sc, counts=None, sweeps: int = 0, doses=None, stroma=None, launcher=None
) -> dict:
    """One row of observables for ``state`` (per-site arrays numpy or cupy).

    hypoxic_fraction is the fraction of tumor cells below the hypoxic threshold; mean_<field> is
    the domain mean and mean_<field>_tumor the mean over tumor cells (NaN without tumor cells);
    *_near_caf_fraction count cells within schema.NEAR_CAF_UM of a CAF (0 without CAFs).

    Every count and float64 sum comes from one fused pass where the arrays live: the kernels
    through ``launcher`` (the backend's; cupy arrays without one get their device's
    CupyLauncher), numpy's twin :func:`numpy_totals` without one; the totals reach the host in
    one transfer. A mean is its float64 sum (in tmesim.reduce's order) divided by its count on
    the host.
    """
    nk, ns = OBS["N_KINDS"], len(codes.TUMOR_STATE_NAMES)
    names = sc.field_names
    o2 = names.index("oxygen") if "oxygen" in names else -1
    # numpy compares a float32 array with a Python float in float32: so do both paths
    hypoxic = np.float32(sc.tumor.hypoxic_threshold_mmHg)
    rows = near_ball(float(schema.NEAR_CAF_UM), float(sc.grid.dx_um), len(sc.grid.shape))
    xp = array_module(state.kind)
    if launcher is None and xp is not np:
        if not xp.__name__.startswith("cupy"):
            raise ValueError(f"observe: arrays of module {xp.__name__} need a kernel launcher")
        from .launch import CupyLauncher  # only here: the CPU path never imports the launch layer

        launcher = CupyLauncher(state.kind.device.id)
    args = (state, sc.grid.shape, len(names), o2, hypoxic, rows)
    v = numpy_totals(*args) if launcher is None else kernel_totals(*args, launcher)
    kinds = v[OBS["KINDS"] : OBS["KINDS"] + nk].astype(np.int64)
    states = v[OBS["STATES"] : OBS["STATES"] + ns].astype(np.int64)
    mem_sum, tip_sum, n_hypoxic = v[OBS["MEMORY"]], v[OBS["TIME_IN_P"]], v[OBS["HYPOXIC"]]
    n_near = v[OBS["NEAR_TUMOR"]], v[OBS["NEAR_PERSISTERS"]]
    field_sums = v[OBS["FIELDS"] :]
    n_S, n_P, n_R, n_E = (
        int(states[c]) for c in (codes.SENSITIVE, codes.PERSISTER, codes.RESISTANT, codes.EXPANDED)
    )
    burden = n_S + n_P + n_R + n_E
    n_tol = n_P + n_E
    n_tumor = int(kinds[codes.TUMOR])  # what a mean over kind == TUMOR divides by
    row = {
        "time_min": float(state.time_min),
        "n_S": n_S,
        "n_P": n_P,
        "n_R": n_R,
        "n_E": n_E,
        "n_caf": int(kinds[codes.CAF]),
        "n_tam": int(kinds[codes.TAM]),
        "n_necrotic": int(kinds[codes.NECROTIC]),
        "n_vessel": int(kinds[codes.VESSEL]),
        "burden": burden,
        "persister_fraction": n_tol / burden if burden else 0.0,
        "resistant_fraction": n_R / burden if burden else 0.0,
        "divisions": counts.divisions if counts else 0,
        "necroses": counts.necroses if counts else 0,
        "cleared": counts.cleared if counts else 0,
        "field_sweeps": sweeps,
    }
    for key in (
        "killed",
        "killed_S",
        "killed_P",
        "entered_P",
        "exited_P",
        "became_R",
        "became_E",
    ):
        row[key] = getattr(counts, key) if counts else 0
    row["tam_recruited"] = stroma.tam_recruited if stroma else 0
    row["tam_died"] = stroma.tam_died if stroma else 0
    row["mean_memory"] = float(mem_sum / n_tumor) if burden else 0.0
    row["mean_time_in_P_h"] = float(tip_sum / n_tol / 60) if n_tol else 0.0
    if kinds[codes.CAF] and burden:
        row["tumor_near_caf_fraction"] = float(int(n_near[0]) / burden)
        row["persisters_near_caf_fraction"] = float(int(n_near[1]) / n_tol) if n_tol else 0.0
    else:
        row["tumor_near_caf_fraction"] = row["persisters_near_caf_fraction"] = 0.0
    for i, name in enumerate(sc.drug_names):
        row[f"plasma_{name}"] = float(state.plasma[i])
        row[f"dose_{name}"] = float(doses[i]) if doses is not None and len(doses) > i else 0.0
        row[f"cumulative_dose_{name}"] = float(state.dose_total[i])
    row["hypoxic_fraction"] = float(n_hypoxic / n_tumor) if o2 >= 0 and burden else 0.0
    n_sites = state.kind.shape[0]
    for i, name in enumerate(names):
        row[f"mean_{name}"] = float(field_sums[2 * i] / n_sites)
        row[f"mean_{name}_tumor"] = float(field_sums[2 * i + 1] / n_tumor) if burden else np.nan
    return row
