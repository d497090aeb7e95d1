"""Integer codes stored on the lattice and in run files (the file schema repeats them as
attributes).

Codes are part of the file format: never renumber, only append.
"""

# Occupant kind of a voxel (uint8).
EMPTY, TUMOR, CAF, TAM, VESSEL, NECROTIC = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("empty", "tumor", "caf", "tam", "vessel", "necrotic")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}

# Phenotypic state of a tumor cell (uint8); NONE on voxels without a tumor cell.
# EXPANDED is the drug-tolerant expanded persister (DTEP, Sharma et al. 2010): a persister that
# divides in drug, still reversible.
NONE, SENSITIVE, PERSISTER, RESISTANT, EXPANDED = 0, 1, 2, 3, 4
TUMOR_STATE_NAMES = ("none", "S", "P", "R", "E")
#: the drug-tolerant states (slow-cycling and expanded persisters)
TOLERANT_STATES = (PERSISTER, EXPANDED)
TUMOR_STATE_CODES = {name: code for code, name in enumerate(TUMOR_STATE_NAMES)}

# Scenario keys that name a tumor state in per-kind tables (uptake, secretion): they override the
# "tumor" entry for cells in that state.
STATE_KEYS = {
    "sensitive": SENSITIVE,
    "persister": PERSISTER,
    "resistant": RESISTANT,
    "expanded": EXPANDED,
}
# Which keys a state's rate is read from, most specific first: an expanded persister takes the
# "persister" entry unless the table names "expanded".
STATE_KEY_CHAIN = {
    SENSITIVE: ("sensitive",),
    PERSISTER: ("persister",),
    RESISTANT: ("resistant",),
    EXPANDED: ("expanded", "persister"),
}


def state_rate(spec: dict, state: int, default: float = 0.0) -> float:
    """The rate a per-kind table ``spec`` gives a tumor cell in ``state``: the first of the
    state's keys the table names (STATE_KEY_CHAIN), else its "tumor" entry, else ``default``."""
    for key in STATE_KEY_CHAIN.get(state, ()):
        if key in spec:
            return spec[key]
    return spec.get("tumor", default)
