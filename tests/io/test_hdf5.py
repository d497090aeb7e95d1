"""The run file as tmesim.io.hdf5's RunWriter writes it: the documented schema (attributes,
snapshots, time series, fixed-length events, each field's role) and its ParaView sidecar, event
details that round trip or are kept truncated, a file format that HDF5 1.10 and later read (and
runs written in HDF5's latest format, as tmesim wrote them before, still resume)."""

import json
import os
import signal
import struct
from collections import Counter

import h5py
import numpy as np
import pytest

import tmesim
from tmesim import codes
from tmesim.io import hdf5, runfile, schema
from tmesim.io.hdf5 import RunWriter

from ..helpers import SMALL_2D, At, assert_same_run, model_scenario, run_small, status_in


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
        # deflate level 1 after a shuffle: the fastest setting every HDF5 reader reads
        for name in ("snapshots/kind", "snapshots/memory", "snapshots/fields/oxygen"):
            assert f[name].compression_opts == 1 and f[name].shuffle, name
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
    with h5py.File(path, "r+", libver=hdf5.LIBVER) as f:
        n = f["events/kind"].shape[0]
        w = RunWriter.__new__(RunWriter)  # a writer of this open file, to append events only
        w._setup(path, sc, None, {}, 50, False)
        w.f = f
        w.event(5.0, "note", small)
        w.event(6.0, "note", big)
        with pytest.raises(ValueError, match="longer than"):
            w.event(7.0, "k" * (schema.EVENT_KIND_BYTES + 1), {})
    with runfile.open_run_file(path) as f:
        ev = runfile.event_rows(f)
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


def test_every_field_carries_its_role(tmp_path):
    """Each field dataset names what the field is (the viewer styles by it): the roles of the
    scenario's fields, drugs' included."""
    sc = model_scenario("2d-adi", "grid.shape=[12,12]", "run.duration_days=0.01")
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "r.h5")
    expected = {
        "oxygen": "oxygen",
        "hgf": "growth_factor",
        "igf1": "growth_factor",
        "signal": "signal",
        "erlotinib": "drug",
    }
    assert {fc.name: fc.role for fc in sc.fields} == expected
    with h5py.File(path, "r") as f:
        fields = f["snapshots/fields"]
        assert sorted(fields) == sorted(expected)
        roles = {name: ds.attrs["role"] for name, ds in fields.items()}
    assert roles == expected
    # and every reader's open, with its checks of the file's structure, takes it
    with runfile.open_run_file(path) as f:
        assert sorted(f["snapshots/fields"]) == sorted(expected)


# ------------------------------------------------------------------------- file format versions
#: the newest version of each object header message that HDF5 1.10 reads (HDF5 file format
#: specification, section IV.A.2): dataspace, link info, datatype, fill value, link, layout,
#: group info, filter pipeline, attribute, modification time, attribute info
HDF5_110_MESSAGES = {1: 2, 2: 0, 3: 3, 5: 3, 6: 1, 8: 4, 10: 0, 11: 2, 12: 3, 18: 1, 21: 0}
_CONTINUATION = 0x10


def header_messages(path) -> Counter:
    """Counter of (message type, version) over the object headers of every object in ``path``
    (version 2 headers: the only ones a file of superblock version 2 or 3 holds)."""
    found: Counter = Counter()
    with h5py.File(path, "r") as f, open(path, "rb") as fh:
        objects = [f]
        f.visititems(lambda _name, obj: objects.append(obj))
        for obj in objects:
            fh.seek(h5py.h5o.get_info(obj.id).addr)
            assert fh.read(5) == b"OHDR\x02", obj.name
            flags = fh.read(1)[0]
            fh.read((16 if flags & 0x20 else 0) + (4 if flags & 0x10 else 0))
            size = int.from_bytes(fh.read(1 << (flags & 3)), "little")
            blocks = [(fh.tell(), size)]
            while blocks:
                start, size = blocks.pop()
                fh.seek(start)
                data, i = fh.read(size), 0
                while i + 4 <= len(data):
                    kind, n = data[i], int.from_bytes(data[i + 1 : i + 3], "little")
                    i += 4 + (2 if flags & 0x04 else 0)
                    body, i = data[i : i + n], i + n
                    if kind == _CONTINUATION:  # the header goes on in an "OCHK" block
                        addr, length = struct.unpack("<QQ", body[:16])
                        blocks.append((addr + 4, length - 8))
                    elif kind and body:  # not a gap (null message)
                        # a datatype message keeps its version in the high nibble
                        found[kind, body[0] >> 4 if kind == 3 else body[0]] += 1
    return found


#: the small test scenario cut to 60 steps, a snapshot every 20
SHORT = ("run.duration_days=0.25", "run.snapshot_every_hours=2")


