"""Hostile run files (issue 18): damaged and crafted files given to every reader of run files.

A run file may come from someone else; reading it must never read another file, hang, allocate
what the file cannot hold, crash with a traceback or hand back values the file does not hold.
From one small real run (interrupted near its end, so that ``resume`` has work to do) this module
makes files cut at many lengths, files with bytes flipped at seeded offsets, the same run left
"open for write" by a killed writer (read in SWMR mode), and crafted files (external links,
external storage and virtual datasets pointing at a file outside the run and at a FIFO, soft and
hard links, huge declared shapes, wrong dtypes, bad root attributes, events that are not JSON,
checkpoint counters out of range). Every reader runs on each:

- ``open_run`` (every variable loaded), the napari reader function (``read_run``, every layer
  computed), the sweep records (``observe_run``, ``run_end``), in-process;
- ``tmesim report`` and ``tmesim resume`` through ``tmesim.cli.main``, exit code and stderr
  checked as the CLI prints them (a few through ``python -m tmesim`` too).

They run in a driver subprocess that the test watches: a reader that does not answer within
:data:`HANG_S` is a hang (the driver is killed and the campaign goes on with the next job). Each
answer must be either a one-line RunFileError naming the file (CLI: exit code 2, one line
``tmesim CMD: error: ...``, no traceback), or success with exactly the values of the undamaged
run (for ``resume``: the file an undamaged resume writes, or a file whose damage is still refused
on reading), within :data:`LIMIT_S`; no value read may hold the bytes of the outside file.

The CI campaign is sized to run in well under a minute on 2 cores; ``TMESIM_FUZZ_SCALE=N`` (or
the slow-marked test, scale 8) multiplies the cut and flip cases, and
``python -m tests.io.test_hostile_files [SCALE]`` runs a campaign by hand and prints its figures.
"""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import json
import os
import queue
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
#: a reader that says nothing for this long is hung
HANG_S = 20.0
#: the longest a reader may take to refuse a file, or more than on the undamaged file
LIMIT_S = 5.0
#: bytes of the file outside the run: a read of them shows this marker in the values read
SECRET = b"OUTSIDE-THE-RUN-FILE"

#: 24 x 24 voxels, 60 steps, a checkpoint every 10 steps, a snapshot every 20: a 0.3 s run
FUZZ_SETS = (
    "run.name=fuzz",
    "run.seed=7",
    "run.duration_days=0.25",
    "run.snapshot_every_hours=2",
    "run.checkpoint_every_hours=1",
    "grid.shape=[24,24]",
    "init.tumor.radius_um=100",
    "init.vessels.density=0.02",
)
#: the run is interrupted after this step (checkpoint at step 50: resume runs 10 steps)
INTERRUPT_AT = 55
READERS = ("open_run", "napari", "records", "report", "resume")
OBSERVE = (["burden", "n_S", "hypoxic_fraction"], ["burden"], [1.0, 3.0])


