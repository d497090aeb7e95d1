"""Therapy (tmesim.steps.therapy): the drugs' tissue levels as the rules read them."""

from __future__ import annotations

import numpy as np

from tmesim.backend import CPU
from tmesim.simulation import Model

from ..helpers import model_scenario


def test_tissue_levels_is_a_view_of_consecutive_drug_fields():
    """The rules read the drug fields in place (no copy of a grid per drug and step)."""
    m = Model(model_scenario("2d-adi"), CPU())
    st, th = m.state, m.therapy
    levels = th.tissue_levels(st)
    assert th.consecutive and np.shares_memory(levels, st.fields)
    np.testing.assert_array_equal(levels, st.fields[th.field_index])
    th.consecutive = False  # the general path: a copy of the same values
    copy = th.tissue_levels(st)
    assert not np.shares_memory(copy, st.fields)
    np.testing.assert_array_equal(copy, levels)
