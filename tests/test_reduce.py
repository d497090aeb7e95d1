"""The deterministic reduction order (tmesim.reduce, kernels/reduce.cuh): numpy's twin against a
pure-Python reading of the definition, and the kernels against numpy bit for bit in every work
order."""

from __future__ import annotations

import numpy as np
import pytest

from tmesim import reduce

#: (m0, P): P < 256, P not a multiple of 256, P a multiple, m0 = 1, P = 1
SIZES = [(1, 7), (3, 5), (1, 1), (5, 300), (2, 513), (7, 256), (4, 1000)]


def reference(values, m0, p):
    """The definition, literally, with Python floats (IEEE double, round to nearest)."""
    vals = [float(x) for x in np.asarray(values, dtype=np.float64).reshape(-1)]
    q = len(vals) // (m0 * p)
    out = []
    for k in range(q):
        cols = []
        for j in range(p):
            acc = 0.0
            for i in range(m0 - 1, -1, -1):
                acc = acc + vals[k * m0 * p + i * p + j]
            cols.append(acc)
        sh = []
        for t in range(256):
            acc = 0.0
            for c in range(t, p, 256):
                acc = acc + cols[c]
            sh.append(acc)
        s = 128
        while s >= 1:
            for t in range(s):
                sh[t] = sh[t] + sh[t + s]
            s //= 2
        out.append(sh[0])
    return np.array(out)


def awkward(g, shape):
    """Values of wide-ranging magnitudes and both signs, whose sum depends on the order."""
    return g.standard_normal(shape) * 10.0 ** g.integers(-12, 12, shape)


@pytest.mark.parametrize("m0,p", SIZES)
def test_numpy_twin_is_the_definition(m0, p):
    g = np.random.default_rng(m0 * 1000 + p)
    v = awkward(g, (3, m0 * p))
    got = reduce.reduce_sites(v, (m0, p))
    np.testing.assert_array_equal(got, reference(v, m0, p))


def test_order_matters_for_these_values():
    """The check above is sensitive: with these values another order (numpy's pairwise sum, or
    the columns added upwards) gives other bits somewhere."""
    g = np.random.default_rng(7)
    m0, p = 4, 1000
    v = awkward(g, (8, m0 * p))
    ours = reduce.reduce_sites(v, (m0, p))
    assert np.any(ours != v.sum(axis=1))
    v3 = v.reshape(8, m0, p)
    up = reduce.tree_sums(reduce.column_sums(lambda i: v3[:, m0 - 1 - i], m0, 8, p))
    assert np.any(ours != up)


def test_grid_split():
    assert reduce.grid_split((24, 24)) == (24, 24)
    assert reduce.grid_split((5, 17, 31)) == (5, 527)
    assert reduce.grid_split((1, 3, 4)) == (1, 12)


def test_counts_are_exact():
    """Counts as float64 contributions of 1.0 sum exactly (the totals of observables)."""
    g = np.random.default_rng(1)
    b = (g.random((2, 6 * 333)) < 0.4).astype(np.float64)
    np.testing.assert_array_equal(reduce.reduce_sites(b, (6, 333)), b.sum(axis=1))


@pytest.mark.parametrize("order", [0, 1, 2])
@pytest.mark.parametrize("m0,p", SIZES)
def test_kernels_match_numpy(launcher, order, m0, p):
    """tm_reduce_columns + tm_reduce_tree give numpy's twin's bits in every work order."""
    g = np.random.default_rng(m0 * 7 + p)
    q = 3
    v = awkward(g, (q, m0 * p))
    cols = np.full((q, p), np.nan)
    out = np.full(q, np.nan)
    set_order = getattr(launcher, "set_order", lambda mode: None)  # a GPU has its own order
    set_order(order)
    try:
        launcher("tm_reduce_columns", q * p, v, np.int64(q), np.int64(m0), np.int64(p), cols)
        launcher("tm_reduce_tree", q * reduce.W, cols, np.int64(q), np.int64(p), out)
    finally:
        set_order(0)
    want_cols = reduce.column_sums(lambda i: v.reshape(q, m0, p)[:, i], m0, q, p)
    np.testing.assert_array_equal(cols, want_cols)
    np.testing.assert_array_equal(out, reduce.tree_sums(want_cols))
    np.testing.assert_array_equal(out, reference(v, m0, p))
