"""The counter-based generator: known answers, a pure function of its counter, uniform,
independent."""

import numpy as np
import pytest
from scipy import stats

from tmesim import rng

# Random123's known-answer vectors for philox4x64-10 (kat_vectors): counter, key, output.
KAT = [
    ([0, 0, 0, 0], [0, 0],
     [0x16554d9eca36314c, 0xdb20fe9d672d0fdc, 0xd7e772cee186176b, 0x7e68b68aec7ba23b]),
    ([2**64 - 1] * 4, [2**64 - 1] * 2,
     [0x87b092c3013fe90b, 0x438c3c67be8d0224, 0x9cc7d7c69cd777b6, 0xa09caebf594f0ba0]),
    ([0x243f6a8885a308d3, 0x13198a2e03707344, 0xa4093822299f31d0, 0x082efa98ec4e6c89],
     [0x452821e638d01377, 0xbe5466cf34e90c6c],
     [0xa528f45403e61d95, 0x38c72dbd566e9788, 0xa5a1610e72fd18b5, 0x57bd43b5e52b7fe6]),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_matches_random123(counter, key, expected):
    assert list(rng.philox4x64_reference(counter, key)) == expected


def test_fast_path_is_the_specified_function(rng_np):
    """numpy's Philox at C speed gives word site%4 of
    Philox((site//4+1, step, stream, 0), (seed, 0))."""
    for _ in range(20):
        seed = int(rng_np.integers(0, 2**63))
        step = int(rng_np.integers(0, 10**6))
        stream = int(rng_np.integers(0, 100))
        sites = rng_np.integers(0, 10**6, size=5)
        got = rng.raw_at(seed, step, stream, sites)
        for s, w in zip(sites, got):
            ref = rng.philox4x64_reference([s // 4 + 1, step, stream, 0], [seed, 0])
            assert int(w) == ref[s % 4]


def test_value_depends_only_on_its_counter(rng_np):
    """The number of a site does not depend on which other sites are asked for, or their order."""
    sites = rng_np.integers(0, 50_000, size=2000)
    a = rng.uniform_at(3, 17, rng.DIVIDE, sites)
    perm = rng_np.permutation(len(sites))
    b = rng.uniform_at(3, 17, rng.DIVIDE, sites[perm])
    np.testing.assert_array_equal(a[perm], b)
    full = rng.uniform_range(3, 17, rng.DIVIDE, 50_000)
    np.testing.assert_array_equal(a, full[sites])
    again = rng.uniform_at(3, 17, rng.DIVIDE, sites)
    np.testing.assert_array_equal(a, again)


def test_uniform_in_unit_interval_and_uniform():
    u = rng.uniform_range(1, 0, rng.DIVIDE, 400_000)
    assert u.min() >= 0.0 and u.max() < 1.0
    # Kolmogorov-Smirnov against U(0,1); a correct generator fails at p < 1e-4 once in 10^4 runs
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    counts = np.histogram(u, bins=100, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-4


@pytest.mark.parametrize("other", [
    dict(seed=1, step=1, stream=rng.DIVIDE),        # next step
    dict(seed=1, step=0, stream=rng.NECROSIS),      # other stream
    dict(seed=2, step=0, stream=rng.DIVIDE),        # other seed
])
def test_streams_steps_and_seeds_are_independent(other):
    """Correlation between sequences is within the sampling bound 4/sqrt(n), also for neighbours."""
    n = 200_000
    a = rng.uniform_range(1, 0, rng.DIVIDE, n)
    b = rng.uniform_range(other["seed"], other["step"], other["stream"], n)
    bound = 4 / np.sqrt(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    assert abs(np.corrcoef(a[1:], a[:-1])[0, 1]) < bound   # adjacent sites
    assert abs(np.corrcoef(a[4:], a[:-4])[0, 1]) < bound   # same lane of the next block
    # pairs are uniform on the unit square (2D chi-square on a 10 x 10 grid)
    h = np.histogram2d(a, b, bins=10, range=[[0, 1], [0, 1]])[0].ravel()
    assert stats.chisquare(h).pvalue > 1e-4
