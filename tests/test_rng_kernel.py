"""The counter-based generator's kernel (kernels/rng.cuh, driven by tmesim.rng_kernel) against
tmesim.rng: the random words and uniforms bit-identical, for any seed, step, stream and site,
whatever the sites' order, repeats and alignment.

Runs on the kernels' portable C++ build and on a GPU when one is present (the ``launcher``
fixture of tests/conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from tmesim import rng, rng_kernel

SEEDS = [0, 1, 11, 20101, 2**32 + 5, 2**63 + 12345, 2**64 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_rng_words_and_uniforms_bit_exact(launcher, seed):
    g = np.random.default_rng(seed % 1000)
    for _ in range(6):
        step = int(g.integers(0, 2**40))
        stream = int(g.integers(0, 64))
        start = int(g.integers(0, 2**44))
        sites = start + g.permutation(257)[:200]  # clustered, shuffled, any alignment
        want = rng.raw_at(seed, step, stream, sites)
        got = rng_kernel.raw_at(seed, step, stream, sites, launcher=launcher)
        np.testing.assert_array_equal(got, want)
        u = rng_kernel.uniform_at(seed, step, stream, sites, launcher=launcher)
        np.testing.assert_array_equal(u, rng.to_uniform(want))
        assert u.dtype == np.float64 and (u >= 0).all() and (u < 1).all()


def test_rng_matches_the_reference_rounds(launcher):
    """Whole blocks against the integer spelling of Philox in rng.py (counter = block + 1)."""
    for seed, step, stream, block in [
        (5, 0, 10, 0),
        (2**64 - 1, 2**64 - 1, 21, 12345),
        (42, 7, 11, 2**50),
    ]:
        sites = np.arange(4 * block, 4 * block + 4)
        got = rng_kernel.raw_at(seed, step, stream, sites, launcher=launcher)
        ref = rng.philox4x64_reference((block + 1, step, stream, 0), (seed, 0))
        assert [int(w) for w in got] == list(ref)


def test_rng_repeats_and_empty(launcher):
    sites = np.array([9, 3, 9, 0, 3])
    np.testing.assert_array_equal(
        rng_kernel.raw_at(1, 2, 3, sites, launcher=launcher), rng.raw_at(1, 2, 3, sites)
    )
    assert rng_kernel.raw_at(1, 2, 3, [], launcher=launcher).size == 0
