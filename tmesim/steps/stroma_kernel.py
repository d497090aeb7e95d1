"""Stromal rules on the kernels (``kernels/stroma.cu``): twin of
:class:`tmesim.steps.stroma.StromaRules`, same arguments, same lattice and counts bit for bit
(tests/steps/test_stroma_kernel.py).

Three launches per step (decide, apply, finish; see the file comment of ``stroma.cu``) on the
launcher's arrays (numpy with :class:`tmesim.launch.PortableLauncher`, cupy with
:class:`tmesim.launch.CupyLauncher`). Scratch: a uint64 ``claims`` array (all 0 between steps) and
a uint8 ``action`` array, 9 bytes per site in all, and none of its own when the caller passes the
tumor rules' arrays (``KernelTumorRules.claims`` and ``.action`` have the same types and the same
all-zero claims invariant). A claim's target is encoded in ``action`` (neighbour index), so no
per-site target array is needed. Counts come from one bincount of ``action``: no floating-point
atomics.
"""

from __future__ import annotations

import numpy as np

from .. import codes
from ..grid import Grid
from ..launch import check_arrays, grid3, kernel_defines, offsets3, param_vector
from .stroma import StromaCounts
from .tumor import probability

#: most neighbours an action byte can name (6 bits of neighbour index)
_MAX_OFFSETS = 64


def _host_probability(rate_per_h: float, dt_min: float, *, as_array: bool = False) -> float:
    """The per-step probability of a constant rate, computed by the numpy code itself (so the
    kernels compare against numbers identical to StromaRules'); 0 when the rate is 0 (the rule is
    then off, as in numpy). ``as_array``: as numpy evaluates it on an array (the recruitment)."""
    if not rate_per_h > 0:
        return 0.0
    if as_array:
        return float(probability(np.full(1, rate_per_h) / 60.0, dt_min)[0])
    return float(probability(rate_per_h / 60.0, dt_min))


