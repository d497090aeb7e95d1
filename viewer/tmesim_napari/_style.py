"""Fixed colours and display defaults of tmesim layers (no Qt, no napari import).

Colours are fixed so that a figure means the same in every run and screenshot; they are looked up
by the code's *name* (the run file stores the names in ``attrs["names"]``), so a kind appended to
the schema later still gets a colour (from ``EXTRA_COLORS``) instead of breaking the viewer.
Hues follow the Okabe-Ito colour-blind-safe palette where they can.
"""

from __future__ import annotations

# occupant kind of a voxel; "empty" is transparent so the field below shows through
KIND_COLORS = {
    "empty": None,
    "tumor": "#e69f00",  # orange (hidden under the tumor-state layer where that is shown)
    "caf": "#009e73",  # bluish green
    "tam": "#9467bd",  # purple
    "vessel": "#d62728",  # red
    "necrotic": "#7f7f7f",  # grey
}

# phenotypic state of a tumor cell; "none" (no tumor cell) is transparent
TUMOR_STATE_COLORS = {
    "none": None,
    "S": "#56b4e9",  # sky blue: sensitive
    "P": "#f0e442",  # yellow: drug-tolerant persister
    "R": "#e7298a",  # magenta: resistant
    "E": "#d55e00",  # vermillion: expanded persister (DTEP), cycling in drug
}

TUMOR_STATE_LABELS = {
    "S": "sensitive",
    "P": "persister",
    "R": "resistant",
    "E": "expanded persister",
}

# for codes a future schema adds
EXTRA_COLORS = ("#17becf", "#bcbd22", "#8c564b", "#ff7f0e", "#1f77b4", "#2ca02c")

# Image colormap per field role (the dataset attribute ``role``; missing means unknown)
ROLE_COLORMAPS = {
    "oxygen": "magma",  # dark = hypoxic, bright = well oxygenated
    "growth_factor": "green",
    "signal": "magenta",
    "drug": "cyan",
}
UNKNOWN_COLORMAP = "gray"


def colors_for(names, table: dict) -> dict[int, str | None]:
    """{code: colour or None for transparent} for the code ``names`` stored in a run file."""
    out: dict[int, str | None] = {}
    extra = 0
    for code, name in enumerate(names):
        if name in table:
            out[code] = table[name]
        else:
            out[code] = EXTRA_COLORS[extra % len(EXTRA_COLORS)]
            extra += 1
    return out
