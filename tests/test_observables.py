"""Observables (tmesim.observables): every column of a row against independent numpy reductions
of the same arrays (a distance transform for the near-CAF counts), the numpy twin against the
fused kernel bit for bit in every work order, and the near-CAF ball against the distance
transform."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
from scipy import ndimage

from tmesim import codes, launch, observables
from tmesim.backend import CPU
from tmesim.grid import Grid
from tmesim.io import schema
from tmesim.simulation import Model
from tmesim.state import State

from .helpers import model_scenario

#: scenarios of the row tests: 2D and 3D, planes of P < 256 and of P > 256 not a multiple of it
CASES = {
    "2d": ("2d-adi",),
    "2d-wide": ("2d-adi", "grid.shape=[13,301]"),
    "3d": ("3d-lod",),
    "3d-odd": ("3d-lod", "grid.shape=[5,17,31]"),
}


def random_state(sc, seed: int):
    """A state of ``sc`` with every kind, the tumor states S, P, R and E, memory, time in P and
    fields at random; oxygen straddles the hypoxic threshold; CAFs sparse enough that some tumor
    cells are near one and some are not."""
    st = Model(sc, CPU()).state
    g = np.random.default_rng(seed)
    n = st.kind.size
    p_caf = 0.01 if len(sc.grid.shape) == 2 else 0.002  # the ball: 81 or 515 voxels at dx 20
    p = np.array([0.3, 0.45, p_caf, 0.05, 0.05, 0.05])
    st.kind[:] = g.choice(len(codes.KIND_NAMES), n, p=p / p.sum())
    tumor = st.kind == codes.TUMOR
    st.tumor_state[:] = np.where(tumor, g.integers(1, 5, n), 0)
    st.memory[:] = g.random(n, dtype=np.float32)
    st.time_in_P_min[:] = g.uniform(0, 500, n).astype(np.float32)
    st.fields[:] = g.uniform(0, 40, st.fields.shape).astype(np.float32)
    if "oxygen" in sc.field_names:
        thr = sc.tumor.hypoxic_threshold_mmHg
        o2 = st.fields[sc.field_names.index("oxygen")]
        o2[:] = (thr * g.uniform(0.5, 1.5, n)).astype(np.float32)
        o2[::7] = np.float32(thr)  # on the threshold: not hypoxic (strict <)
    return st


def edt_near(kind, shape, dx_um, distance_um=schema.NEAR_CAF_UM):
    """Today's definition: the exact Euclidean distance transform of the non-CAF voxels."""
    caf = (kind == codes.CAF).reshape(shape)
    if not caf.any():
        return np.zeros(kind.shape, dtype=bool)
    return (ndimage.distance_transform_edt(~caf) * dx_um <= distance_um).ravel()


def reference_row(st, sc) -> dict:
    """The columns observe() derives from the state, by plain numpy, math.fsum (correctly rounded
    sums) and a distance transform."""
    tumor = st.kind == codes.TUMOR
    ts = st.tumor_state
    n_tumor = int(np.count_nonzero(tumor))
    by = {s: int(np.count_nonzero(tumor & (ts == c))) for s, c in codes.TUMOR_STATE_CODES.items()}
    burden = by["S"] + by["P"] + by["R"] + by["E"]
    pers = tumor & ((ts == codes.PERSISTER) | (ts == codes.EXPANDED))
    n_tol = int(np.count_nonzero(pers))
    row = {
        "n_S": by["S"],
        "n_P": by["P"],
        "n_R": by["R"],
        "n_E": by["E"],
        "burden": burden,
        **{f"n_{k}": int(np.count_nonzero(st.kind == codes.KIND_CODES[k])) for k in ("caf", "tam")},
        "n_necrotic": int(np.count_nonzero(st.kind == codes.NECROTIC)),
        "n_vessel": int(np.count_nonzero(st.kind == codes.VESSEL)),
        "persister_fraction": n_tol / burden if burden else 0.0,
        "resistant_fraction": by["R"] / burden if burden else 0.0,
        "mean_memory": math.fsum(st.memory[tumor].tolist()) / n_tumor if burden else 0.0,
        "mean_time_in_P_h": math.fsum(st.time_in_P_min[pers].tolist()) / n_tol / 60
        if n_tol
        else 0.0,
    }
    names = sc.field_names
    if "oxygen" in names and burden:
        o2 = st.fields[names.index("oxygen")][tumor]
        row["hypoxic_fraction"] = np.count_nonzero(o2 < sc.tumor.hypoxic_threshold_mmHg) / n_tumor
    else:
        row["hypoxic_fraction"] = 0.0
    near = edt_near(st.kind, sc.grid.shape, sc.grid.dx_um)
    row["tumor_near_caf_fraction"] = np.count_nonzero(near & tumor) / burden if burden else 0.0
    row["persisters_near_caf_fraction"] = np.count_nonzero(near & pers) / n_tol if n_tol else 0.0
    for i, name in enumerate(names):
        f = st.fields[i]
        row[f"mean_{name}"] = math.fsum(f.tolist()) / f.size
        row[f"mean_{name}_tumor"] = math.fsum(f[tumor].tolist()) / n_tumor if burden else np.nan
    return row


