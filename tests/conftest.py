import numpy as np
import pytest

from tmesim import launch
from tmesim.backend import Portable


@pytest.fixture
def rng_np():
    return np.random.default_rng(12345)


class MirrorLauncher:
    """Runs each kernel launch on the GPU with numpy arguments: copies arrays to the device,
    launches, copies every array back (outputs and in-place updates; inputs come back unchanged),
    so the CPU parity tests' bodies and exact expectations apply unchanged on a GPU."""
    xp = np

    def __init__(self):
        import cupy
        from tmesim.launch import CupyLauncher
        self.cupy = cupy
        self.gpu = CupyLauncher(0)

    def set_order(self, mode):
        """Thread order is the hardware's on a GPU: nothing to set."""

    def __call__(self, name, n_work, *args):
        cp = self.cupy
        dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        self.gpu(name, n_work, *dev)
        for a, d in zip(args, dev):
            if isinstance(a, np.ndarray):
                a[...] = cp.asnumpy(d)


def portable_launcher():
    """The kernels compiled as C++ (cached by content hash in the per-user build folder), in
    forward work order."""
    from tmesim.launch import PortableLauncher, build_portable
    portable = PortableLauncher(build_portable())
    portable.set_order(0)
    return portable


@pytest.fixture(scope="module")
def launcher():
    """The kernels' portable C++ build; tests/test_gpu_parity.py overrides this fixture with the
    GPU (MirrorLauncher) and reruns the parity tests there. Work order is reset after each
    module."""
    portable = portable_launcher()
    yield portable
    portable.set_order(0)


@pytest.fixture(scope="module")
def portable():
    """The Portable backend (the kernels' C++ build on numpy arrays), in forward work order."""
    if launch.find_cxx() is None:
        pytest.skip("no C++ compiler")
    p = Portable()
    p.launcher().set_order(0)
    yield p
    p.launcher().set_order(0)
