"""The counter-based generator on the kernels (``kernels/rng.cu``): twins of
:func:`tmesim.rng.raw_at` (any lane) and :func:`tmesim.rng.uniform_at`, same arguments plus the
launcher to run on, same numbers bit for bit (tests/test_rng_kernel.py).
"""

from __future__ import annotations

import numpy as np


def _at(kernel: str, dtype, counters: tuple, sites, launcher):
    """One value of ``dtype`` per site from ``kernel`` (tm_rng_raw_at, tm_rng_raw_at_lane or
    tm_rng_uniform_at), given its scalar arguments ``counters`` (uint64 each)."""
    xp = launcher.xp
    sites = xp.ascontiguousarray(xp.asarray(sites, dtype=xp.int64).reshape(-1))
    out = xp.empty(sites.size, dtype=dtype)
    if sites.size:
        args = tuple(np.uint64(c) for c in counters)
        launcher(kernel, sites.size, np.int64(sites.size), *args, sites, out)
    return out


def raw_at(seed: int, step: int, stream: int, sites, *, lane: int = 0, launcher):
    """Philox words (uint64) at ``sites``: twin of :func:`tmesim.rng.raw_at`, with the fourth
    counter word ``lane`` (0 for every decision but the hops of a push path, which draw at
    lane = hop: kernels/mechanics.cu).

    Args:
        lane: the lane, 0 to 2**64 - 1 (0: ``tm_rng_raw_at``; any other: ``tm_rng_raw_at_lane``).
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    if lane:
        return _at("tm_rng_raw_at_lane", np.uint64, (seed, step, stream, lane), sites, launcher)
    return _at("tm_rng_raw_at", np.uint64, (seed, step, stream), sites, launcher)


def uniform_at(seed: int, step: int, stream: int, sites, *, launcher):
    """Uniform float64 in [0, 1) at ``sites``: twin of :func:`tmesim.rng.uniform_at` (lane 0,
    as every uniform the rules draw).

    Args:
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    return _at("tm_rng_uniform_at", np.float64, (seed, step, stream), sites, launcher)
