"""The counter-based generator's kernel (kernels/rng.cuh, driven by tmesim.rng_kernel) against
tmesim.rng: the random words and uniforms bit-identical, for any seed, step, stream, lane and site,
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


@pytest.mark.parametrize("seed", [0, 20101, 2**64 - 1])
def test_rng_lane_words_bit_exact(launcher, seed):
    """The words of the fourth counter word, lane (kernels/rng.cuh tm_rng_word_lane, drawn by the
    push walks of kernels/mechanics.cu; rng_kernel.raw_at(..., lane=)), against
    rng.raw_at(..., lane=...): clustered and sparse sites (numpy's two paths), lanes from 0 to
    2**64 - 1."""
    g = np.random.default_rng(seed % 977)
    for lane in [0, 1, 2, 7, 1000, 2**32 + 3, 2**64 - 1]:
        step = int(g.integers(0, 2**40))
        for sites in (
            int(g.integers(0, 2**40)) + g.permutation(131)[:100],  # clustered
            g.integers(0, 2**44, 50),  # sparse: rng.philox_at
        ):
            want = rng.raw_at(seed, step, rng.PUSH_PATH, sites, lane=lane)
            got = rng_kernel.raw_at(seed, step, rng.PUSH_PATH, sites, lane=lane, launcher=launcher)
            np.testing.assert_array_equal(got, want)
            if lane:
                assert not np.array_equal(got, rng.raw_at(seed, step, rng.PUSH_PATH, sites))
    # one whole block against the integer spelling of Philox, lane in the fourth counter word
    got = rng_kernel.raw_at(seed, 9, 22, np.arange(8, 12), lane=5, launcher=launcher)
    assert [int(w) for w in got] == list(rng.philox4x64_reference((3, 9, 22, 5), (seed, 0)))
    assert rng_kernel.raw_at(seed, 9, 22, [], lane=5, launcher=launcher).size == 0


def test_lane_kernel_at_lane_0_is_the_plain_word(launcher):
    """tm_rng_raw_at_lane at lane 0 (the first hop of every push walk) gives tm_rng_raw_at's
    words; rng_kernel.raw_at launches the plain kernel for lane 0, so it is launched here."""
    sites = np.array([0, 5, 3, 2**40 + 7, 4, 4], dtype=np.int64)
    out = np.zeros(sites.size, dtype=np.uint64)
    counters = (np.uint64(2**64 - 1), np.uint64(123), np.uint64(rng.PUSH_PATH), np.uint64(0))
    launcher("tm_rng_raw_at_lane", sites.size, np.int64(sites.size), *counters, sites, out)
    np.testing.assert_array_equal(out, rng.raw_at(2**64 - 1, 123, rng.PUSH_PATH, sites))
