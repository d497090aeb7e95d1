"""The counter-based generator on the kernels (``kernels/rng.cu``): twins of
:func:`tmesim.rng.raw_at` and :func:`tmesim.rng.uniform_at`, same arguments plus the launcher to
run on, same numbers bit for bit (tests/test_rng_kernel.py).
"""

from __future__ import annotations

import numpy as np


def _at(kernel: str, dtype, seed: int, step: int, stream: int, sites, launcher):
    """One value of ``dtype`` per site from ``kernel`` (tm_rng_raw_at or tm_rng_uniform_at)."""
    xp = launcher.xp
    sites = xp.ascontiguousarray(xp.asarray(sites, dtype=xp.int64).reshape(-1))
    out = xp.empty(sites.size, dtype=dtype)
    if sites.size:
        counters = (np.uint64(seed), np.uint64(step), np.uint64(stream))
        launcher(kernel, sites.size, np.int64(sites.size), *counters, sites, out)
    return out


def raw_at(seed: int, step: int, stream: int, sites, *, launcher):
    """Philox words (uint64) at ``sites``: twin of :func:`tmesim.rng.raw_at`.

    Args:
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    return _at("tm_rng_raw_at", np.uint64, seed, step, stream, sites, launcher)


def uniform_at(seed: int, step: int, stream: int, sites, *, launcher):
    """Uniform float64 in [0, 1) at ``sites``: twin of :func:`tmesim.rng.uniform_at`.

    Args:
        launcher: a launcher of tmesim.launch; ``sites`` and the result are ``launcher.xp``
            arrays.
    """
    return _at("tm_rng_uniform_at", np.float64, seed, step, stream, sites, launcher)
