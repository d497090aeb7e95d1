"""The colours of occupant kinds and tumor states, shared by every figure and the napari viewer.

One scheme, so that a kind or a state has the same colour in ``tmesim report``, ``tmesim compare``
and napari (``viewer/tmesim_napari``). Colours are looked up by the code's *name* (a run file
stores the names in ``attrs["names"]``), so a kind appended to the schema later still gets a
colour (from :data:`EXTRA_COLORS`). Hues follow the Okabe-Ito colour-blind-safe palette where
they can. ``None`` means transparent (napari shows the layer below); a flat figure draws it as
:data:`BACKGROUND`. No plotting or Qt import here.
"""

from __future__ import annotations

# occupant kind of a voxel; "empty" is transparent so the field below shows through
KIND_COLORS: dict[str, str | None] = {
    "empty": None,
    "tumor": "#e69f00",  # orange (hidden under the tumor-state layer where that is shown)
    "caf": "#009e73",  # bluish green
    "tam": "#9467bd",  # purple
    "vessel": "#d62728",  # red
    "necrotic": "#7f7f7f",  # grey
}

# phenotypic state of a tumor cell; "none" (no tumor cell) is transparent
TUMOR_STATE_COLORS: dict[str, str | None] = {
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

#: what a transparent colour is drawn as on a flat figure (paper white)
BACKGROUND = "#ffffff"


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


def opaque(color: str | None) -> str:
    """``color``, or :data:`BACKGROUND` for a transparent one (a flat figure has no layer below)."""
    return BACKGROUND if color is None else color