# ------------------------------------------------------------------------------- the base run
def make_base(d: Path) -> dict:
    """The interrupted run (``run.h5``), the same file left open for write by a killed SWMR
    writer (``live.h5``), and the outside files crafted runs point at: a text file, an HDF5
    file and a FIFO, each holding (or meant to hold) :data:`SECRET`."""
    import tmesim
    from tests.helpers import At, scenario_text

    d.mkdir(parents=True, exist_ok=True)
    sim = tmesim.Simulation(tmesim.loads_scenario(scenario_text(*FUZZ_SETS)), backend="cpu")
    sim.callbacks.append(At(INTERRUPT_AT, lambda s: setattr(s, "_signal", "test")))
    run = sim.run(d / "run.h5")
    assert sim.status == "interrupted", sim.status
    live = d / "live.h5"
    shutil.copy(run, live)
    # a writer killed while it held the file: its superblock keeps the "open for write" flags
    kill = (
        "import h5py, os, sys\n"
        "f = h5py.File(sys.argv[1], 'r+', libver='latest')\n"
        "f.swmr_mode = True\nf.flush()\nos._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", kill, str(live)], check=True, cwd=ROOT)
    secret_txt = d / "secret.txt"
    secret_txt.write_bytes(SECRET * 4096)
    secret_h5 = d / "secret.h5"
    with h5py.File(run, "r") as f, h5py.File(secret_h5, "w") as s:
        for name in ("snapshots/fields/oxygen", "snapshots/kind", "timeseries/burden"):
            ds = f[name]
            raw = np.frombuffer(SECRET * (ds.nbytes // len(SECRET) + 1), np.uint8)
            s[name] = raw[: ds.nbytes].view(ds.dtype).reshape(ds.shape)
        s.create_group("group")["x"] = np.zeros(3)
    fifo = d / "fifo"
    os.mkfifo(fifo)
    return {"run": run, "live": live, "txt": secret_txt, "h5": secret_h5, "fifo": fifo}


# --------------------------------------------------------------------------- damaged copies
def cut_lengths(size: int, n: int, rng) -> list[int]:
    """Lengths to cut a file of ``size`` bytes to: the empty file, inside and just past the
    superblock (16 bytes among them), a few round sizes, then ``n`` seeded lengths."""
    fixed = [0, 8, 16, 47, 48, 96, 512, 1024, 4096, size // 2, size - 1]
    more = sorted(int(x) for x in rng.integers(1, size, n))
    return sorted({x for x in fixed + more if 0 <= x < size})


def data_extents(path) -> list[tuple[int, int]]:
    """(offset, length) of every stored chunk and contiguous dataset in ``path``: the rest of
    the file is metadata, free space and padding."""
    out = []

    def visit(_name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        if obj.chunks is None:
            off = obj.id.get_offset()
            if off is not None:
                out.append((off, obj.id.get_storage_size()))
            return
        for i in range(obj.id.get_num_chunks()):
            c = obj.id.get_chunk_info(i)
            out.append((c.byte_offset, c.size))

    with h5py.File(path, "r", swmr=True) as f:  # the live copy refuses a plain open
        f.visititems(visit)
    return out


def flip_offsets(path, n: int, rng) -> list[int]:
    """``n`` seeded offsets: half in metadata (outside the stored data), half anywhere."""
    size = os.path.getsize(path)
    in_data = np.zeros(size, bool)
    for off, length in data_extents(path):
        in_data[off : off + length] = True
    meta = np.flatnonzero(~in_data)
    picks = list(rng.choice(meta, n // 2, replace=False)) + list(rng.integers(0, size, n - n // 2))
    return sorted({int(x) for x in picks})


def damaged_cases(base: dict, out: Path, seed: int, n_cuts: int, n_flips: int) -> list[dict]:
    """Copies of the run cut short, and with one byte flipped (xor a seeded nonzero byte); the
    live copy flipped too (read in SWMR mode)."""
    rng = np.random.default_rng(seed)
    cases = []
    for which, n in (("run", n_flips), ("live", max(2, n_flips // 4))):
        data = base[which].read_bytes()
        for off in flip_offsets(base[which], n, rng):
            b = bytearray(data)
            b[off] ^= int(rng.integers(1, 256))
            p = out / f"flip_{which}_{off}.h5"
            p.write_bytes(bytes(b))
            cases.append({"case": p.stem, "path": str(p)})
    data = base["run"].read_bytes()
    for n in cut_lengths(len(data), n_cuts, rng):
        p = out / f"cut_{n}.h5"
        p.write_bytes(data[:n])
        cases.append({"case": p.stem, "path": str(p), "refuse": list(READERS)})
    return cases


# --------------------------------------------------------------------------- crafted copies
def _recreate(f, name, **kw):
    """Replace dataset ``name`` by one made with ``kw`` (attributes kept)."""
    attrs = dict(f[name].attrs)
    del f[name]
    ds = f.create_dataset(name, **kw)
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


OXY = "snapshots/fields/oxygen"


def _shape(f, name):
    return f[name].shape


def _vds(f, target_file, target_name, shape, dtype):
    layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
    layout[...] = h5py.VirtualSource(str(target_file), target_name, shape=shape)
    attrs = dict(f[OXY].attrs)
    del f[OXY]
    f.create_virtual_dataset(OXY, layout, fillvalue=0)
    for k, v in attrs.items():
        f[OXY].attrs[k] = v


def _resize_all(f, group, n):
    for ds in f[group].values():
        if isinstance(ds, h5py.Dataset):
            ds.resize(n, axis=0)


def _counts(f, **values):
    from tmesim.io import checkpoint

    slot = int(f["checkpoint/valid_slot"][()])
    c = f[f"checkpoint/slot{slot}/counts"]
    for k, v in values.items():
        c[checkpoint.COUNTS.index(k)] = v


def _valid(f):
    return f"checkpoint/slot{int(f['checkpoint/valid_slot'][()])}"


def _index(f, value: bytes):
    f[_valid(f) + "/extra_index"][0] = value


def _attr(key, value):
    def edit(f, _b):
        f.attrs[key] = value

    return edit


#: name -> edit(h5py file open r+, base dict): each makes a file every reader must refuse
CRAFTED = {
    # other files: never opened, never read
    "elink_h5": lambda f, b: (
        f.__delitem__(OXY),
        f.__setitem__(OXY, h5py.ExternalLink(str(b["h5"]), OXY)),
    ),
    "elink_fifo": lambda f, b: (
        f.__delitem__(OXY),
        f.__setitem__(OXY, h5py.ExternalLink(str(b["fifo"]), "/x")),
    ),
    "elink_group": lambda f, b: (
        f.__delitem__("snapshots/fields"),
        f.__setitem__("snapshots/fields", h5py.ExternalLink(str(b["h5"]), "snapshots/fields")),
    ),
    "elink_outside_schema": lambda f, b: f.__setitem__(
        "extra", h5py.ExternalLink(str(b["fifo"]), "/x")
    ),
    "external_storage_text": lambda f, b: _recreate(
        f, OXY, shape=_shape(f, OXY), dtype="f4", external=[(str(b["txt"]), 0, h5py.h5f.UNLIMITED)]
    ),
    "external_storage_fifo": lambda f, b: _recreate(
        f, OXY, shape=_shape(f, OXY), dtype="f4", external=[(str(b["fifo"]), 0, h5py.h5f.UNLIMITED)]
    ),
    "external_storage_timeseries": lambda f, b: _recreate(
        f,
        "timeseries/burden",
        shape=_shape(f, "timeseries/burden"),
        dtype="f8",
        external=[(str(b["txt"]), 0, h5py.h5f.UNLIMITED)],
    ),
    "virtual_h5": lambda f, b: _vds(f, b["h5"], OXY, _shape(f, OXY), "f4"),
    "virtual_fifo": lambda f, b: _vds(f, b["fifo"], OXY, _shape(f, OXY), "f4"),
    "virtual_self": lambda f, b: _vds(f, ".", "snapshots/memory", _shape(f, OXY), "f4"),
    # links inside the file
    "soft_link": lambda f, b: (
        f.__delitem__(OXY),
        f.__setitem__(OXY, h5py.SoftLink("/snapshots/memory")),
    ),
    "soft_dangling": lambda f, b: (
        f.__delitem__(OXY),
        f.__setitem__(OXY, h5py.SoftLink("/nowhere")),
    ),
    "soft_loop": lambda f, b: (f.__delitem__(OXY), f.__setitem__(OXY, h5py.SoftLink("/" + OXY))),
    "hard_alias": lambda f, b: (f.__delitem__(OXY), f.__setitem__(OXY, f["snapshots/memory"])),
    "hard_cycle": lambda f, b: f["snapshots/fields"].__setitem__("up", f["snapshots"]),
    "extra_group": lambda f, b: f.create_group("evil").create_dataset("x", data=np.arange(5)),
    "extra_dataset": lambda f, b: f.__setitem__("evil", np.arange(5)),
    "named_type": lambda f, b: f.__setitem__("evil_type", np.dtype("f4")),
    "field_wrong_shape": lambda f, b: f["snapshots/fields"].create_dataset(
        "bad", data=np.zeros((4, 3), "f4")
    ),
    "field_wrong_rank": lambda f, b: _recreate(f, OXY, data=np.zeros((4, 576), "f4")),
    # sizes the file cannot hold
    "huge_snapshots": lambda f, b: (
        _resize_all(f, "snapshots", 10**9),
        _resize_all(f, "snapshots/fields", 10**9),
    ),
    "huge_timeseries": lambda f, b: _resize_all(f, "timeseries", 10**9),
    "huge_events": lambda f, b: _resize_all(f, "events", 10**9),
    "huge_grid": lambda f, b: (
        [
            _recreate(
                f,
                n,
                shape=(1, 10**5, 10**5),
                maxshape=(None, 10**5, 10**5),
                chunks=(1, 256, 256),
                dtype=f[n].dtype,
            )
            for n in ("snapshots/kind", "snapshots/tumor_state", "snapshots/memory", OXY)
        ]
        + [f.attrs.__setitem__("grid_shape", np.array([10**5, 10**5]))]
    ),
    "huge_checkpoint_state": lambda f, b: _recreate(
        f, _valid(f) + "/state/memory", shape=(10**10,), dtype="f4"
    ),
    "huge_extra": lambda f, b: (
        f[_valid(f) + "/extra"].resize((10**9,)),
        _counts(f, extra_nbytes=10**9),
    ),
    # dtypes and ranks that are not the schema's
    "dtype_field_str": lambda f, b: _recreate(f, OXY, data=np.zeros(_shape(f, OXY), "S4")),
    "dtype_kind_float": lambda f, b: _recreate(
        f, "snapshots/kind", data=np.zeros(_shape(f, "snapshots/kind"))
    ),
    "dtype_time_compound": lambda f, b: _recreate(
        f, "snapshots/time", data=np.zeros(_shape(f, "snapshots/time"), [("a", "f8"), ("b", "i4")])
    ),
    "dtype_column_vlen": lambda f, b: _recreate(
        f,
        "timeseries/burden",
        data=["x"] * _shape(f, "timeseries/burden")[0],
        dtype=h5py.string_dtype(),
    ),
    "dtype_state_object_ref": lambda f, b: _recreate(
        f, _valid(f) + "/state/kind", data=[f.ref] * 576, dtype=h5py.ref_dtype
    ),
    "filter_lzf": lambda f, b: _recreate(
        f, OXY, data=f[OXY][()], chunks=(1, 24, 24), compression="lzf"
    ),
    "filter_scaleoffset": lambda f, b: _recreate(
        f, OXY, data=f[OXY][()], chunks=(1, 24, 24), scaleoffset=2
    ),
    # root attributes
    "version_words": _attr("format_version", "one.two"),
    "version_bytes": _attr("format_version", np.bytes_(b"\xff\xfe")),
    "version_array": _attr("format_version", np.array([1, 3])),
    "version_negative": _attr("format_version", "-1.3"),
    "version_huge": _attr("format_version", "1" * 40 + ".0"),
    "format_array": _attr("format", np.array([b"tmesim", b"x"])),
    "grid_negative": _attr("grid_shape", np.array([-24, 24])),
    "grid_zero": _attr("grid_shape", np.array([0, 24])),
    "grid_text": _attr("grid_shape", "24x24"),
    "grid_float": _attr("grid_shape", np.array([24.5, 24.0])),
    "grid_rank4": _attr("grid_shape", np.array([1, 1, 24, 24])),
    "grid_other": _attr("grid_shape", np.array([24, 23])),
    "dx_nan": _attr("dx_um", np.nan),
    "dx_negative": _attr("dx_um", -20.0),
    "dx_text": _attr("dx_um", "twenty"),
    "dt_inf": _attr("dt_min", np.inf),
    "seed_text": _attr("seed", "seven"),
    "seed_float": _attr("seed", 7.5),
    "status_unknown": _attr("status", "hacked".ljust(64)),
    "status_bytes": _attr("status", np.bytes_(b"\xff" * 64)),
    "scenario_missing": lambda f, b: f.attrs.__delitem__("scenario"),
    "grid_missing": lambda f, b: f.attrs.__delitem__("grid_shape"),
    # events
    "event_nested_json": lambda f, b: f["events/detail"].__setitem__(0, b"[" * 2000),
    # the checkpoint
    "ck_step_negative": lambda f, b: _counts(f, step=-5),
    "ck_rows_past_end": lambda f, b: _counts(f, n_rows=10**6),
    "ck_rows_negative": lambda f, b: _counts(f, n_rows=-1),
    "ck_rows_not_step": lambda f, b: _counts(f, n_rows=20),
    "ck_snapshots_negative": lambda f, b: _counts(f, n_snapshots=-3),
    "ck_snapshots_past_end": lambda f, b: _counts(f, n_snapshots=999),
    "ck_events_past_end": lambda f, b: _counts(f, n_events=10**12),
    "ck_extra_negative": lambda f, b: _counts(f, extra_nbytes=-8),
    "ck_extra_past_end": lambda f, b: _counts(f, extra_nbytes=10**15),
    "ck_generation_negative": lambda f, b: _counts(f, generation=-1),
    "ck_time_nan": lambda f, b: f[_valid(f) + "/time_min"].__setitem__((), np.nan),
    "ck_time_other": lambda f, b: f[_valid(f) + "/time_min"].__setitem__((), 123.0),
    "ck_valid_slot_7": lambda f, b: f["checkpoint/valid_slot"].__setitem__((), 7),
    "ck_valid_slot_negative": lambda f, b: f["checkpoint/valid_slot"].__setitem__((), -9),
    "ck_valid_slot_text": lambda f, b: _recreate(f, "checkpoint/valid_slot", data=np.bytes_(b"0")),
    "ck_counts_short": lambda f, b: _recreate(f, _valid(f) + "/counts", data=np.arange(3)),
    "ck_counts_float": lambda f, b: _recreate(f, _valid(f) + "/counts", data=np.full(6, 0.5)),
    "ck_layout_text": lambda f, b: f["checkpoint"].attrs.__setitem__("layout_version", "one"),
    "ck_index_not_json": lambda f, b: _index(f, b"{not json"),
    "ck_index_nested": lambda f, b: _index(f, b"[" * 5000),
    "ck_index_object_dtype": lambda f, b: _index(
        f, b'[{"name": "x", "dtype": "|O", "shape": [1], "offset": 0}]'
    ),
    "ck_index_bad_shape": lambda f, b: _index(
        f, b'[{"name": "x", "dtype": "<f8", "shape": [1000000000, 1000], "offset": 0}]'
    ),
    "ck_index_negative_offset": lambda f, b: _index(
        f, b'[{"name": "x", "dtype": "<f8", "shape": [1], "offset": -8}]'
    ),
    "ck_index_not_list": lambda f, b: _index(f, b'{"name": "x"}'),
    "ck_state_wrong_dtype": lambda f, b: _recreate(
        f, _valid(f) + "/state/kind", data=np.zeros(576, "f8")
    ),
    "ck_state_missing": lambda f, b: f.__delitem__(_valid(f) + "/state/kind"),
}


#: crafted values only a resume reads (the checkpoint's): the other readers read the run's values
RESUME_REFUSES = {
    name
    for name in CRAFTED
    if name.startswith("ck_") and name not in ("ck_valid_slot_text", "ck_counts_float")
}
#: crafted values a reader may show as they are (an event detail that is not JSON is kept as text)
SHOWN_AS_IS = {"event_nested_json"}


def crafted_cases(base: dict, out: Path, names=None) -> list[dict]:
    cases = []
    for name in names or CRAFTED:
        p = out / f"crafted_{name}.h5"
        shutil.copy(base["run"], p)
        with h5py.File(p, "r+") as f:
            CRAFTED[name](f, base)
        refuse = ["resume"] if name in RESUME_REFUSES else [] if name in SHOWN_AS_IS else READERS
        cases.append(
            {"case": p.stem, "path": str(p), "refuse": list(refuse), "as_is": name in SHOWN_AS_IS}
        )
    return cases


# --------------------------------------------------------------------------- the driver side
def _arrays_digest(items, secret_hits: list) -> str:
    """A hash of (key, value) pairs; numpy values by dtype, shape and bytes. Values holding
    the outside file's bytes are noted in ``secret_hits``."""
    h = hashlib.sha256()
    for key, v in items:
        h.update(repr(key).encode())
        if isinstance(v, np.ndarray) or hasattr(v, "__array__"):
            a = np.ascontiguousarray(np.asarray(v))
            raw = a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode()
            if SECRET[:8] in raw:
                secret_hits.append(key)
            h.update(f"{a.dtype.str}{a.shape}".encode() + raw)
        else:
            text = repr(v)
            if SECRET[:8].decode() in text:
                secret_hits.append(key)
            h.update(text.encode())
    return h.hexdigest()


def _read_open_run(path, hits, drop_resume=False):
    from tmesim.io.reader import open_run

    with open_run(path) as ds:
        ds.load()
        if drop_resume:  # the events a resume adds
            ds = ds.isel(event=ds["event_kind"].values != "resume")
        items = [(("var", n), ds[n].values) for n in sorted(map(str, ds.variables))]
        items += [
            (("vattrs", n), sorted(ds[n].attrs.items())) for n in sorted(map(str, ds.variables))
        ]
        attrs = {k: v for k, v in ds.attrs.items() if k != "path"}
        if drop_resume:
            attrs.pop("created")
        items += sorted(attrs.items())
    return _arrays_digest(items, hits)


def _read_napari(path, hits):
    from tmesim_napari import get_reader, read_run

    get_reader(path)  # must answer (None or the reader function), never raise
    items = []
    for data, kw, kind in read_run(path):
        kw = dict(kw)
        kw.pop("metadata")
        items.append(((kind, kw["name"]), np.asarray(data.compute())))
        items.append(((kind, kw["name"], "kw"), sorted((k, repr(v)) for k, v in kw.items())))
    return _arrays_digest(items, hits)


def _read_records(path, hits):
    from tmesim.sweep.records import observe_run, run_end

    obs = observe_run(path, *OBSERVE)
    return _arrays_digest(sorted(obs.items()) + sorted(run_end(path).items()), hits)


def _cli(argv):
    from tmesim.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _read_report(path, hits, tmp):
    rc, out, err = _cli(["report", path, "--out-dir", str(tmp)])
    if rc != 0:
        return rc, err
    table = [line for line in out.splitlines() if not line.startswith("wrote ")]
    pngs = sorted(p.name.replace(Path(path).stem, "RUN") for p in Path(tmp).glob("*.png"))
    return 0, _arrays_digest([("table", table), ("png", pngs)], hits)


def _read_resume(path, hits, tmp):
    work = Path(tmp) / "run.h5"
    shutil.copy(path, work)
    rc, _out, err = _cli(["resume", str(work), "-q", "--backend", "cpu"])
    if rc != 0:
        return rc, err
    from tmesim.errors import RunFileError

    try:
        return 0, _read_open_run(work, hits, drop_resume=True)
    except RunFileError:
        # resumed from an intact checkpoint; the damage it did not read is still refused
        return 0, "damage-kept"


def _run_job(job: dict, refs: dict) -> dict:
    from tmesim.errors import RunFileError

    reader, path = job["reader"], job["path"]
    hits: list = []
    res: dict = {"id": job["id"]}
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            if reader in ("report", "resume"):
                fn = _read_report if reader == "report" else _read_resume
                rc, got = fn(path, hits, tmp)
                if rc == 0:
                    res.update(outcome="ok", digest=got)
                else:
                    res.update(outcome="cli_error", rc=rc, stderr=got)
            else:
                fn = {"open_run": _read_open_run, "napari": _read_napari, "records": _read_records}
                res.update(outcome="ok", digest=fn[reader](path, hits))
    except RunFileError as exc:
        res.update(outcome="error", message=str(exc))
    except BaseException as exc:  # what the campaign is looking for
        import traceback

        res.update(outcome="traceback", message=f"{type(exc).__name__}: {str(exc)[:300]}")
        res["traceback"] = traceback.format_exc(limit=-6)[-2000:]
    res["secs"] = time.monotonic() - t0
    res["secret"] = hits
    if res["outcome"] == "ok" and job.get("ref") is not None:
        res["same"] = res["digest"] == refs.get((reader, job["ref"]))
    return res


def driver() -> None:
    """Read jobs (JSON lines) from stdin's file argument, answer one JSON line per job."""
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))  # a huge allocation fails
    faulthandler.enable()  # a driver killed by a signal says where
    jobs = json.loads(Path(sys.argv[1]).read_text())
    refs: dict = {}
    for job in jobs:
        if job.get("is_ref"):
            res = _run_job(job, refs)
            refs[(job["reader"], job["path"])] = res.get("digest")
        else:
            print(json.dumps({"begin": job["id"]}), flush=True)
            res = _run_job(job, refs)
        print(json.dumps(res), flush=True)


# --------------------------------------------------------------------------- the test side
def make_jobs(base: dict, cases: list[dict], readers=READERS) -> list[dict]:
    jobs = []
    ref = str(base["run"])
    for reader in readers:
        jobs.append({"id": len(jobs), "reader": reader, "path": ref, "is_ref": True})
    for c in cases:
        for reader in c.get("readers", readers):
            jobs.append(
                {
                    "id": len(jobs),
                    "reader": reader,
                    "path": c["path"],
                    "case": c["case"],
                    "ref": ref,
                    "refuse": reader in c.get("refuse", ()),
                    "as_is": c.get("as_is", False),
                }
            )
    return jobs


def _pump(stream, lines: queue.Queue) -> None:
    """Put each line of ``stream`` on ``lines``, then "" at its end."""
    for line in stream:
        lines.put(line)
    lines.put("")


def run_campaign(jobs: list[dict], work: Path) -> list[dict]:
    """Run ``jobs`` in driver subprocesses; a job that does not answer within :data:`HANG_S`
    is a hang: the driver is killed and a new one goes on after it. One result per job."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "viewer")]))
    env["MPLBACKEND"] = "Agg"
    refs = [j for j in jobs if j.get("is_ref")]
    results: dict[int, dict] = {}
    rest = [j for j in jobs if not j.get("is_ref")]
    with open(work / "campaign.log", "a") as log:
        while rest:
            rest = _run_driver(refs, rest, results, work, env, log)
    return [dict(j, **results.get(j["id"], {"outcome": "missing"})) for j in jobs]


def _run_driver(refs, rest, results, work, env, log) -> list[dict]:
    """One driver on ``refs + rest``: its answers go to ``results``; returns the jobs left (those
    after a job that hung or crashed)."""
    jf = work / "jobs.json"
    jf.write_text(json.dumps(refs + rest))  # every driver takes the references first
    lines: queue.Queue = queue.Queue()
    with open(work / "driver.err", "w+") as errf:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from tests.io.test_hostile_files import driver; driver()",
                str(jf),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=errf,
            text=True,
        )
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        current = None
        while True:
            try:
                line = lines.get(timeout=HANG_S if current is not None else 300)
            except queue.Empty:
                line = None
            if not line:
                proc.kill()
                proc.wait()
                errf.seek(0)
                err = errf.read()[-2000:]
                if current is None:
                    if line is None or rest:
                        raise RuntimeError(
                            f"the driver stopped between jobs (exit {proc.returncode}): {err}"
                        )
                    break
                outcome = "hang" if line is None else f"crash (exit {proc.returncode})"
                results[current] = {
                    "id": current,
                    "outcome": outcome,
                    "message": err,
                    "secs": HANG_S if line is None else 0.0,
                }
                rest = [j for j in rest if j["id"] > current]
                break
            log.write(line)
            log.flush()
            msg = json.loads(line)
            if "begin" in msg:
                current = msg["begin"]
                continue
            results[msg["id"]] = msg
            current = None
            rest = [j for j in rest if j["id"] != msg["id"]]
            if not rest:
                proc.wait()
                break
    return rest


def verdict(res: dict, base_secs: dict) -> str | None:
    """None when the reader's answer is one the issue accepts, else what is wrong."""
    o = res["outcome"]
    if res.get("secret"):
        return f"read the outside file ({res['secret'][:3]})"
    if o in ("hang", "missing", "traceback") or o.startswith("crash"):
        return o + (f": {res.get('message', '')}" if o != "hang" else "")
    limit = max(LIMIT_S, 3 * base_secs.get(res["reader"], 0.0))
    if res["secs"] > limit:
        return f"took {res['secs']:.1f} s"
    if o == "error":
        msg = res["message"]
        if "\n" in msg or not msg.startswith(res["path"]):
            return f"error message not one line naming the file: {msg!r}"
        return None
    if o == "cli_error":
        err = res["stderr"]
        cmd = res["reader"]
        if res["rc"] != 2 or err.count("\n") != 1 or not err.startswith(f"tmesim {cmd}: error: "):
            return f"exit {res['rc']}, stderr {err[-300:]!r}"
        return None
    if res.get("refuse"):
        return "accepted a file it must refuse"
    if res["digest"] == "damage-kept" or res.get("as_is"):
        return None
    if not res.get("same"):
        return "read values that differ from the run's"
    return None


def summarize(results: list[dict]) -> dict:
    """Figures of a campaign; ``bad`` lists (case, reader, what is wrong)."""
    refs = [r for r in results if r.get("is_ref")]
    jobs = [r for r in results if not r.get("is_ref")]
    base_secs = {r["reader"]: r.get("secs", 0.0) for r in refs}
    bad = [(r, v) for r in jobs if (v := verdict(r, base_secs))]
    bad += [(r, f"the undamaged run: {r['outcome']}") for r in refs if r["outcome"] != "ok"]
    by: dict[str, int] = {}
    for r in jobs:
        by[r["outcome"]] = by.get(r["outcome"], 0) + 1
    return {
        "cases": len({r["case"] for r in jobs}),
        "jobs": len(jobs),
        "outcomes": by,
        "tracebacks": sum(r["outcome"] == "traceback" for r in jobs),
        "hangs": sum(r["outcome"] == "hang" for r in jobs),
        "crashes": sum(r["outcome"].startswith("crash") for r in jobs),
        "outside_reads": sum(bool(r.get("secret")) for r in jobs),
        "silent": sum(1 for _, v in bad if v.startswith(("read values", "accepted"))),
        "max_secs": round(max((r.get("secs", 0.0) for r in jobs), default=0.0), 2),
        "max_refusal_secs": round(
            max((r["secs"] for r in jobs if r["outcome"] in ("error", "cli_error")), default=0.0),
            2,
        ),
        "bad": [(r.get("case", "base"), r["reader"], v) for r, v in bad],
    }


def campaign(work: Path, scale: int = 1, seed: int = 18, every_report: int = 1) -> list[dict]:
    """Make the cases and run every reader on them. ``tmesim report`` takes about 2 s on a file
    it reads (``open_run`` checks the same values in 0.05 s): with ``every_report`` > 1 it runs
    on every ``every_report``-th flipped file only, and on no crafted file it may read.
    Returns the jobs' results."""
    base = make_base(work / "base")
    out = work / "cases"
    out.mkdir()
    cases = [{"case": "live_intact", "path": str(base["live"])}]
    flips = damaged_cases(base, out, seed, n_cuts=6 * scale, n_flips=16 * scale)
    crafted = crafted_cases(base, out)
    no_report = [r for r in READERS if r != "report"]
    for i, c in enumerate(c for c in flips if c["case"].startswith("flip")):
        if i % every_report:
            c["readers"] = no_report
    for c in crafted:
        if every_report > 1 and "report" not in c["refuse"]:
            c["readers"] = no_report
    cases += flips + crafted
    jobs = make_jobs(base, cases)
    (work / "all_jobs.json").write_text(json.dumps(jobs))
    return run_campaign(jobs, work)


# ----------------------------------------------------------------------------------- the tests
#: the CI campaign: about 120 files, 5 readers, about a minute on 2 cores; `tmesim report`
#: reads every snapshot (one colour scale per field over the run), so a flipped byte it reads
#: past is rare: it runs on every second flipped file to meet one
CI_SCALE, CI_EVERY_REPORT = 1, 2


@pytest.fixture(scope="module")
def ci_results(tmp_path_factory):
    return campaign(tmp_path_factory.mktemp("fuzz"), CI_SCALE, every_report=CI_EVERY_REPORT)


def test_every_reader_refuses_in_one_line_or_reads_the_runs_values(ci_results):
    """Cut, flipped and crafted files: each reader answers within LIMIT_S with a one-line
    RunFileError naming the file (CLI: exit 2, one stderr line), or with exactly the values the
    undamaged run holds; no traceback, no hang, no crash."""
    s = summarize(ci_results)
    assert s["bad"] == [], json.dumps({k: v for k, v in s.items() if k != "bad"})
    assert (s["tracebacks"], s["hangs"], s["crashes"], s["silent"]) == (0, 0, 0, 0)


def test_no_reader_reads_outside_the_run_file(ci_results):
    """External links, external storage and virtual datasets pointing at a text file, an HDF5
    file and a FIFO: refused by every reader, fast (a FIFO opened would block), and no value
    read holds the outside file's bytes."""
    outside = [
        r
        for r in ci_results
        if r.get("case", "").startswith(("crafted_elink", "crafted_external", "crafted_virtual"))
    ]
    assert len(outside) == 10 * len(READERS)
    assert [r for r in outside if r["outcome"] not in ("error", "cli_error")] == []
    assert max(r["secs"] for r in outside) < 1.0
    assert [r for r in ci_results if r.get("secret")] == []


def test_the_campaign_reaches_every_kind_of_answer(ci_results):
    """The files really are damaged where readers look, and undamaged regions still read: each
    reader both refuses some flipped files and reads others with the run's values; every cut
    file is refused; a killed writer's file (SWMR) reads as the run."""
    for reader in READERS:
        flips = [
            r for r in ci_results if r.get("case", "").startswith("flip") and r["reader"] == reader
        ]
        outcomes = {r["outcome"] for r in flips}
        assert {"ok"} < outcomes | {"ok"} and outcomes & {"error", "cli_error"}, (reader, outcomes)
        assert any(r.get("same") for r in flips), reader
    cuts = [r for r in ci_results if r.get("case", "").startswith("cut_")]
    assert len({r["case"] for r in cuts}) >= 15 and "cut_16" in {r["case"] for r in cuts}
    assert all(r["outcome"] in ("error", "cli_error") for r in cuts)
    live = [r for r in ci_results if r.get("case") == "live_intact"]
    assert [r.get("same") for r in live] == [True] * len(READERS)


@pytest.mark.parametrize(
    "case, argv",
    [
        ("cut_16", ["report"]),
        ("crafted_elink_fifo", ["report"]),
        ("crafted_huge_snapshots", ["resume", "-q", "--backend", "cpu"]),
        ("crafted_ck_index_object_dtype", ["resume", "-q", "--backend", "cpu"]),
    ],
)
def test_the_cli_in_its_own_process(ci_results, case, argv, tmp_path):
    """`python -m tmesim report|resume` on hostile files: exit code 2, one stderr line
    ``tmesim CMD: error: PATH: ...``, no traceback, within seconds."""
    src = next(Path(r["path"]) for r in ci_results if r.get("case") == case)
    path = tmp_path / src.name
    shutil.copy(src, path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-m", "tmesim", argv[0], str(path), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    secs = time.monotonic() - t0
    assert p.returncode == 2, p.stderr[-2000:]
    assert p.stderr.startswith(f"tmesim {argv[0]}: error: {path}: ") and p.stderr.count("\n") == 1
    assert "Traceback" not in p.stderr + p.stdout
    assert secs < 20, secs  # interpreter start and imports included


def test_sweep_records_take_a_stop_reason_only_from_a_json_object(tmp_path):
    """The stop reason goes into a sweep's records: a stop event whose detail is not a JSON
    object with a text reason is a RunFileError (json.loads raised, or the record took a
    wrong value); the observables use the rows every column holds."""
    import tmesim
    from tests.helpers import scenario_text
    from tmesim.errors import RunFileError
    from tmesim.sweep.records import observe_run, run_end

    sc = tmesim.loads_scenario(scenario_text(*FUZZ_SETS))
    path = tmesim.Simulation(sc, backend="cpu").run(tmp_path / "run.h5")
    ref = observe_run(path, *OBSERVE)
    with h5py.File(path, "r+") as f:
        ev = f["events"]
        n = ev["kind"].shape[0]
        for ds in ev.values():
            ds.resize(n + 1, axis=0)
        ev["time_min"][n] = 60.0
        ev["kind"][n] = b"stop"
        ev["detail"][n] = b'{"reason": "burden above 1e9"}'
        f["timeseries/burden"].resize(f["timeseries/burden"].shape[0] + 5, axis=0)
    assert run_end(path)["stop_reason"] == "burden above 1e9"
    assert observe_run(path, *OBSERVE) == ref  # the 5 rows only burden has are not taken
    for detail in (b"not json", b'["burden"]', b'{"reason": 7}', b"[" * 2000):
        with h5py.File(path, "r+") as f:
            f["events/detail"][n] = detail
        with pytest.raises(RunFileError, match="its stop event's detail") as exc:
            run_end(path)
        assert str(exc.value).startswith(f"{path}: damaged run file")


@pytest.mark.parametrize("text", [b"checkpoint_every_hours", b"voxels/step"])
def test_a_flipped_byte_in_a_string_attribute_is_detected(ci_results, tmp_path, text):
    """The scenario text (what a resume runs) and a column's units, one byte flipped: a reader
    refuses the file or reads the run's own values, never another scenario or unit."""
    from tmesim.errors import RunFileError
    from tmesim.io.reader import open_run

    src = next(Path(r["path"]) for r in ci_results if r.get("is_ref"))
    data = bytearray(src.read_bytes())
    at = data.find(text)
    assert at > 0
    data[at + 3] ^= 0x20
    bad = tmp_path / "flipped.h5"
    bad.write_bytes(bytes(data))
    with open_run(src) as ds:
        want = (ds.attrs["scenario"], ds["cleared"].attrs["units"])
    try:
        with open_run(bad) as ds:
            got = (ds.attrs["scenario"], ds["cleared"].attrs["units"])
    except RunFileError:
        return
    assert got == want


@pytest.mark.slow
def test_a_larger_campaign(tmp_path):
    """Eight times the cut and flipped files, every reader on every file (TMESIM_FUZZ_SCALE
    sets the multiple: `TMESIM_FUZZ_SCALE=40 pytest -m slow -k larger_campaign`)."""
    scale = int(os.environ.get("TMESIM_FUZZ_SCALE", 8))
    s = summarize(campaign(tmp_path, scale, seed=1800 + scale))
    assert s["bad"] == [], json.dumps({k: v for k, v in s.items() if k != "bad"})


if __name__ == "__main__":
    scale = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ.get("TMESIM_FUZZ_SCALE", 1))
    work = Path(tempfile.mkdtemp(prefix="tmesim-fuzz-"))
    t0 = time.monotonic()
    s = summarize(campaign(work, scale, seed=1800 + scale))
    s["wall_s"] = round(time.monotonic() - t0, 1)
    bad = s.pop("bad")
    print(json.dumps(s, indent=1))
    for b in bad:
        print(*b, sep=" | ")
    print(f"files kept in {work}")
