"""Integer codes stored on the lattice and in run files (the file schema repeats them as
attributes).

Codes are part of the file format: never renumber, only append.
"""

# Occupant kind of a voxel (uint8).
EMPTY, TUMOR, CAF, TAM, VESSEL, NECROTIC = 0, 1, 2, 3, 4, 5
KIND_NAMES = ("empty", "tumor", "caf", "tam", "vessel", "necrotic")
KIND_CODES = {name: code for code, name in enumerate(KIND_NAMES)}

# Phenotypic state of a tumor cell (uint8); NONE on voxels without a tumor cell.
NONE, SENSITIVE, PERSISTER, RESISTANT = 0, 1, 2, 3
TUMOR_STATE_NAMES = ("none", "S", "P", "R")
TUMOR_STATE_CODES = {name: code for code, name in enumerate(TUMOR_STATE_NAMES)}

# Scenario keys that name a tumor state in per-kind tables (uptake, secretion): they override the
# "tumor" entry for cells in that state.
STATE_KEYS = {"sensitive": SENSITIVE, "persister": PERSISTER, "resistant": RESISTANT}
