"""How much memory a run needs, by part, and the check that refuses a run that will not fit.

A GPU run is checked against the device's free memory, a CPU or Portable run (numpy arrays in
host memory) against the host's available memory (:func:`host_available_bytes`), in both cases
before anything is allocated: a grid too big for the machine ends in one line that says what to
change, not in a MemoryError (or the kernel's out-of-memory killer) minutes into the setup.

:func:`bytes_needed` adds up, for a scenario and a backend, the arrays the model keeps for the
whole run and the largest temporaries it makes within a step:

- ``state``: the per-site arrays, ``n_sites * State.bytes_per_voxel(F)`` (10 + 4 F bytes);
- ``fields``: the field solver's work arrays, from the solver's own account
  (``tmesim.steps.fields_kernel.field_workspace_bytes(sc)``) for the kernel backends, else the
  estimate of :func:`field_workspace_estimate` (documented per method);
- ``rules``: the rules' scratch per site (:data:`KERNEL_RULE_BYTES_PER_SITE`: the tumor kernels'
  claims, action and target arrays, kernels/tumor.cu, which the stroma kernels share, and with
  the push rule on, :data:`KERNEL_PUSH_BYTES_PER_SITE`); on the CPU, numpy's claim arrays (its
  push rule keeps no per-site array: its distance windows around the mothers are temporaries);
- ``observables``: the peak of the temporaries of one row (tmesim.observables): masks and a
  masked copy, or the distance transform's arrays when the scenario places CAFs (the largest
  temporaries of a step);
- ``total``: the sum. ``persistent`` (state + fields + rules) is what the model holds between
  steps; the observables' temporaries come and go within a step.

Small arrays (per-field parameters, line coefficients, drug vectors) are left out: they are
O(F * edge length), not O(sites).
"""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

from .errors import UserError
from .state import State

#: per-site bytes of the kernel rules' scratch: tumor (kernels/tumor.cu) claims uint64 (8),
#: action uint8 (1), target uint32 (4); the stroma kernels (tmesim.steps.stroma_kernel) need
#: claims and action only, and tmesim.simulation.Model hands them the tumor rules' (0 of their
#: own)
KERNEL_RULE_BYTES_PER_SITE = {"tumor": 8 + 1 + 4, "stroma": 0}
#: per-site bytes of the push rule's scratch on the kernels (kernels/mechanics.cu): the distance
#: field, one uint16 buffer updated in place by the distance passes, allocated only when the rule
#: is on (a push reach of at least one voxel edge, tmesim.steps.mechanics)
KERNEL_PUSH_BYTES_PER_SITE = 2
#: per-site bytes of numpy's rules' scratch: TumorRules' claims uint64 (StromaRules has its own)
CPU_RULE_BYTES_PER_SITE = {"tumor": 8, "stroma": 8}


class OutOfDeviceMemory(UserError):
    """The run's memory estimate exceeds what the device has free."""


class OutOfHostMemory(UserError):
    """The run's memory estimate exceeds the host memory available (CPU and Portable runs)."""


