"""Fixtures every test module may take, and the rule of the ``gpu`` mark.

The kernels run on two launchers, and every parity test takes the ``launcher`` fixture so that it
runs on both: ``portable`` (the CUDA sources compiled as plain C++, forward work order; skipped
without a C++ compiler) and ``gpu`` (marked ``gpu``: the same test body through MirrorLauncher,
which copies numpy arrays to the device and back). On a machine with a GPU, ``pytest -m gpu`` runs
every parity test there, with the portable build's exact expectations.

A test marked ``gpu`` skips cleanly without cupy and a CUDA device; a test that takes
``gpu_launcher`` or ``gpu_backend`` (arrays kept on the device) is marked ``gpu`` here.
"""

from __future__ import annotations

import numpy as np
import pytest

from tmesim import launch
from tmesim.backend import GPU, Portable, gpu_available

from .helpers import needs_cxx

#: fixtures that put arrays on a GPU: a test taking one is marked ``gpu``
GPU_FIXTURES = ("gpu_launcher", "gpu_backend")


def pytest_addoption(parser, pluginmanager):
    # setup.cfg configures pytest-xvfb's display; where that plugin is missing or disabled
    # (-p no:xvfb), its settings are declared here so that pytest does not warn about them
    if not pluginmanager.has_plugin("xvfb"):
        for name in ("xvfb_width", "xvfb_height", "xvfb_colordepth"):
            parser.addini(name, "pytest-xvfb's setting (pytest-xvfb is not in use)")


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        if set(GPU_FIXTURES) & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gpu)
    marked = [item for item in items if item.get_closest_marker("gpu")]
    if marked and not gpu_available():
        skip = pytest.mark.skip(reason="needs cupy and a CUDA GPU")
        for item in marked:
            item.add_marker(skip)


@pytest.fixture
def rng_np():
    return np.random.default_rng(12345)


# ------------------------------------------------------------------------------------ launchers
class MirrorLauncher:
    """Runs each kernel launch on the GPU with numpy arguments: copies arrays to the device,
    launches, copies every array back (outputs and in-place updates; inputs come back unchanged),
    so the portable build's test bodies and exact expectations apply unchanged on a GPU."""

    xp = np

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.gpu = launch.CupyLauncher(0)

    def set_order(self, mode):
        """Thread order is the hardware's on a GPU: nothing to set."""

    def __call__(self, name, n_work, *args):
        cp = self.cupy
        dev = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
        self.gpu(name, n_work, *dev)
        for a, d in zip(args, dev):
            if isinstance(a, np.ndarray):
                a[...] = cp.asnumpy(d)


@pytest.fixture(
    scope="module",
    params=[pytest.param("portable", marks=needs_cxx), pytest.param("gpu", marks=pytest.mark.gpu)],
)
def launcher(request):
    """The kernels' launcher, on numpy arrays: ``portable``, the C++ build (cached by content
    hash in the per-user build folder) in forward work order, reset after each module (tests of
    other orders call ``set_order``); ``gpu``, MirrorLauncher on GPU 0."""
    if request.param == "gpu":
        yield MirrorLauncher()
        return
    portable = launch.PortableLauncher(launch.build_portable())
    portable.set_order(0)
    yield portable
    portable.set_order(0)


@pytest.fixture(scope="module")
def gpu_launcher():
    """GPU 0's launcher, for tests that keep their arrays on the device (marked ``gpu``)."""
    return launch.CupyLauncher(0)


# ------------------------------------------------------------------------------------ backends
class LauncherBackend(Portable):
    """The Portable backend (numpy arrays) with its kernels launched by a given launcher: the C++
    build, or a GPU through MirrorLauncher; a whole model on either must be the CPU's run bit for
    bit."""

    def __init__(self, launcher):
        super().__init__()
        self.given = launcher

    def launcher(self):
        return self.given


@pytest.fixture(scope="module")
def kernel_backend(launcher):
    """A backend of numpy arrays stepped by ``launcher`` (each of its parameters)."""
    return LauncherBackend(launcher)


@pytest.fixture(scope="module")
def portable():
    """The Portable backend (the kernels' C++ build on numpy arrays), in forward work order."""
    if launch.find_cxx() is None:
        pytest.skip("no C++ compiler")
    p = Portable()
    p.launcher().set_order(0)
    yield p
    p.launcher().set_order(0)


@pytest.fixture(scope="module")
def gpu_backend():
    """The GPU backend on device 0 (cupy arrays; marked ``gpu``)."""
    return GPU(0)
