"""The run file as tmesim.io.hdf5's RunWriter writes it: the documented schema (attributes,
snapshots, time series, fixed-length events) and its ParaView sidecar, event details that round
trip or are kept truncated."""

import json

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.io import schema
from tmesim.io.hdf5 import RunWriter
from tmesim.io.reader import open_run

from ..helpers import run_small


def test_run_file_schema(tmp_path):
    sc, _sim, path = run_small(tmp_path)
    with h5py.File(path, "r") as f:
        a = f.attrs
        assert a["format"] == "tmesim" and a["format_version"] == schema.FORMAT_VERSION
        assert a["seed"] == 11 and a["dx_um"] == 20.0 and a["dt_min"] == 6.0
        assert list(a["axes"]) == ["y", "x"] and list(a["grid_shape"]) == [48, 48]
        # rewritten in place at the end as the fixed-length string it was created as: a
        # variable-length one would live in the global heap, apart from its attribute
        assert f.attrs.get_id("status").dtype == np.dtype("S64")
        assert a["status"] == b"finished".ljust(64)
        assert tmesim.loads_scenario(a["scenario"]).grid == sc.grid
        T = f["snapshots/time"].shape[0]
        assert T == 5  # 0, 6, 12, 18, 24 h
        np.testing.assert_allclose(f["snapshots/time"][:], np.arange(5) * 360.0)
        assert f["snapshots/kind"].shape == (T, 48, 48) and f["snapshots/kind"].dtype == np.uint8
        assert f["snapshots/kind"].chunks[0] == 1 and f["snapshots/kind"].compression == "gzip"
        assert f["snapshots/fields/oxygen"].dtype == np.float32
        assert f["snapshots/fields/oxygen"].attrs["units"] == "mmHg"
        ts = f["timeseries"]
        for col in (
            "time_min",
            "n_S",
            "n_P",
            "n_R",
            "n_caf",
            "n_tam",
            "n_necrotic",
            "n_vessel",
            "burden",
            "persister_fraction",
            "resistant_fraction",
            "hypoxic_fraction",
            "mean_oxygen",
            "mean_oxygen_tumor",
        ):
            assert ts[col].shape == (sc.n_steps + 1,), col
        # the time series agrees with the snapshots it can be checked against
        last = f["snapshots/kind"][-1]
        assert ts["burden"][-1] == (last == codes.TUMOR).sum()
        assert ts["n_vessel"][-1] == (last == codes.VESSEL).sum()
        np.testing.assert_allclose(
            ts["mean_oxygen"][-1],
            f["snapshots/fields/oxygen"][-1].mean(dtype=np.float64),
            rtol=1e-6,
        )
        kinds = [k.decode() for k in f["events/kind"][:]]
        assert kinds[0] == "start"
        # fixed-length, not variable-length strings: no event write touches the global heap
        lengths = {"kind": schema.EVENT_KIND_BYTES, "detail": schema.EVENT_DETAIL_BYTES}
        for name, n in lengths.items():
            assert h5py.check_string_dtype(f["events"][name].dtype).length == n
    assert (tmp_path / "a.xdmf").is_file()
    xml = (tmp_path / "a.xdmf").read_text()
    assert xml.count('<Grid Name="t') == 5 and "a.h5:/snapshots/fields/oxygen" in xml


def test_event_details_round_trip_and_an_oversized_one_is_kept_truncated(tmp_path):
    """Events are fixed-length; a detail too long for its slot is kept as valid JSON, marked."""
    sc, _, path = run_small(tmp_path)
    big = {"note": "é" * 3 * schema.EVENT_DETAIL_BYTES, "x": 1}
    small = {"drug": "erlotinib", "dose_uM": 2.0, "why": "burden ≥ baseline"}
    with h5py.File(path, "r+", libver="latest") as f:
        n = f["events/kind"].shape[0]
        w = RunWriter.__new__(RunWriter)  # a writer of this open file, to append events only
        w._setup(path, sc, None, {}, 50, False)
        w.f = f
        w.event(5.0, "note", small)
        w.event(6.0, "note", big)
        with pytest.raises(ValueError, match="longer than"):
            w.event(7.0, "k" * (schema.EVENT_KIND_BYTES + 1), {})
    ev = open_run(path).attrs["events"]
    assert len(ev) == n + 2
    assert ev[n] == (5.0, "note", small)
    t, kind, d = ev[n + 1]
    assert (t, kind, d["truncated"]) == (6.0, "note", True)
    assert len(d["text"]) > 100 and json.dumps(big, sort_keys=True).startswith(d["text"])
    assert 0 < len(json.dumps(d).encode()) <= schema.EVENT_DETAIL_BYTES


def test_every_chunked_dataset_is_checksummed_and_a_flipped_byte_fails_the_read(tmp_path):
    """Fletcher-32 on every chunk RunWriter writes: a byte flipped inside a chunk of the time
    series (stored as it is) or of a snapshot (compressed) makes h5py raise OSError, instead
    of handing back a wrong value; the chunks beside it still read."""
    _sc, _, path = run_small(tmp_path)
    targets = {"timeseries/burden": 0, "snapshots/kind": 2}
    with h5py.File(path, "r") as f:
        chunked = []

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and obj.chunks and not name.startswith("checkpoint"):
                chunked.append(name)

        f.visititems(visit)
        spots = {}
        for name, i in targets.items():
            info = f[name].id.get_chunk_info(i)
            spots[name] = info.byte_offset + info.size // 2  # mid-chunk, before the checksum
        good = {name: f[name][()] for name in targets}
    raw = bytearray(path.read_bytes())
    for at in spots.values():
        raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    with h5py.File(path, "r") as f:
        with pytest.raises(OSError):
            f["timeseries/burden"][()]
        with pytest.raises(OSError):
            f["snapshots/kind"][2]
        np.testing.assert_array_equal(f["snapshots/kind"][1], good["snapshots/kind"][1])
        np.testing.assert_array_equal(f["snapshots/kind"][3:], good["snapshots/kind"][3:])
        # and so does every other chunked dataset of the run file (the checkpoint slots are
        # contiguous: tmesim.io.checkpoint)
        assert len(chunked) > 20 and all(f[n].fletcher32 for n in chunked), chunked