def assert_row_matches(row, ref, st, sc):
    """Counts and fractions of counts exactly; a mean within float64 rounding of the correctly
    rounded one: any order of n adds of x errs by at most (n - 1) * 2**-53 * sum|x|, plus the
    division's half ulp."""
    tumor = st.kind == codes.TUMOR
    pers = tumor & ((st.tumor_state == codes.PERSISTER) | (st.tumor_state == codes.EXPANDED))
    sums = {"mean_memory": st.memory[tumor], "mean_time_in_P_h": st.time_in_P_min[pers] / 60}
    for i, name in enumerate(sc.field_names):
        sums[f"mean_{name}"] = st.fields[i]
        sums[f"mean_{name}_tumor"] = st.fields[i][tumor]
    for key, want in ref.items():
        got = row[key]
        if key in sums and not (isinstance(want, float) and math.isnan(want)):
            x = np.abs(sums[key].astype(np.float64))
            bound = len(x) * 2.0**-53 * float(x.sum()) / max(len(x), 1) + 2.0**-52 * abs(want)
            assert abs(got - want) <= bound, (key, got, want)
        elif isinstance(want, float) and math.isnan(want):
            assert math.isnan(got), key
        else:
            assert got == want, (key, got, want)
            assert type(got) is type(want) or isinstance(want, float), key


def rows_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)


# ------------------------------------------------------------------------------------ the layout
def test_layout_is_the_kernels():
    """observables.OBS is observe.cu's TM_OBS_* (the numpy path needs no kernel sources)."""
    assert launch.kernel_defines("observe.cu", "TM_OBS_") == observables.OBS
    assert observables.OBS["N_KINDS"] == len(codes.KIND_NAMES)
    assert launch.kernel_defines("common.cuh", "TM_")["N_STATES"] == len(codes.TUMOR_STATE_NAMES)
    assert observables.OBS["STATES"] + len(codes.TUMOR_STATE_NAMES) <= observables.OBS["MEMORY"]


# ------------------------------------------------------------------------------------ the row
@pytest.mark.parametrize("case", sorted(CASES))
def test_row_is_the_independent_reference(case):
    """Every state-derived column: counts exact, near-CAF fractions as the distance transform
    gives them, means within float64 rounding of the correctly rounded sums (the fused pass adds
    in tmesim.reduce's order, not numpy's pairwise one)."""
    sc = model_scenario(*CASES[case])
    st = random_state(sc, 3)
    row = observables.observe(st, sc)
    ref = reference_row(st, sc)
    assert 0 < ref["tumor_near_caf_fraction"] < 1 and ref["hypoxic_fraction"] > 0
    assert ref["n_E"] and ref["n_P"]
    assert_row_matches(row, ref, st, sc)


def test_row_keeps_its_columns():
    """The row has every column of the scenario's time series, and no other."""
    sc = model_scenario("2d-adi")
    st = random_state(sc, 4)
    assert set(observables.observe(st, sc)) == set(observables.columns(sc))


def _no_oxygen(sc, st):
    """The scenario and state without their oxygen field (a stand-in holding what observe reads)."""
    keep = [i for i, n in enumerate(sc.field_names) if n != "oxygen"]
    sc2 = types.SimpleNamespace(
        field_names=tuple(sc.field_names[i] for i in keep),
        drug_names=sc.drug_names,
        grid=sc.grid,
        tumor=sc.tumor,
    )
    st.fields = np.ascontiguousarray(st.fields[keep])
    return sc2, st


