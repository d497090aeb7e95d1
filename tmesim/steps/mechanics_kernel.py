"""The push rule on the kernels (``kernels/mechanics.cu``): :class:`KernelPushing`, the twin of
:class:`tmesim.steps.mechanics.Pushing`, run by :class:`tmesim.steps.tumor_kernel.KernelTumorRules`
after its own launches, on its action, target and claims arrays. (The random words the walks
draw, at lane = hop, are :func:`tmesim.rng_kernel.raw_at` with ``lane``.)

Launches per step: ``passes`` of the distance field in one uint16 buffer, in place
(``tm_push_distance_first`` from the lattice, then ``passes - 1`` of ``tm_push_distance``; the
result does not depend on the order of the work items, see the file comment of ``mechanics.cu``),
then ``tm_push_claim``, ``tm_push_apply`` and ``tm_push_finish``. The outcome of each blocked
mother replaces the event ``blocked`` in the low 4 bits of her action byte (:data:`OUTCOMES`,
her phenotype transition in bits 4-6 kept), which the tumor rules' bincount counts. With a reach
under one voxel edge the rule is off: no buffer, no launch.
"""

from __future__ import annotations

import numpy as np

from ..launch import KernelSourceError, grid3, kernel_defines, offsets3
from . import mechanics
from .mechanics import Pushing

#: outcome of a blocked mother: the event (low 4 bits, :data:`EVENT_MASK`) of her action byte,
#: written over the tumor rules' ``blocked`` (kernels/mechanics.cu and tumor.cu TM_ACT_PUSH_*)
OUTCOMES = {"won": 9, "lost": 10, "far": 11}
#: the event bits of the action byte (TM_ACT_EVENT_MASK)
EVENT_MASK = 15


class KernelPushing:
    """The push rule on the kernels: twin of :class:`tmesim.steps.mechanics.Pushing`, same
    result bit for bit (tests/steps/test_mechanics_kernel.py).

    Its numbers (the reach in distance units, the passes, the pushable kinds) are the numpy
    rule's own (``ref``), so the two cannot drift apart; the distance constants of the kernels
    are checked against numpy's when the rule is on.

    Args:
        ref: the numpy rule (``TumorRules.pushing``), for its parameters.
        launcher: where to run; the arrays given to :meth:`apply` are ``launcher.xp`` arrays.
    """

    def __init__(self, ref: Pushing, *, launcher):
        self.L = launcher
        self.ref = ref
        self.on = ref.on
        self.cap = np.int32(ref.cap)
        self.passes = ref.passes
        self.pushable = np.int32(ref.bits)
        self.grid = ref.grid
        #: the distance field (n_sites,) uint16, one buffer updated in place (2 B per site), only
        #: when the rule is on
        self.D = None
        if not self.on:
            return
        xp = launcher.xp
        consts = kernel_defines("mechanics.cu", "TM_PUSH_")
        want = {
            "UNIT": mechanics.STEP_WEIGHTS[0],
            "W2": mechanics.STEP_WEIGHTS[1],
            "W3": mechanics.STEP_WEIGHTS[2],
            "INF": mechanics.INF,
        }
        acts = kernel_defines("mechanics.cu", "TM_ACT_")
        outcomes = {k: acts.get("PUSH_" + k.upper()) for k in OUTCOMES}
        if consts != want or outcomes != OUTCOMES or acts.get("EVENT_MASK") != EVENT_MASK:
            raise KernelSourceError(
                f"kernels/mechanics.cu constants {consts}, {acts} and {__name__}'s {want}, "
                f"{OUTCOMES}, EVENT_MASK {EVENT_MASK} differ"
            )
        n = ref.grid.n_sites
        self.D = xp.zeros(n, dtype=xp.uint16)
        offs = offsets3(ref.grid.offsets)
        self.offsets = xp.asarray(offs.reshape(-1))
        self.n_offsets = np.int32(len(offs))

    def distance(self, kind):
        """The distance field D (n_sites,) uint16 of the lattice ``kind`` after ``passes``
        launches (``tm_push_distance_first``, then ``tm_push_distance`` in place): the buffer
        :attr:`D` itself, overwritten by the next call. The values of :meth:`Pushing.distance`."""
        n = self.grid.n_sites
        nz, ny, nx, _ = grid3(self.grid.shape)
        lattice = (nz, ny, nx, kind, self.pushable, self.offsets, self.n_offsets, self.cap)
        self.L("tm_push_distance_first", n, np.int64(n), *lattice, self.D)
        for _ in range(1, self.passes):
            self.L("tm_push_distance", n, np.int64(n), *lattice, self.D)
        return self.D

    def apply(self, kind, tumor_state, memory, time_in_P, action, target, claims, step: int):
        """Push for every blocked mother of this step, in place (Pushing.apply for the mothers
        whose action event is ``blocked``), on the lattice the tumor launches left.

        Args:
            kind, tumor_state: (n_sites,) uint8; memory, time_in_P: (n_sites,) float32.
            action: (n_sites,) uint8 of the tumor launches: each blocked mother's event becomes
                her outcome (:data:`OUTCOMES`).
            target: (n_sites,) uint32: a winning mother's entry becomes her daughter's voxel.
            claims: (n_sites,) uint64, all 0; left all 0.
            step: the agent step (a counter of the random numbers).
        """
        if not self.on:
            return
        L = self.L
        n = self.grid.n_sites
        nz, ny, nx, _ = grid3(self.grid.shape)
        D = self.distance(kind)
        walk = (nz, ny, nx, self.offsets, self.n_offsets, self.cap, D)
        key = (np.uint64(self.ref.seed), np.uint64(step))
        L("tm_push_claim", n, np.int64(n), *walk, *key, action, claims)
        L(
            "tm_push_apply",
            n,
            np.int64(n),
            *walk,
            *key,
            kind,
            tumor_state,
            memory,
            time_in_P,
            action,
            target,
            claims,
        )
        L("tm_push_finish", n, np.int64(n), *walk, *key, action, claims)
