"""The CUDA kernels on a GPU (cupy RawModule) against numpy: skipped cleanly without one.

Two kinds of checks:
- every parity test of tests/test_kernels_cpu.py again, with the kernels launched on the GPU
  (MirrorLauncher copies numpy inputs to the device and results back, so the same test bodies and
  the same exact expectations apply: bit-identical random words, field primitives and lattices);
- the device-resident path: launch functions on cupy arrays, the tumor rules over several steps
  with the state kept on the GPU, and run-to-run bitwise determinism.
"""

from __future__ import annotations

import numpy as np
import pytest

from tmesim import codes, launch
from tmesim.backend import gpu_available
from tmesim.grid import Grid
from tmesim.steps import fields as F_
from tmesim.steps import fields_kernel as FK
from tmesim.steps.tumor import TumorRules
from tmesim.steps.tumor_kernel import KernelTumorRules

from .conftest import MirrorLauncher

# the CPU parity tests, collected again here: they take the `launcher` fixture of this module
from .steps.test_fields_kernel import (  # noqa: F401 - collected again with this module's launcher
    random_ghosts, test_laplacian_and_operator_bit_exact, test_pointwise_pieces_bit_exact,
    test_thomas_factored_bit_exact, test_thomas_solve_bit_exact, test_thomas_solve_diag_bit_exact)
from .steps.test_tumor_kernel import (  # noqa: F401 - collected again with this module's launcher
    GROWTH_CONFIGS, random_lattice, test_tumor_rules_identical_state, tumor_config)
from .test_rng_kernel import (  # noqa: F401 - collected again with this module's launcher
    test_rng_matches_the_reference_rounds, test_rng_repeats_and_empty,
    test_rng_words_and_uniforms_bit_exact)

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not gpu_available(), reason="needs cupy and a CUDA GPU")]


@pytest.fixture(scope="module")
def launcher():
    return MirrorLauncher()


@pytest.fixture(scope="module")
def gpu():
    return launch.CupyLauncher(0)


def test_module_is_built_once_per_device(gpu):
    assert launch.get_module(gpu.device_id) is launch.get_module(gpu.device_id)


def test_laplacian_on_device_arrays(gpu):
    import cupy
    g = np.random.default_rng(1)
    F, shape = 3, (33, 17, 20)
    c = g.uniform(0, 50, (F,) + shape).astype(np.float32)
    Dh2 = g.uniform(1, 300, F).astype(np.float32).reshape((F, 1, 1, 1))
    ghosts = random_ghosts(g, F, 3)
    want = F_.laplacian(c, Dh2, ghosts, np.empty_like(c))
    got = FK.laplacian(cupy.asarray(c), cupy.asarray(Dh2), ghosts,
                       cupy.empty(c.shape, cupy.float32), launcher=gpu)
    np.testing.assert_array_equal(cupy.asnumpy(got), want)


@pytest.mark.parametrize("shape,neighbourhood", [((96, 80), "moore"), ((20, 24, 22), "moore"),
                                                 ((20, 24, 22), "von_neumann")])
def test_tumor_rules_on_device_and_deterministic(gpu, shape, neighbourhood):
    """State kept on the GPU for several steps: identical to numpy, and two GPU runs identical
    (claims settle by integer atomicMax, so thread timing cannot change a winner)."""
    import cupy
    cfg = tumor_config(**GROWTH_CONFIGS["fast"])
    g = np.random.default_rng(7)
    grid = Grid(shape, 20.0, neighbourhood)
    kind, state, o2 = random_lattice(g, shape)
    ref = TumorRules(cfg, grid, 3, 6.0)
    k_ref, s_ref = kind.copy(), state.copy()
    runs = []
    for _ in range(2):
        ker = KernelTumorRules(cfg, grid, 3, 6.0, launcher=gpu)
        k_d, s_d, o_d = cupy.asarray(kind), cupy.asarray(state), cupy.asarray(o2)
        for step in range(8):
            ker.apply(k_d, s_d, o_d, step)
        runs.append((cupy.asnumpy(k_d), cupy.asnumpy(s_d)))
    for step in range(8):
        ref.apply(k_ref, s_ref, o2, step)
    for k_g, s_g in runs:
        np.testing.assert_array_equal(k_g, k_ref)
        np.testing.assert_array_equal(s_g, s_ref)
    assert (k_ref == codes.TUMOR).sum() > (kind == codes.TUMOR).sum()


def test_gpu_backend_round_trip():
    import cupy

    from tmesim.backend import GPU
    b = GPU(0)
    a = np.arange(7, dtype=np.float32)
    d = b.to_device(a)
    assert isinstance(d, cupy.ndarray)
    np.testing.assert_array_equal(b.to_host(d), a)
    b.sync()
    assert b.device