def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    """MemAvailable (Linux's estimate of the memory a new process can take without swapping:
    free memory plus the reclaimable page cache), in bytes; None without it."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """What a cgroup v2 memory limit leaves this process (memory.max - memory.current), in
    bytes; None without a limit (a container's MemAvailable is the host's, not its own)."""
    try:
        limit = Path(root, "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int(Path(root, "memory.current").read_text()), 0)
    except (OSError, ValueError):
        return None


def host_available_bytes() -> int | None:
    """Bytes of host memory a run can allocate now: the smaller of /proc/meminfo's
    MemAvailable (else the free pages, os.sysconf SC_AVPHYS_PAGES) and the room a cgroup v2
    memory limit leaves; None where the system says neither."""
    avail = _meminfo_available()
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def n_sites(sc) -> int:
    n = 1
    for s in sc.grid.shape:
        n *= int(s)
    return n


def field_workspace_estimate(sc, backend_name: str) -> int:
    """Bytes of the field solver's work arrays when the solver cannot say itself.

    Per voxel and field, float32 = 4 bytes:
    - kernel solvers (gpu, portable; :func:`bytes_needed` takes their exact count instead,
      tmesim.steps.fields_kernel.field_workspace_bytes): "lod" a float64 work array of one
      field (8 bytes per voxel);
      "adi" U, S, diag, b, r, z, p, q (8 words per field) and, with the line-factor
      preconditioner, per axis the factors inv and cp (2 ndim): (8 + 2 ndim) words per field;
      with multigrid (the default) S, diag, b, r, z, p, q only (7 words per field: the fine
      level's coefficients are recomputed per site), on each coarser level w, e, d, x, t, r
      (5 + ndim words per field of its sites) and a byte of free flags, and the reductions'
      column sums and maxima (16 B per field and site of a plane);
    - numpy (cpu): "lod": U, S and five float64 work arrays (c, t, a, b, swapped) = 12 words;
      "adi": U, S, diag, b, r, z, p, q, lap, tmp (10), a flux array per axis (ndim), and with
      line factors the factors (2 ndim) and a swapped-layout buffer (1): 11 + 3 ndim words; with
      multigrid 10 + ndim words, and per level w, e, d (2 + ndim words) and the V-cycle's work
      arrays (x, t, s; and r on coarse levels), and the free flags.
    Plus the rates' index array (intp, 8 bytes per voxel) on the CPU.
    A stirred medium (tmesim.steps.medium) adds, on the kernels, the pin codes and the distance
    buffer (uint8 + uint16: 3 bytes per voxel); on the CPU the temporaries of its mask: the int32
    distance field, its padded copy and the next pass (12 bytes), the pin codes and a few boolean
    masks (4 bytes): 16 bytes per voxel.
    """
    n, F, nd = n_sites(sc), len(sc.fields), sc.ndim
    if F == 0:
        return 0
    method = sc.solver.method
    stirred = sc.medium.stirred
    mg = method == "adi" and sc.solver.preconditioner == "multigrid"
    # sites of every multigrid level below the fine one
    coarse = _multigrid_sites(tuple(sc.grid.shape))[1:] if mg else []
    if backend_name == "cpu":
        if mg:
            levels = (n + sum(coarse)) * (4 * F * (2 + nd) + 1)
            work = 4 * F * (3 * n + 4 * sum(coarse))
            return n * (4 * F * (10 + nd) + 8 + (16 if stirred else 0)) + levels + work
        words = 12 if method == "lod" else 11 + 3 * nd
        return n * (4 * F * words + 8 + (16 if stirred else 0))
    bath = 3 if stirred else 0
    if method == "lod":
        return n * (8 + bath)
    if mg:
        plane = n // int(sc.grid.shape[0])
        fine = n * (4 * F * 7 + bath) + 16 * F * plane
        return fine + sum(coarse) * (4 * F * (5 + nd) + 1)
    return n * (4 * F * (8 + 2 * nd) + bath)


def _multigrid_sites(shape: tuple) -> list[int]:
    """Sites of every multigrid level, fine to coarsest (tmesim.steps.multigrid)."""
    from .steps import multigrid

    out, s = [], shape
    for _ in range(multigrid.n_levels(shape)):
        out.append(math.prod(s))
        s = multigrid.coarse_shape(s)
    return out


def _field_workspace(sc, backend_name: str) -> tuple[int, str]:
    from .steps.fields import transported_scenario

    sc = transported_scenario(sc)  # well-mixed drug fields are not solved
    if backend_name != "cpu":
        from .steps.fields_kernel import field_workspace_bytes

        return int(field_workspace_bytes(sc)), "as counted by tmesim.steps.fields_kernel"
    return field_workspace_estimate(sc, backend_name), "estimated by tmesim.memory"


def _places_cafs(sc) -> bool:
    # CAFs are placed at the start and never recruited: without them near_caf never runs
    return sc.init.caf.placement != "none" and (
        sc.init.caf.density > 0 or sc.init.caf.placement == "mask"
    )


def observables_bytes(sc, backend_name: str) -> int:
    """Peak bytes of the temporaries of one observables row (tmesim.observables.observe), or of
    therapy's copy of the drug fields (4 B per drug and voxel, only when they are not
    consecutive rows), whichever is larger.

    Kernel backends (one fused pass, tmesim.observables.kernel_totals): the column sums, one
    float64 per quantity (16 + 2 F) and plane position (the sites off grid axis 0), and the
    totals; no per-voxel temporaries. CPU (the numpy twin, numpy_totals): the tumor mask and the
    tumor cells' states (2 B per voxel) and, with CAFs, the near-CAF work over the tumor's
    bounding box grown by the ball's reach, about 12 B per voxel of it (the whole grid at
    worst); the per-plane float64 rows are small.
    """
    n, F = n_sites(sc), len(sc.fields)
    if backend_name == "cpu":
        peak = 2 * n + (12 * n if _places_cafs(sc) else 0)
    else:
        plane = n // int(sc.grid.shape[0])
        peak = 8 * (16 + 2 * F) * (plane + 1)
    return max(peak, _drug_copy_bytes(sc))


def _drug_copy_bytes(sc) -> int:
    # Therapy.tissue_levels copies the drug fields (float32) only when they are not consecutive
    names = sc.field_names
    idx = [names.index(d.name) for d in sc.drugs]
    consecutive = all(b == a + 1 for a, b in itertools.pairwise(idx))
    return 0 if consecutive else 4 * len(idx) * n_sites(sc)


def pushes(sc) -> bool:
    """Whether the scenario's push rule is on (tmesim.steps.mechanics.Pushing.on)."""
    from .steps.mechanics import UNIT, reach_units

    return reach_units(sc.tumor.mechanics.push_reach_um, sc.grid.dx_um) >= UNIT