@pytest.mark.parametrize("what", ["extinct", "no-caf", "no-oxygen", "nothing"])
def test_degenerate_rows(what, launcher):
    """An extinct tumor, no CAFs, no oxygen field (and all three): the row today's observe()
    gives, on numpy and through the kernels alike."""
    sc = model_scenario("2d-adi")
    st = random_state(sc, 5)
    if what in ("extinct", "nothing"):
        st.kind[st.kind == codes.TUMOR] = codes.EMPTY
        st.tumor_state[:] = 0
    if what in ("no-caf", "nothing"):
        st.kind[st.kind == codes.CAF] = codes.TAM
    if what in ("no-oxygen", "nothing"):
        sc, st = _no_oxygen(sc, st)
    row = observables.observe(st, sc)
    ref = reference_row(st, sc)
    assert_row_matches(row, ref, st, sc)
    assert rows_equal(row, observables.observe(st, sc, launcher=launcher))
    if what in ("extinct", "nothing"):
        assert row["burden"] == 0 and row["mean_memory"] == 0.0 and row["hypoxic_fraction"] == 0.0
        assert row["tumor_near_caf_fraction"] == row["persisters_near_caf_fraction"] == 0.0
        assert all(math.isnan(row[f"mean_{n}_tumor"]) for n in sc.field_names)
    if what == "no-caf":
        assert row["burden"] > 0 and row["tumor_near_caf_fraction"] == 0.0
    if what == "no-oxygen":
        assert row["burden"] > 0 and row["hypoxic_fraction"] == 0.0


# ------------------------------------------------------------------------------------ the kernel
@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_is_the_numpy_twin_bit_for_bit(launcher, case, order):
    """tm_observe_columns + tm_reduce_tree give the numpy twin's totals to the last bit in every
    work order, so the row through a kernel launcher is the CPU's row."""
    sc = model_scenario(*CASES[case])
    st = random_state(sc, 11)
    names = sc.field_names
    args = (
        st,
        sc.grid.shape,
        len(names),
        names.index("oxygen"),
        np.float32(sc.tumor.hypoxic_threshold_mmHg),
        observables.near_ball(schema.NEAR_CAF_UM, sc.grid.dx_um, len(sc.grid.shape)),
    )
    want = observables.numpy_totals(*args)
    set_order = getattr(launcher, "set_order", lambda mode: None)  # a GPU has its own order
    set_order(order)
    try:
        got = observables.kernel_totals(*args, launcher)
        row = observables.observe(st, sc, launcher=launcher)
    finally:
        set_order(0)
    np.testing.assert_array_equal(got, want)
    assert rows_equal(row, observables.observe(st, sc))
    assert want[observables.OBS["NEAR_PERSISTERS"]] > 0 and want[observables.OBS["HYPOXIC"]] > 0


# ------------------------------------------------------------------------------------ near CAF
def test_ball_is_the_integer_offsets_within_reach():
    """The ball at d/dx = 5 holds exactly the offsets with o.o <= 25 (counted by brute force):
    |o| * dx == d counts, as ``distance <= d`` does."""
    for ndim in (2, 3):
        rows = observables.near_ball(100.0, 20.0, ndim)
        got = {(dz, dy, x) for dz, dy, w in rows.tolist() for x in range(-w, w + 1)}
        r = range(-6, 7)
        want = {
            (a, b, c)
            for a in (r if ndim == 3 else [0])
            for b in r
            for c in r
            if a * a + b * b + c * c <= 25
        }
        assert got == want
    assert len(observables.near_ball(100.0, 20.0, 3)) and (0, 3, 4) in {
        (dz, dy, w) for dz, dy, w in observables.near_ball(100.0, 20.0, 3).tolist()
    }


def _grid_state(shape, kind):
    st = State.empty(Grid(tuple(shape), 20.0), 0)
    st.kind[:] = kind
    return st


#: spacings: d/dx an exact integer (20, 25, 12.5), offsets on the sphere |o| dx == d (20: (3, 4);
#: 100/sqrt(2): (1, 1) in float64), d/dx not exact in float64 (100/3, 100/7), d < dx
SPACINGS = [20.0, 25.0, 12.5, 100 / math.sqrt(2), 100 / math.sqrt(5), 100 / 3, 100 / 7, 150.0]


