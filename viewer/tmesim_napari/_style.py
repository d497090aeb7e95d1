"""Display defaults of tmesim layers (no Qt, no napari import).

The kind and tumor-state colours are tmesim's one scheme (:mod:`tmesim.colors`, shared with
``tmesim report``), looked up by the code's *name* (a run file stores the names in
``attrs["names"]``), so a kind appended to the schema later still gets a colour (from
``EXTRA_COLORS``) instead of breaking the viewer. Field images are coloured by the field's role.
"""

from __future__ import annotations

from tmesim.colors import (
    EXTRA_COLORS,
    KIND_COLORS,
    TUMOR_STATE_COLORS,
    TUMOR_STATE_LABELS,
    colors_for,
)

__all__ = [
    "EXTRA_COLORS",
    "KIND_COLORS",
    "ROLE_COLORMAPS",
    "TUMOR_STATE_COLORS",
    "TUMOR_STATE_LABELS",
    "UNKNOWN_COLORMAP",
    "colors_for",
]

# Image colormap per field role (see tmesim_napari._roles: the dataset attribute ``role``, else
# the run's scenario, else the field's name); a role not listed here gets UNKNOWN_COLORMAP
ROLE_COLORMAPS = {
    "oxygen": "magma",  # dark = hypoxic, bright = well oxygenated
    "growth_factor": "green",
    "signal": "magenta",
    "drug": "cyan",
}
UNKNOWN_COLORMAP = "gray"
