"""The run-file schema: names, attributes and version, shared by the writer, readers and viewer.

One run, one HDF5 file (DESIGN.md). Axis order is (z, y, x); a 2D run has (y, x).

    /                       attrs: format, format_version, tmesim_version, backend, device, seed,
                            created, scenario (TOML text), dx_um, dt_min, axes, grid_shape,
                            kind_names, tumor_state_names, status
    /snapshots/time         (T,) float64, minutes
    /snapshots/step         (T,) int64, agent step of each snapshot
    /snapshots/kind         (T, [Z,] Y, X) uint8, codes in attrs["names"]
    /snapshots/tumor_state  (T, [Z,] Y, X) uint8, codes in attrs["names"]
    /snapshots/memory       (T, [Z,] Y, X) float32, epigenetic memory of tumor cells in [0, 1]
    /snapshots/fields/NAME  (T, [Z,] Y, X) float32, attrs["units"], attrs["role"] (oxygen,
                            growth_factor, signal, drug, other)
    /timeseries/COLUMN      (N,) float64, one row per agent step, attrs["units"]
    /events/time_min        (E,) float64, minutes
    /events/kind            (E,) fixed-length bytes (EVENT_KIND_BYTES), ASCII
    /events/detail          (E,) fixed-length bytes (EVENT_DETAIL_BYTES), UTF-8 JSON, NUL-padded
                            (format 1.0 wrote both as variable-length strings; readers take both)
    /checkpoint             two slots, each every State array plus step, time, row counts and
                            Model.extra_state(); attrs valid_slot says which slot is committed
                            (tmesim.io.checkpoint)

Everything is created before SWMR mode starts and grows along its first axis only, so a reader
(``h5py.File(path, "r", swmr=True)``) can follow a run while it is written, and a run killed at
any moment leaves a file that opens, holding everything flushed before the kill.
"""

FORMAT = "tmesim"
FORMAT_VERSION = "1.4"  # major.minor: readers refuse a newer major version
#: the first format written by a tmesim whose tumor cells push at division by default: a
#: scenario stored in an older file that names no push reach ran with none
#: (tmesim.simulation.stored_scenario)
PUSH_DEFAULT_SINCE = (1, 2)
#: the first format with expanded persisters (tumor state E) and the recalibrated P -> R rate: a
#: scenario stored in an older file ran without P -> E and, where it names no rate, with the old
#: P -> R default (tmesim.simulation.stored_scenario); its time series lacks these columns,
#: which were 0 throughout, and a resumed run goes on without them (tmesim.io.hdf5.RunWriter)
DTEP_SINCE = (1, 3)
DTEP_COLUMNS = ("n_E", "became_E")
#: the first format whose writer records the SHA-256 of its text attributes (root attribute
#: ``text_digest``, tmesim.io.trust) and rewrites the status in place as a fixed-length string
TEXT_DIGEST_SINCE = (1, 4)
#: P -> R per hour before format 1.3
OLD_RESISTANCE_PER_H = 5e-6
MAJOR = 1

SNAPSHOTS = "snapshots"
FIELDS = "snapshots/fields"
TIMESERIES = "timeseries"
EVENTS = "events"
# Events are fixed-length byte strings: a variable-length string lives in HDF5's global heap, which
# also holds the root attributes' strings, and an append torn by SIGKILL could corrupt them.
EVENT_KIND_BYTES = 32
EVENT_DETAIL_BYTES = 2048

# Time-series columns every run has, with units; then mean_<field> and mean_<field>_tumor per field.
BASE_COLUMNS = {
    "time_min": "min",
    "n_S": "cells",
    "n_P": "cells",
    "n_R": "cells",
    "n_E": "cells",
    "n_caf": "cells",
    "n_tam": "cells",
    "n_necrotic": "voxels",
    "n_vessel": "voxels",
    "burden": "cells",
    "persister_fraction": "1",
    "resistant_fraction": "1",
    "hypoxic_fraction": "1",
    "divisions": "cells/step",
    "necroses": "cells/step",
    "cleared": "voxels/step",
    "field_sweeps": "iterations/step",
    "killed": "cells/step",
    "killed_S": "cells/step",
    "killed_P": "cells/step",
    "entered_P": "cells/step",
    "exited_P": "cells/step",
    "became_R": "cells/step",
    "became_E": "cells/step",
    "tam_recruited": "cells/step",
    "tam_died": "cells/step",
    "mean_memory": "1",
    "mean_time_in_P_h": "h",
    "tumor_near_caf_fraction": "1",
    "persisters_near_caf_fraction": "1",
}

# Distance within which a tumor cell counts as near a CAF (tumor_near_caf_fraction,
# persisters_near_caf_fraction): a few cell diameters, the reach of paracrine HGF protection in
# co-culture (Straussman et al. 2012).
NEAR_CAF_UM = 100.0


def drug_columns(drug_names) -> dict:
    """plasma_<drug> (plasma level at the end of the step) and dose_<drug> (the boluses given in
    the step, or the square-wave level), both uM; cumulative_dose_<drug>: the boluses so far (uM)
    of a one-compartment drug, or the integral of a square wave's level (uM h)."""
    out = {}
    for name in drug_names:
        out[f"plasma_{name}"] = "uM"
        out[f"dose_{name}"] = "uM"
        out[f"cumulative_dose_{name}"] = "uM or uM h"
    return out


def field_columns(field_names, field_units) -> dict:
    out = {}
    for name, units in zip(field_names, field_units):
        out[f"mean_{name}"] = units
        out[f"mean_{name}_tumor"] = units
    return out


def parse_version(text: str) -> tuple[int, int]:
    major, _, minor = str(text).partition(".")
    return int(major), int(minor or 0)
