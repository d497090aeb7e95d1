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


def gpu_available() -> bool:
    """True when cupy imports and sees a CUDA device (never raises)."""
    try:
        import cupy
        return bool(cupy.is_available())
    except Exception:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU"
        return False


def get_backend(name: str = "auto"):
    """``"cpu"``, ``"gpu"`` or ``"auto"``.

    The CUDA kernels are not written yet, so ``auto`` means the CPU for now and ``gpu`` is refused
    with a message that says so (whether or not a GPU is present).
    """
    if name in ("cpu", "auto"):
        return CPU()
    if name == "gpu":
        why = "a GPU is present" if gpu_available() else "no usable CUDA GPU here either"
        raise UserError(f"--backend gpu: the CUDA kernels are not part of this version ({why}); "
                        "use --backend cpu or auto")
    raise UserError(f"--backend {name!r}: expected auto, cpu or gpu")
