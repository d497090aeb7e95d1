"""Counter-based random numbers: a pure function of (seed, step, site, stream).

The generator is Philox4x64-10 (Salmon et al. 2011, "Parallel random numbers: as easy as 1, 2, 3",
SC'11), the block cipher behind Random123, cuRAND's Philox and numpy's ``Philox`` bit generator.
One Philox call maps a 256-bit counter and a 128-bit key to four 64-bit words. tmesim fixes

    key     = (seed, 0)
    counter = (site // 4 + 1, step, stream, lane)
    word    = output[site % 4]

``lane`` is 0 for every decision but those a cell takes several of in one step and stream (the
hops of a push path, tmesim.steps.mechanics): lane j is the j-th.

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
PUSH_PATH = 22  # which neighbour each hop of a push path takes (lane = hop)
INIT_STATE = 3  # initial persister / resistant cells
INIT_CAF = 4
INIT_TAM = 5

_M0 = 0xD2E7470EE14C6C93
_M1 = 0xCA5A826395121157
_W0 = 0x9E3779B97F4A7C15
_W1 = 0xBB67AE8584CAA73B
_MASK = (1 << 64) - 1


def raw_range(
    seed: int, step: int, stream: int, start: int, stop: int, lane: int = 0
) -> np.ndarray:
    """Philox words (uint64) for sites ``start <= site < stop``."""
    if stop <= start:
        return np.empty(0, dtype=np.uint64)
    first_block = start // 4
    n_blocks = (stop - 1) // 4 - first_block + 1
    bg = np.random.Philox(
        key=np.array([seed & _MASK, 0], dtype=np.uint64),
        counter=np.array([first_block, step & _MASK, stream, lane], dtype=np.uint64),
    )
    words = bg.random_raw(4 * n_blocks)
    off = start - 4 * first_block
    return words[off : off + (stop - start)]


#: raw_at generates the whole range its sites span (numpy's Philox at C speed, about 7 ns a word)
#: unless the span exceeds SPARSE_SPAN words per site plus SPARSE_FIXED; then it runs the rounds
#: on the sites' own counters (about 0.4 us a site and 0.6 ms a call in numpy operations)
SPARSE_SPAN = 48
SPARSE_FIXED = 80_000


def raw_at(seed: int, step: int, stream: int, sites: np.ndarray, lane: int = 0) -> np.ndarray:
    """Philox words (uint64) at arbitrary flat ``sites`` (any order, repeats allowed).

    Clustered sites: the range they span, from numpy's Philox. Sparse ones (a span above
    ``SPARSE_SPAN`` times their number plus ``SPARSE_FIXED``): :func:`philox_at`, the same words
    from the sites' own counters."""
    sites = np.asarray(sites, dtype=np.int64)
    if sites.size == 0:
        return np.empty(0, dtype=np.uint64)
    lo = int(sites.min())
    hi = int(sites.max()) + 1
    if hi - lo > SPARSE_SPAN * sites.size + SPARSE_FIXED:
        return philox_at(seed, step, stream, sites, lane)
    return raw_range(seed, step, stream, lo, hi, lane)[sites - lo]


_LO32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _mulhilo(m: int, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """High and low 64-bit halves of the 128-bit products m * a (uint64 arrays, m a constant),
    from 32-bit pieces."""
    m_lo, m_hi = np.uint64(m & 0xFFFFFFFF), np.uint64(m >> 32)
    a_lo, a_hi = a & _LO32, a >> _S32
    ll, lh, hl, hh = a_lo * m_lo, a_lo * m_hi, a_hi * m_lo, a_hi * m_hi
    cross = (ll >> _S32) + (lh & _LO32) + (hl & _LO32)
    hi = hh + (lh >> _S32) + (hl >> _S32) + (cross >> _S32)
    return hi, a * np.uint64(m)


def philox_at(seed: int, step: int, stream: int, sites: np.ndarray, lane: int = 0) -> np.ndarray:
    """The words of :func:`raw_at` computed site by site: Philox4x64-10 on the counters
    (site // 4 + 1, step, stream, lane), vectorised over the sites (cost proportional to their
    number, not to their span)."""
    sites = np.asarray(sites, dtype=np.int64)
    u = sites.astype(np.uint64)
    c0 = (u >> np.uint64(2)) + np.uint64(1)
    n = sites.size
    c1 = np.full(n, step & _MASK, dtype=np.uint64)
    c2 = np.full(n, stream & _MASK, dtype=np.uint64)
    c3 = np.full(n, lane & _MASK, dtype=np.uint64)
    k0, k1 = seed & _MASK, 0
    with np.errstate(over="ignore"):
        for r in range(10):
            if r:
                k0 = (k0 + _W0) & _MASK
                k1 = (k1 + _W1) & _MASK
            hi0, lo0 = _mulhilo(_M0, c0)
            hi1, lo1 = _mulhilo(_M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
    q = sites & 3
    return np.choose(q, (c0, c1, c2, c3))


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
