"""Per-voxel tables of one snapshot (tmesim.io.tables.cells, to_anndata), checked against the run
file's arrays read with h5py: the counts per kind and state, and every value at random voxels, in
2D and 3D."""

import h5py
import numpy as np
import pandas as pd
import pytest

import tmesim
from tmesim import codes
from tmesim.io.tables import cells, to_anndata

from ..helpers import CAF_AND_DRUG, SMALL_3D_SETS, make_scenario


@pytest.fixture(scope="module")
def run2d(tmp_path_factory):
    sc = make_scenario("init.tumor.persister_fraction=0.05", extra=CAF_AND_DRUG)
    return tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("t2") / "r.h5")


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    """A 10 x 12 x 14 lattice (no two axes alike, so a swapped axis shows)."""
    sc = make_scenario(*SMALL_3D_SETS)
    return tmesim.Simulation(sc, backend="cpu").run(tmp_path_factory.mktemp("t3") / "r.h5")


def _raw(path, i: int) -> dict:
    """Snapshot ``i`` as stored: kind, tumor_state, memory, fields, time (min), dx (um)."""
    with h5py.File(path, "r") as f:
        s = f["snapshots"]
        return {
            "kind": s["kind"][i],
            "tumor_state": s["tumor_state"][i],
            "memory": s["memory"][i],
            "fields": {n: d[i] for n, d in s["fields"].items()},
            "units": {n: d.attrs["units"] for n, d in s["fields"].items()},
            "time_min": float(s["time"][i]),
            "n": s["time"].shape[0],
            "dx": float(f.attrs["dx_um"]),
        }


@pytest.mark.parametrize("snapshot", [0, 2, -1])
def test_counts_per_kind_and_state_are_the_snapshot_bincounts(run2d, snapshot):
    raw = _raw(run2d, snapshot)
    df = cells(run2d, snapshot)
    kinds = np.bincount(raw["kind"].ravel(), minlength=len(codes.KIND_NAMES))
    assert kinds[codes.TUMOR] > 0 and kinds[codes.CAF] > 0 and kinds[codes.VESSEL] > 0
    got = df["kind"].value_counts()
    want = {n: int(kinds[c]) for c, n in enumerate(codes.KIND_NAMES)}
    want["empty"] = 0  # one row per occupied voxel
    assert {n: int(got[n]) for n in codes.KIND_NAMES} == want
    assert list(df["kind"].cat.categories) == list(codes.KIND_NAMES)
    occupied = raw["kind"] != codes.EMPTY
    states = np.bincount(raw["tumor_state"][occupied], minlength=len(codes.TUMOR_STATE_NAMES))
    got = df["tumor_state"].value_counts()
    assert {n: int(got[n]) for n in codes.TUMOR_STATE_NAMES} == {
        n: int(states[c]) for c, n in enumerate(codes.TUMOR_STATE_NAMES)
    }
    assert states[codes.SENSITIVE] > 0 and states[codes.PERSISTER] > 0
    assert len(df) == occupied.sum() and df.index.is_unique
    assert (df["snapshot"] == snapshot % raw["n"]).all()
    assert (df["time_min"] == raw["time_min"]).all() and df.attrs["time_min"] == raw["time_min"]


@pytest.mark.parametrize("which", ["run2d", "run3d"])
def test_values_at_random_voxels_are_the_file_values(which, request):
    path = request.getfixturevalue(which)
    raw = _raw(path, -1)
    df = cells(path)
    kind = raw["kind"]
    axes = ("z", "y", "x")[3 - kind.ndim :]
    assert [c for c in df.columns if c.startswith("i")] == [f"i{a}" for a in sorted(axes)]
    occupied = np.argwhere(kind != codes.EMPTY)
    rng = np.random.default_rng(7)
    for v in occupied[rng.choice(len(occupied), 25, replace=False)]:
        v = tuple(int(i) for i in v)
        row = df.loc[np.ravel_multi_index(v, kind.shape)]
        for a, i in zip(axes, v):
            assert row[f"i{a}"] == i and row[f"{a}_um"] == (i + 0.5) * raw["dx"]
        assert row["kind"] == codes.KIND_NAMES[kind[v]]
        assert row["tumor_state"] == codes.TUMOR_STATE_NAMES[raw["tumor_state"][v]]
        assert row["memory"] == raw["memory"][v]
        for name, arr in raw["fields"].items():
            assert row[name] == arr[v], name
    for name, units in raw["units"].items():
        assert df.attrs["units"][name] == units and df[name].dtype == np.float32


def test_a_dataset_or_a_path_give_the_same_table(run2d):
    with tmesim.open_run(run2d) as ds:
        a = cells(ds, 1)
        assert ds["kind"].variable._in_memory is False  # the open Dataset is left as it was
    pd.testing.assert_frame_equal(a, cells(run2d, 1))
    with pytest.raises(IndexError, match="snapshot 5 is out of range: the run has 5 snapshots"):
        cells(run2d, 5)


def test_to_anndata_holds_the_table(run2d):
    pytest.importorskip("anndata")
    df = cells(run2d)
    ad = to_anndata(run2d)
    assert ad.n_obs == len(df)
    raw = _raw(run2d, -1)
    assert list(ad.var_names) == ["memory", *raw["fields"]]
    assert "oxygen" in raw["fields"] and "erlotinib" in raw["fields"]
    assert list(ad.var["units"]) == ["1", *raw["units"].values()]
    for j, name in enumerate(ad.var_names):
        np.testing.assert_array_equal(ad.X[:, j], df[name].to_numpy(np.float32))
    np.testing.assert_array_equal(ad.obsm["spatial"], df[["x_um", "y_um"]].to_numpy())
    assert list(ad.obs["kind"]) == list(df["kind"])
    assert ad.uns["tmesim"]["time_min"] == df.attrs["time_min"]
