"""Where the arrays live and which code steps them: CPU (numpy), GPU (cupy + the CUDA kernels),
or Portable (numpy arrays stepped by the kernels' C++ build). Besides tmesim.launch, the only
module that imports cupy.

A backend is a value passed in (``CPU()``, ``GPU(0)``, ``Portable()``), not a global switch. Data
crosses between host and device only through :meth:`to_device` and :meth:`to_host` (and
:func:`as_host` for code that holds an array but not its backend). ``launcher()`` says which step
classes run: None means the numpy reference classes, a launcher means the kernel classes.
"""

from __future__ import annotations

import numpy as np

from .errors import UserError


class CPU:
    """numpy on the host: the reference implementation of every step."""

    name = "cpu"
    xp = np

    def to_device(self, a):
        return np.asarray(a)

    def to_host(self, a):
        return np.asarray(a)

    def sync(self):
        pass

    @property
    def device(self) -> str:
        import platform

        return platform.processor() or platform.machine()

    def launcher(self):
        """None: the steps are the numpy reference classes."""
        return None

    def free_memory(self) -> int | None:
        """Bytes free on the device; None: not checked (host memory, the OS's business)."""
        return None


class Portable(CPU):
    """numpy arrays on the host, stepped by the CUDA kernels compiled as plain C++
    (tmesim.launch.PortableLauncher): the GPU's code path, run on a CPU. For tests and for
    reproducing a kernel problem without a GPU; slow (sequential C++, one work item at a time).

    Args:
        lib: path of a prebuilt portable library (default: build it, cached by content hash).
    """

    name = "portable"

    def __init__(self, lib=None):
        self._lib = lib
        self._launcher = None

    @property
    def device(self) -> str:
        return f"portable C++ kernels on {CPU().device}"

    def launcher(self):
        """The portable launcher (built on first use, then the same one)."""
        if self._launcher is None:
            from .launch import PortableLauncher

            self._launcher = PortableLauncher(self._lib)
        return self._launcher


class GPU:
    """cupy on a CUDA device; the steps run as the kernels of ``kernels/*.cu`` (tmesim.launch).

    Args:
        device: CUDA device number.
    """

    name = "gpu"

    def __init__(self, device: int = 0):
        try:
            import cupy
        except ImportError as e:
            raise UserError("--backend gpu needs cupy: pip install 'tmesim[gpu]'") from e
        if not cupy.is_available():
            raise UserError("--backend gpu: cupy sees no usable CUDA GPU here")
        n = cupy.cuda.runtime.getDeviceCount()
        if not 0 <= device < n:
            raise UserError(f"--backend gpu: device {device} does not exist ({n} device(s))")
        self.xp = cupy
        self.device_id = device
        self._launcher = None

    def _dev(self):
        return self.xp.cuda.Device(self.device_id)

    def to_device(self, a):
        """A cupy array on this device (a copy if ``a`` lives elsewhere)."""
        with self._dev():
            return self.xp.asarray(a)

    def to_host(self, a):
        """A numpy array (copies from the device; numpy input passes through)."""
        return self.xp.asnumpy(a) if isinstance(a, self.xp.ndarray) else np.asarray(a)

    def sync(self):
        """Wait for all work queued on this device."""
        self._dev().synchronize()

    @property
    def device(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.device_id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def launcher(self):
        """The kernel launcher of this device (tmesim.launch.CupyLauncher, one per backend)."""
        if self._launcher is None:
            from .launch import CupyLauncher

            self._launcher = CupyLauncher(self.device_id)
        return self._launcher

    def free_memory(self) -> int:
        """Bytes free on this device now (cudaMemGetInfo), plus what cupy's memory pool holds
        but no array uses (the pool hands that out before asking the driver)."""
        with self._dev():
            free, _total = self.xp.cuda.runtime.memGetInfo()
            pool = self.xp.get_default_memory_pool()
            return int(free) + int(pool.free_bytes())


def as_host(a):
    """A numpy array of ``a`` (numpy passes through; a cupy array is copied from its device).

    For code that holds a (small) array but not its backend, e.g. a biopsy's region."""
    if isinstance(a, np.ndarray) or np.isscalar(a):
        return np.asarray(a)
    get = getattr(a, "get", None)  # cupy.ndarray.get() -> numpy, without importing cupy
    return np.asarray(get() if callable(get) else a)


def array_module(a):
    """The array module of ``a``: numpy for numpy arrays, cupy for cupy arrays (imported only
    then), else what the type names through the array-API ``__array_namespace__`` (numpy for
    anything else)."""
    if type(a) is np.ndarray or isinstance(a, np.generic):
        return np
    if type(a).__module__.startswith("cupy"):
        import cupy

        return cupy
    ns = getattr(a, "__array_namespace__", None)
    return ns() if callable(ns) else np


def gpu_available() -> bool:
    """True when cupy imports and sees a CUDA device (never raises)."""
    try:
        import cupy

        return bool(cupy.is_available())
    except Exception:  # no cupy, no driver, no device: all mean "no GPU"
        return False


#: Whether the kernels have run on a GPU and passed the tests marked ``gpu`` there
#: (``pytest -m gpu tests``). Whole runs through the kernels match numpy bit for bit on the
#: portable C++ build (tests/test_simulation_backends.py); while they are unverified on a device,
#: ``auto`` keeps to the CPU (a user's default run must not be the first GPU run) and ``gpu`` runs
#: with a warning saying so. Set it once the GPU tests pass on one.
GPU_VERIFIED = False


def get_backend(name: str = "auto", device: int = 0):
    """``"cpu"``, ``"gpu"``, ``"auto"`` or ``"portable"``.

    ``auto`` takes the GPU when cupy sees one and the kernels have been verified on a GPU
    (:data:`GPU_VERIFIED`), else the CPU; ``gpu`` is refused without cupy or a device, and warns
    while the kernels are unverified. ``portable`` (a developer's backend: the kernels' C++ build
    on numpy arrays) is never chosen by ``auto``. Every step of the model has its kernel twin
    (tmesim.steps.<family>_kernel; tmesim.simulation.step_classes picks them by the backend's
    launcher).
    """
    if name == "cpu":
        return CPU()
    if name == "portable":
        return Portable()
    if name == "auto":
        return GPU(device) if GPU_VERIFIED and gpu_available() else CPU()
    if name == "gpu":
        gpu = GPU(device)
        if not GPU_VERIFIED:
            import warnings

            warnings.warn(
                "the GPU kernels match numpy on the CPU build but have not yet been "
                "verified on a GPU: run `python3 -m pytest -m gpu tests` on this machine "
                "first",
                stacklevel=2,
            )
        return gpu
    raise UserError(
        f"--backend {name!r}: expected auto, cpu or gpu (or portable, the kernels' "
        "C++ build on the CPU, for developers)"
    )
