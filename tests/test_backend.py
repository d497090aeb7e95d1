"""Backends (tmesim.backend): which one ``auto`` picks, what each says about itself, and the only
doors between host and device memory."""

from __future__ import annotations

import numpy as np
import pytest

from tmesim import launch
from tmesim.backend import CPU, Portable
from tmesim.simulation import step_classes

from .helpers import needs_cxx


def test_backend_selection():
    """auto keeps to the CPU until the kernels are verified on a GPU
    (tmesim.backend.GPU_VERIFIED) or when there is none; gpu without a device is a clear error;
    an unknown backend is named."""
    from tmesim import backend
    from tmesim.errors import UserError

    if not (backend.GPU_VERIFIED and backend.gpu_available()):
        assert backend.get_backend("auto").name == "cpu"
    if not backend.gpu_available():
        with pytest.raises(UserError, match="--backend gpu"):
            backend.get_backend("gpu")
    with pytest.raises(UserError, match="expected auto, cpu or gpu"):
        backend.get_backend("tpu")


@needs_cxx
def test_backends_and_their_launchers():
    from tmesim.backend import get_backend

    assert CPU().launcher() is None and CPU().free_memory() is None
    p = get_backend("portable")
    assert isinstance(p, Portable) and p.name == "portable" and p.free_memory() is None
    L = p.launcher()
    assert isinstance(L, launch.PortableLauncher) and p.launcher() is L
    assert "portable" in p.device
    a = np.arange(5)
    assert p.to_host(p.to_device(a)) is a  # numpy arrays: nothing copied
    cls = step_classes(CPU())
    assert cls.launcher is None and cls.fields.__name__ == "FieldSolver"


@pytest.mark.gpu
def test_gpu_backend_round_trip(gpu_backend):
    import cupy

    b = gpu_backend
    a = np.arange(7, dtype=np.float32)
    d = b.to_device(a)
    assert isinstance(d, cupy.ndarray)
    np.testing.assert_array_equal(b.to_host(d), a)
    b.sync()
    assert b.device
