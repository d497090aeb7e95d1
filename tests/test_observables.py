"""Observables (tmesim.observables): every column of a row against plain numpy reductions of the
same arrays."""

from __future__ import annotations

import numpy as np

from tmesim.backend import CPU
from tmesim.simulation import Model

from .helpers import model_scenario


def test_observe_is_numpy_number_for_number():
    """observe() reduces sums and counts and divides on the host; every column is what the
    plain numpy means give, to the last bit (random lattice with every kind and state)."""
    from tmesim import codes, observables

    sc = model_scenario("2d-adi")
    m = Model(sc, CPU())
    st = m.state
    g = np.random.default_rng(3)
    st.kind[:] = g.integers(0, len(codes.KIND_NAMES), st.kind.size)
    tumor = st.kind == codes.TUMOR
    st.tumor_state[:] = np.where(tumor, g.integers(1, 4, st.kind.size), 0)
    st.memory[:] = g.random(st.kind.size, dtype=np.float32)
    st.time_in_P_min[:] = g.uniform(0, 500, st.kind.size).astype(np.float32)
    st.fields[:] = g.uniform(0, 40, st.fields.shape).astype(np.float32)
    row = observables.observe(st, sc)
    pers = tumor & (st.tumor_state == codes.PERSISTER)
    assert row["mean_memory"] == float(st.memory[tumor].mean(dtype=np.float64))
    assert row["mean_time_in_P_h"] == float(st.time_in_P_min[pers].mean(dtype=np.float64) / 60)
    o2 = st.fields[sc.field_names.index("oxygen")][tumor]
    assert row["hypoxic_fraction"] == float(np.mean(o2 < sc.tumor.hypoxic_threshold_mmHg))
    for i, name in enumerate(sc.field_names):
        assert row[f"mean_{name}"] == float(st.fields[i].mean(dtype=np.float64))
        assert row[f"mean_{name}_tumor"] == float(st.fields[i][tumor].mean(dtype=np.float64))
    near = observables.near_caf(st.kind, sc.grid.shape, sc.grid.dx_um)
    assert row["tumor_near_caf_fraction"] == np.count_nonzero(near & tumor) / row["burden"]
    assert row["n_P"] == np.count_nonzero(pers) and row["burden"] == np.count_nonzero(tumor)