@pytest.mark.parametrize("dx", SPACINGS)
@pytest.mark.parametrize("shape", [(37, 29), (9, 14, 11)])
def test_near_caf_is_the_distance_transform(shape, dx, launcher):
    """The ball gives the distance transform's near set on random CAF layouts (CAFs on the
    grid's edges included), through near_caf(), the numpy twin's counts and the kernel's."""
    g = np.random.default_rng(int(dx * 1000) + len(shape))
    n = int(np.prod(shape))
    rows = observables.near_ball(schema.NEAR_CAF_UM, dx, len(shape))
    ball = int((2 * rows[:, 2] + 1).sum())  # voxels in the ball
    for per_ball in (0.1, 0.5, 1.5):  # CAFs per ball volume: sparse to mostly covered
        caf = g.random(n) < min(0.5, per_ball / ball)
        caf.reshape(shape)[(0,) * len(shape)] = True  # a corner
        kind = np.where(caf, codes.CAF, codes.TUMOR).astype(np.uint8)
        want = edt_near(kind, shape, dx)
        assert 0 < np.count_nonzero(want) < n
        np.testing.assert_array_equal(observables.near_caf(kind, shape, dx), want)
        st = _grid_state(shape, kind)
        st.tumor_state[:] = np.where(caf, 0, codes.PERSISTER)
        args = (st, shape, 0, -1, np.float32(0), rows)
        tot = observables.numpy_totals(*args)
        n_near = np.count_nonzero(want & ~caf)
        assert tot[observables.OBS["NEAR_TUMOR"]] == n_near
        assert tot[observables.OBS["NEAR_PERSISTERS"]] == n_near
        np.testing.assert_array_equal(observables.kernel_totals(*args, launcher), tot)
        # tumor only in a box touching one edge, CAFs all around it: the numpy twin reads the
        # box grown by the ball's reach, the kernel the whole grid
        lo = [int(g.integers(0, s // 2)) for s in shape]
        lo[-1] = 0
        box = tuple(slice(a, a + max(2, s // 3)) for a, s in zip(lo, shape))
        tum = np.zeros(shape, dtype=bool)
        tum[box] = True
        tum = tum.ravel() & ~caf
        st.kind[:] = np.where(caf, codes.CAF, np.where(tum, codes.TUMOR, codes.EMPTY))
        st.tumor_state[:] = np.where(tum, g.integers(1, 5, n), 0)
        pers = tum & ((st.tumor_state == codes.PERSISTER) | (st.tumor_state == codes.EXPANDED))
        tot = observables.numpy_totals(*args)
        assert tot[observables.OBS["NEAR_TUMOR"]] == np.count_nonzero(want & tum)
        assert tot[observables.OBS["NEAR_PERSISTERS"]] == np.count_nonzero(want & pers)
        np.testing.assert_array_equal(observables.kernel_totals(*args, launcher), tot)


def test_near_caf_on_the_sphere():
    """One CAF in the middle of a 3D grid at dx = 20 um: (0, 3, 4) voxels away is 100 um and
    near, (0, 4, 4) is 113 um and not; so is it at the grid's edge (a CAF in the corner)."""
    shape = (13, 13, 13)
    kind = np.zeros(int(np.prod(shape)), dtype=np.uint8)
    k3 = kind.reshape(shape)
    k3[6, 6, 6] = codes.CAF
    near = observables.near_caf(kind, shape, 20.0).reshape(shape)
    assert near[6, 9, 10] and near[6, 6, 11] and near[9, 10, 6]
    assert not near[6, 10, 10] and not near[7, 7, 11] and not near[6, 6, 12]
    k3[...] = 0
    k3[0, 0, 0] = codes.CAF
    near = observables.near_caf(kind, shape, 20.0).reshape(shape)
    assert near[0, 3, 4] and near[5, 0, 0] and not near[0, 4, 4] and not near[1, 1, 5]


# ------------------------------------------------------------------------------------ GPU
@pytest.mark.parametrize("case", ["2d-wide", "3d-odd"])
def test_gpu_row_from_device_arrays(gpu_launcher, case):
    """On a GPU with the state on the device: the row (through the backend's launcher, or the
    device's own without one) and near_caf() are the CPU's, bit for bit."""
    import cupy

    sc = model_scenario(*CASES[case])
    st = random_state(sc, 13)
    want = observables.observe(st, sc)
    dev = st.to_backend(cupy.asarray)
    assert rows_equal(observables.observe(dev, sc, launcher=gpu_launcher), want)
    assert rows_equal(observables.observe(dev, sc), want)
    near = observables.near_caf(dev.kind, sc.grid.shape, sc.grid.dx_um)
    np.testing.assert_array_equal(
        cupy.asnumpy(near), edt_near(st.kind, sc.grid.shape, sc.grid.dx_um)
    )
