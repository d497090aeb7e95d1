"""The counter-based generator: known answers, a pure function of its counter, uniform,
independent."""

import numpy as np
import pytest
from scipy import stats

from tmesim import rng

# Random123's known-answer vectors for philox4x64-10 (kat_vectors): counter, key, output.
KAT = [
    (
        [0, 0, 0, 0],
        [0, 0],
        [0x16554D9ECA36314C, 0xDB20FE9D672D0FDC, 0xD7E772CEE186176B, 0x7E68B68AEC7BA23B],
    ),
    (
        [2**64 - 1] * 4,
        [2**64 - 1] * 2,
        [0x87B092C3013FE90B, 0x438C3C67BE8D0224, 0x9CC7D7C69CD777B6, 0xA09CAEBF594F0BA0],
    ),
    (
        [0x243F6A8885A308D3, 0x13198A2E03707344, 0xA4093822299F31D0, 0x082EFA98EC4E6C89],
        [0x452821E638D01377, 0xBE5466CF34E90C6C],
        [0xA528F45403E61D95, 0x38C72DBD566E9788, 0xA5A1610E72FD18B5, 0x57BD43B5E52B7FE6],
    ),
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


@pytest.mark.parametrize(
    "other",
    [
        dict(seed=1, step=1, stream=rng.DIVIDE),  # next step
        dict(seed=1, step=0, stream=rng.NECROSIS),  # other stream
        dict(seed=2, step=0, stream=rng.DIVIDE),  # other seed
    ],
)
def test_streams_steps_and_seeds_are_independent(other):
    """Correlation between sequences is within the sampling bound 4/sqrt(n), also for neighbours."""
    n = 200_000
    a = rng.uniform_range(1, 0, rng.DIVIDE, n)
    b = rng.uniform_range(other["seed"], other["step"], other["stream"], n)
    bound = 4 / np.sqrt(n)
    assert abs(np.corrcoef(a, b)[0, 1]) < bound
    assert abs(np.corrcoef(a[1:], a[:-1])[0, 1]) < bound  # adjacent sites
    assert abs(np.corrcoef(a[4:], a[:-4])[0, 1]) < bound  # same lane of the next block
    # pairs are uniform on the unit square (2D chi-square on a 10 x 10 grid)
    h = np.histogram2d(a, b, bins=10, range=[[0, 1], [0, 1]])[0].ravel()
    assert stats.chisquare(h).pvalue > 1e-4


@pytest.mark.parametrize("lane", [0, 1, 7, 2**64 - 1])
def test_sparse_sites_get_the_words_of_their_counters(rng_np, lane):
    """philox_at (the rounds on each site's own counter, what raw_at takes for sparse sites) gives
    the words of numpy's Philox over the whole range, in every lane (the fourth counter word),
    and of the specification itself."""
    sites = np.unique(rng_np.integers(0, 4 * 10**6, size=300))
    sites = np.concatenate([sites, sites[:5]])  # repeats too
    seed, step, stream = int(rng_np.integers(0, 2**63)), 12345, rng.PUSH_PATH
    sparse = rng.philox_at(seed, step, stream, sites, lane)
    dense = rng.raw_range(seed, step, stream, 0, 4 * 10**6, lane)[sites]
    np.testing.assert_array_equal(sparse, dense)
    np.testing.assert_array_equal(rng.raw_at(seed, step, stream, sites, lane=lane), dense)
    for s, w in zip(sites[:10], sparse[:10]):
        ref = rng.philox4x64_reference([s // 4 + 1, step, stream, lane], [seed, 0])
        assert int(w) == ref[s % 4]
    if lane:
        assert not np.array_equal(sparse, rng.philox_at(seed, step, stream, sites, 0))
