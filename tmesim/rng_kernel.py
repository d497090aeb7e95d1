"""The counter-based generator on the kernels (``kernels/rng.cu``): twins of
:func:`tmesim.rng.raw_at` and :func:`tmesim.rng.uniform_at`, same arguments plus the launcher to
run on, same numbers bit for bit (tests/test_rng_kernel.py).
"""

from __future__ import annotations

import numpy as np


def _sites(L, sites):
    return L.xp.ascontiguousarray(L.xp.asarray(sites, dtype=L.xp.int64).reshape(-1))


def raw_at(seed: int, step: int, stream: int, sites, *, launcher):
    """Philox words (uint64) at ``sites``: twin of :func:`tmesim.rng.raw_at`.

    Args:
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    L = launcher
    sites = _sites(L, sites)
    out = L.xp.empty(sites.size, dtype=L.xp.uint64)
    if sites.size:
        L(
            "tm_rng_raw_at",
            sites.size,
            np.int64(sites.size),
            np.uint64(seed),
            np.uint64(step),
            np.uint64(stream),
            sites,
            out,
        )
    return out


def uniform_at(seed: int, step: int, stream: int, sites, *, launcher):
    """Uniform float64 in [0, 1) at ``sites``: twin of :func:`tmesim.rng.uniform_at`.

    Args:
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    L = launcher
    sites = _sites(L, sites)
    out = L.xp.empty(sites.size, dtype=L.xp.float64)
    if sites.size:
        L(
            "tm_rng_uniform_at",
            sites.size,
            np.int64(sites.size),
            np.uint64(seed),
            np.uint64(step),
            np.uint64(stream),
            sites,
            out,
        )
    return out