def _short_run(tmp_path, name, at=None):
    """Run SHORT to ``tmp_path / name``; interrupted (SIGUSR1, which checkpoints) after step
    ``at`` when given. Returns the Simulation."""
    sim = tmesim.Simulation(tmesim.loads_scenario(SMALL_2D, overrides=list(SHORT)), "cpu")
    if at is not None:
        sim.callbacks.append(At(at, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(tmp_path / name)
    return sim


def too_new(found: Counter) -> list:
    return sorted(m for m in found if m[1] > HDF5_110_MESSAGES.get(m[0], -1))


def test_run_files_are_written_in_a_format_hdf5_1_10_reads(tmp_path):
    """Every message of every object is of a version HDF5 1.10 reads (VTK and ParaView ship
    HDF5 1.14 or older): written with HDF5 2.0's latest format, the dataset layouts would be
    version 5, which they cannot decode. Appending after a resume keeps them so."""
    _short_run(tmp_path, "ref.h5")
    path = tmp_path / "ref.h5"
    with open(path, "rb") as fh:
        assert fh.read(9)[8] == 3  # superblock 3: SWMR, and the repair of a killed writer's file
    found = header_messages(path)
    assert found[8, 4] >= 20  # the chunked datasets' layouts, counted: the walk saw them
    assert too_new(found) == []
    # a checkpoint at step 1 fills one slot; the resumed run writes the other
    assert _short_run(tmp_path, "r.h5", at=1).status == "interrupted"
    out = tmp_path / "r.h5"
    assert tmesim.Simulation.resume(out, backend="cpu").status == "finished"
    assert too_new(header_messages(out)) == []
    assert_same_run(path, out)


def test_a_run_written_in_the_latest_format_still_opens_and_resumes(tmp_path, monkeypatch):
    """A run file written as tmesim wrote them before (HDF5's latest format), interrupted, resumes
    to the file of a run never interrupted, and keeps its format."""
    _short_run(tmp_path, "ref.h5")
    with monkeypatch.context() as m:
        m.setattr(hdf5, "LIBVER", "latest")
        assert _short_run(tmp_path, "old.h5", at=25).status == "interrupted"
    out = tmp_path / "old.h5"
    assert (8, 5) in header_messages(out)  # HDF5 2.0's layout messages: an old file indeed
    with runfile.open_run_file(out, resume=True) as f:
        assert status_in(f) == "interrupted"
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 25 and sim.status == "finished"
    assert (8, 5) in header_messages(out)
    assert_same_run(tmp_path / "ref.h5", out)


def _part_of_killed_creation(out, age_s: float):
    """A temporary file as a `tmesim run` killed while creating ``out`` leaves it: made by a
    process (HDF5 holding its lock) that is then killed; its time set ``age_s`` seconds back."""
    import subprocess
    import sys

    code = (
        "import os, signal, h5py, sys\n"
        "p = sys.argv[1] + f'.{os.getpid()}.abc123.part'\n"
        "f = h5py.File(p, 'w-', libver=('v110', 'v110'))\n"
        "f.flush(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    p = subprocess.run([sys.executable, "-c", code, str(out)], timeout=120)
    assert p.returncode == -signal.SIGKILL
    (part,) = out.parent.glob(out.name + ".*.part")
    t = part.stat().st_mtime - age_s
    os.utime(part, (t, t))
    return part


def test_a_new_run_removes_the_temporary_files_killed_creations_left(tmp_path):
    """Parts of killed creations older than a minute go when the next run of that name starts;
    a recent one (another host's creation may be in progress) and one a live process holds
    stay, as do files of other names."""
    import subprocess
    import sys

    out = tmp_path / "a.h5"
    old = _part_of_killed_creation(out, age_s=2 * hdf5.STALE_PART_AGE_S)
    recent = _part_of_killed_creation(tmp_path / "b.h5", age_s=0)
    recent = recent.rename(tmp_path / (out.name + recent.name[len("b.h5") :]))
    # a creation in progress: its process alive, HDF5's lock held, and an old time
    live = tmp_path / f"{out.name}.999999.ffffff.part"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, h5py; f = h5py.File(sys.argv[1], 'w-', libver=('v110', 'v110'));"
            " print('open', flush=True); time.sleep(120)",
            str(live),
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline().strip() == b"open"
        t = live.stat().st_mtime - 2 * hdf5.STALE_PART_AGE_S
        os.utime(live, (t, t))
        other = tmp_path / "a.h5x.1.aaaaaa.part"
        other.write_bytes(b"not ours")
        run_small(tmp_path, name="a.h5")
        assert not old.exists()
        assert recent.exists() and live.exists() and other.exists()
        with h5py.File(out, "r") as f:
            assert status_in(f) == "finished"
    finally:
        holder.kill()
        holder.wait()