def bytes_needed(sc, backend_name: str = "gpu") -> dict:
    """Estimated bytes of a run of ``sc`` on ``backend_name`` ("cpu", "gpu" or "portable"), by
    part (see the module docstring): {"state", "fields", "rules", "observables", "persistent",
    "total": int, "fields_source": str (where the field figure comes from)}."""
    n, F = n_sites(sc), len(sc.fields)
    state = n * State.bytes_per_voxel(F)
    fields, source = _field_workspace(sc, backend_name)
    per = CPU_RULE_BYTES_PER_SITE if backend_name == "cpu" else KERNEL_RULE_BYTES_PER_SITE
    rules = n * (per["tumor"] + per["stroma"])  # the rules allocate when they are built
    if backend_name != "cpu" and pushes(sc):
        rules += n * KERNEL_PUSH_BYTES_PER_SITE
    obs = observables_bytes(sc, backend_name)
    persistent = state + fields + rules
    return {
        "state": state,
        "fields": fields,
        "rules": rules,
        "observables": obs,
        "persistent": persistent,
        "total": persistent + obs,
        "fields_source": source,
    }


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.1f} MiB"


def describe(est: dict) -> str:
    """One line per part of an estimate, for messages and ``tmesim validate``."""
    return (
        f"state {_gib(est['state'])}, field solver {_gib(est['fields'])} "
        f"({est['fields_source']}), rules {_gib(est['rules'])}, observables "
        f"{_gib(est['observables'])}; total {_gib(est['total'])}"
    )


def _lod_hint(sc) -> str:
    if sc.solver.method == "lod":
        return ""
    return 'solver.method = "lod" (fewer work arrays than "adi"), or '


def check_fits(sc, backend) -> dict | None:
    """Refuse a run whose estimate exceeds the memory it will use, before allocating: the
    device's free memory on a GPU, the host's available memory (:func:`host_available_bytes`)
    on the CPU and Portable backends (``backend.free_memory()`` None: their arrays are host
    memory). Returns the estimate when checked (None where the host says nothing of its
    memory).

    The estimate counts the model's arrays (:func:`bytes_needed`), not the interpreter, the
    libraries or the run file's buffers: a run that passes may still be tight.

    Raises:
        OutOfDeviceMemory: on a GPU, naming the estimate by part, the free memory and what to
            change.
        OutOfHostMemory: on the host, alike.
    """
    free_fn = getattr(backend, "free_memory", None)
    free = free_fn() if free_fn is not None else None
    if free is None:
        return check_host_fits(sc, backend.name)
    est = bytes_needed(sc, backend.name)
    if est["total"] > free:
        hint = _lod_hint(sc)
        raise OutOfDeviceMemory(
            f"the run needs about {_gib(est['total'])} on the GPU but {_gib(free)} is free "
            f"({backend.device}): {describe(est)}. Use {hint}a smaller grid "
            f"(grid.shape {list(sc.grid.shape)}), or fewer fields (it has {len(sc.fields)})."
        )
    return est


def check_host_fits(sc, backend_name: str = "cpu", available: int | None = None) -> dict | None:
    """Refuse a CPU or Portable run whose estimate exceeds the host memory available
    (``available``, default :func:`host_available_bytes`), before allocating. Returns the
    estimate, or None where the available memory is unknown.

    Raises:
        OutOfHostMemory: naming the estimate by part, the available memory and what to change.
    """
    avail = host_available_bytes() if available is None else available
    if avail is None:
        return None
    est = bytes_needed(sc, backend_name)
    if est["total"] > avail:
        raise OutOfHostMemory(
            f"the run needs about {_gib(est['total'])} of host memory ({backend_name} backend) "
            f"but {_gib(avail)} is available: {describe(est)}. Use {_lod_hint(sc)}a smaller "
            f"grid (grid.shape {list(sc.grid.shape)}), fewer fields (it has {len(sc.fields)}), "
            "or a GPU (--backend gpu)."
        )
    return est
