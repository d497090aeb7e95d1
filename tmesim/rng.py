"""Counter-based random numbers: a pure function of (seed, step, site, stream).

The generator is Philox4x64-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC'11), the block cipher behind Random123, cuRAND's Philox and numpy's ``Philox`` bit generator.
One Philox call maps a 256-bit counter and a 128-bit key to four 64-bit words. tmesim fixes

    key     = (seed, 0)
    counter = (site // 4 + 1, step, stream, 0)
    word    = output[site % 4]

so the number for a site never depends on which other sites asked, on array order, on threads or
on a restart. (The "+ 1" is numpy's Philox, which increments the counter before each block.) numpy
evaluates this at C speed; :func:`philox4x64_reference` spells the rounds out in plain integer
arithmetic, and the tests check both against Random123's known-answer vectors. A CUDA twin
(``kernels/rng.cuh``) computes the same words with ``__umul64hi``.

Uniform floats use the top 53 bits: ``u = (word >> 11) * 2**-53``, in [0, 1).
"""

from __future__ import annotations

import numpy as np

# Streams: one per independent decision, so a new rule never shifts the numbers of the old ones.
INIT_TUMOR = 1
INIT_VESSELS = 2
DIVIDE = 10
DIRECTION = 11
PRIORITY = 12
NECROSIS = 13
CLEARANCE = 14
TRANSITION = 15  # S->P, P->S, P->R
KILL = 16  # drug kill
MOVE = 17  # stromal cell attempts a move
MOVE_DIRECTION = 18  # which neighbour (and conflict priority)
RECRUIT = 19  # TAM recruitment at vessels
STROMA_DEATH = 20  # TAM turnover
CHEMOTAXIS = 21  # a TAM's step follows the signal or is random
INIT_STATE = 3  # initial persister / resistant cells
INIT_CAF = 4
INIT_TAM = 5

_M0 = 0xD2E7470EE14C6C93
_M1 = 0xCA5A826395121157
_W0 = 0x9E3779B97F4A7C15
_W1 = 0xBB67AE8584CAA73B
_MASK = (1 << 64) - 1


def raw_range(seed: int, step: int, stream: int, start: int, stop: int) -> np.ndarray:
    """Philox words (uint64) for sites ``start <= site < stop``."""
    if stop <= start:
        return np.empty(0, dtype=np.uint64)
    first_block = start // 4
    n_blocks = (stop - 1) // 4 - first_block + 1
    bg = np.random.Philox(
        key=np.array([seed & _MASK, 0], dtype=np.uint64),
        counter=np.array([first_block, step & _MASK, stream, 0], dtype=np.uint64),
    )
    words = bg.random_raw(4 * n_blocks)
    off = start - 4 * first_block
    return words[off : off + (stop - start)]


def raw_at(seed: int, step: int, stream: int, sites: np.ndarray) -> np.ndarray:
    """Philox words (uint64) at arbitrary flat ``sites`` (any order, repeats allowed).

    Generates the range spanned by the sites, so it is cheapest when they are clustered.
    """
    sites = np.asarray(sites, dtype=np.int64)
    if sites.size == 0:
        return np.empty(0, dtype=np.uint64)
    lo = int(sites.min())
    hi = int(sites.max()) + 1
    return raw_range(seed, step, stream, lo, hi)[sites - lo]


def to_uniform(words: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) from Philox words: (word >> 11) * 2**-53."""
    return (words >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def uniform_at(seed: int, step: int, stream: int, sites: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers for ``sites`` at ``step`` in ``stream``."""
    return to_uniform(raw_at(seed, step, stream, sites))


def uniform_range(seed: int, step: int, stream: int, n: int) -> np.ndarray:
    """Uniform [0, 1) numbers for sites 0 .. n-1."""
    return to_uniform(raw_range(seed, step, stream, 0, n))


def philox4x64_reference(counter, key, rounds: int = 10):
    """Philox4x64 on one block in Python integers: the specification, for tests.

    Args:
        counter: four 64-bit integers.
        key: two 64-bit integers.
    Returns:
        four 64-bit integers.
    """
    c0, c1, c2, c3 = (int(x) & _MASK for x in counter)
    k0, k1 = (int(x) & _MASK for x in key)
    for r in range(rounds):
        if r:
            k0 = (k0 + _W0) & _MASK
            k1 = (k1 + _W1) & _MASK
        p0 = _M0 * c0
        p1 = _M1 * c2
        hi0, lo0 = p0 >> 64, p0 & _MASK
        hi1, lo1 = p1 >> 64, p1 & _MASK
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3