class KernelStromaRules:
    """Stromal rules on the kernels: CAF/TAM motion, TAM chemotaxis, recruitment at vessels and
    TAM turnover, applied to ``kind`` in place.

    Args:
        caf, tam: the scenario's [caf] and [tam] tables (as StromaRules).
        grid: the lattice (at most 2**32 - 2 sites: claim keys hold a site in 32 bits).
        seed: the run's seed.
        dt_min: agent step in minutes.
        launcher: where to run (``backend.launcher()``); the arrays given to ``apply`` are
            ``launcher.xp`` arrays.
        claims: optional (n_sites,) uint64 scratch on the launcher's array module, all 0 (e.g. the
            tumor rules' ``claims``); left all 0 after every :meth:`apply`.
        action: optional (n_sites,) uint8 scratch (e.g. the tumor rules' ``action``); holds this
            step's TM_SA_* codes after :meth:`apply`.
    """

    def __init__(
        self, caf, tam, grid: Grid, seed: int, dt_min: float, *, launcher, claims=None, action=None
    ):
        self.L = L = launcher
        xp = L.xp
        self.caf, self.tam, self.grid, self.seed, self.dt = caf, tam, grid, seed, dt_min
        n = grid.n_sites
        if n >= 2**32 - 1:
            raise ValueError("the claim keys hold a site in 32 bits: at most 2**32 - 2 sites")
        values = {
            "DT_MIN": dt_min,
            "DEATH_PROBABILITY": _host_probability(tam.death_per_h, dt_min),
            "CAF_MOVE_PROBABILITY": _host_probability(caf.motility_per_h, dt_min),
            "TAM_MOVE_PROBABILITY": _host_probability(tam.motility_per_h, dt_min),
            "CHEMOTAXIS": tam.chemotaxis,
            "RECRUIT_PER_H": tam.recruitment_per_h,
            "RECRUIT_GAIN_PER_H": tam.recruitment_signal_gain,
            "SIGNAL_HALF_MAX": tam.signal_half_max,
            "RECRUIT_PROBABILITY": _host_probability(tam.recruitment_per_h, dt_min, as_array=True),
        }
        vec = param_vector(values, "stroma.cu", "TM_SP_", "STROMA_PARAMS", driver=__name__)
        self.codes = kernel_defines("stroma.cu", "TM_SA_")
        offs = offsets3(grid.offsets)
        if len(offs) > _MAX_OFFSETS:
            raise ValueError(f"at most {_MAX_OFFSETS} neighbours fit an action code")
        self.params = xp.asarray(vec)
        self.offsets = xp.asarray(offs.reshape(-1))
        self.n_offsets = np.int32(len(offs))
        if claims is None:
            claims = xp.zeros(n, dtype=xp.uint64)
        elif claims.shape != (n,) or bool(claims.any()):
            raise ValueError(f"claims must be ({n},) uint64 zeros")
        if action is None:
            action = xp.zeros(n, dtype=xp.uint8)
        elif action.shape != (n,):
            raise ValueError(f"action must be ({n},) uint8")
        check_arrays(claims, dtype=np.uint64)
        check_arrays(action, dtype=np.uint8)
        self.claims, self.action = claims, action
        self._no_signal = xp.zeros(1, dtype=xp.float32)

    def active(self, kind) -> bool:
        """Whether the step can change anything (stromal cells present or TAMs recruited): the
        same test as StromaRules.active, on the launcher's arrays."""
        xp = self.L.xp
        return bool(
            self.tam.recruitment_per_h > 0
            or self.tam.recruitment_signal_gain > 0
            or bool(xp.any((kind == codes.CAF) | (kind == codes.TAM)))
        )

    def apply(self, kind, signal, step: int) -> StromaCounts:
        """One agent step, in place.

        Args:
            kind: (n_sites,) uint8 lattice, C-contiguous, on the launcher's array module.
            signal: (n_sites,) float32 recruitment signal (signal units; e.g. a row of the
                fields), or None without that field. float32 only: ties are float32 equalities.
            step: the agent step (a counter of the random numbers).
        """
        L, xp = self.L, self.L.xp
        n = self.grid.n_sites
        check_arrays(kind, dtype=np.uint8)
        if kind.size != n:
            raise ValueError(f"kind must have {n} sites, got {kind.size}")
        if signal is None:
            sig, has = self._no_signal, 0
        else:
            sig, has = xp.ascontiguousarray(signal).reshape(-1), 1
            check_arrays(sig, dtype=np.float32)
            if sig.size != n:
                raise ValueError(f"signal must have {n} sites, got {sig.size}")
        nz, ny, nx, _ = grid3(self.grid.shape)
        L(
            "tm_stroma_decide",
            n,
            np.int64(n),
            nz,
            ny,
            nx,
            kind,
            sig,
            np.int32(has),
            self.offsets,
            self.n_offsets,
            self.params,
            np.uint64(self.seed),
            np.uint64(step),
            self.action,
            self.claims,
        )
        L(
            "tm_stroma_apply",
            n,
            np.int64(n),
            nz,
            ny,
            nx,
            kind,
            self.action,
            self.offsets,
            self.n_offsets,
            self.claims,
        )
        L("tm_stroma_finish", n, np.int64(n), self.action, self.claims)
        counts = xp.bincount(self.action, minlength=256)
        c = [int(v) for v in (counts.get() if hasattr(counts, "get") else counts)]
        a = self.codes
        caf, tam, new = c[a["ARRIVED_CAF"]], c[a["ARRIVED_TAM"]], c[a["RECRUITED"]]
        return StromaCounts(
            caf_moves=caf,
            tam_moves=tam,
            tam_recruited=new,
            tam_died=c[a["DIED"]],
            lost_conflicts=sum(c[a["CLAIM_CAF"] :]) - caf - tam - new,
        )
