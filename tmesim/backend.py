"""Where the arrays live: CPU (numpy) or GPU (cupy). The only module that imports cupy.

A backend is a value passed in (``CPU()``, ``GPU(0)``), not a global switch. Data crosses between
host and device only through :meth:`to_device` and :meth:`to_host`.
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


class GPU:
    """cupy on a CUDA device; the steps run as the kernels of ``kernels/*.cu`` (tmesim.kernels).

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
        """The kernel launcher of this device (tmesim.kernels.CupyLauncher)."""
        from .kernels import CupyLauncher
        return CupyLauncher(self.device_id)


def gpu_available() -> bool:
    """True when cupy imports and sees a CUDA device (never raises)."""
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU"
        return False


#: Steps of the model that have no CUDA kernel yet. While this is not empty, ``auto`` keeps to the
#: CPU and ``gpu`` is refused (a run must never mix backends silently). The field primitives, the
#: RNG and the tumor rules without the persister biology have kernels (tmesim.kernels).
GPU_MISSING_STEPS = (
    "tumor persister biology (transitions, drug kill, memory)",
    "field solver driver (the CG/LOD step assembled from the field kernels)",
    "stroma (CAF/TAM motion, recruitment)",
    "therapy (plasma levels, vessel supply)",
    "observables",
)


def get_backend(name: str = "auto", device: int = 0):
    """``"cpu"``, ``"gpu"`` or ``"auto"``.

    ``auto`` takes the GPU when cupy sees one and every step of the model has its kernel
    (:data:`GPU_MISSING_STEPS` is empty), else the CPU; ``gpu`` is refused with a message naming
    the missing steps until then.
    """
    if name == "cpu":
        return CPU()
    if name == "auto":
        return GPU(device) if not GPU_MISSING_STEPS and gpu_available() else CPU()
    if name == "gpu":
        if GPU_MISSING_STEPS:
            why = "a GPU is present" if gpu_available() else "no usable CUDA GPU here either"
            raise UserError("--backend gpu: not every step has its CUDA kernel yet (missing: "
                            + "; ".join(GPU_MISSING_STEPS) + f"); {why}. Use --backend cpu "
                            "or auto")
        return GPU(device)
    raise UserError(f"--backend {name!r}: expected auto, cpu or gpu")
