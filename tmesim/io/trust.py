"""What a run file may hold, checked before anything in it is read.

A run file may come from someone else, so it is data only: the groups and datasets the schema
names (tmesim.io.schema), with the schema's dtypes, ranks and shapes, stored in the file
itself. :func:`check_structure` walks the file's links without following any link that is not a
hard link (so no other file is ever opened) and refuses, with a one-line
:class:`~tmesim.errors.RunFileError`:

- soft, external and user-defined links, objects reached by two links, named datatypes;
- datasets with external storage, virtual datasets, and filters other than the writer's
  (deflate, shuffle, Fletcher-32);
- objects the schema does not name, in a file of a format version this tmesim knows (a newer
  minor version may add objects: those pass the same safety checks and are never read);
- datasets of another dtype kind or rank, or whose voxels disagree with ``grid_shape``;
- datasets declaring more data than the file can hold: more than deflate's largest ratio
  (1032) times the bytes stored for them, so that no reader allocates what the file cannot hold;
- root attributes that are not what the schema says: ``grid_shape`` positive integers (2 or 3
  of them), ``dx_um`` and ``dt_min`` finite and positive, ``seed`` an integer, ``status`` one a
  writer sets, ``scenario`` text, code names lists of strings;
- text attributes (the scenario, units, roles, code names) that differ from what the writer
  wrote: HDF5 keeps variable-length strings in its global heap, which has no checksum, so the
  writer stores a SHA-256 of them all (:data:`TEXT_DIGEST`, fixed length, in the root's object
  header, which is checksummed) and a file whose text no longer matches it is refused. Files
  written before it existed have none and are not checked.

The format itself (``format``, ``format_version``) is tmesim.io.runfile.check_format's, which
runs first. The checkpoint slots' state arrays are read only when their slot is committed, and
tmesim.io.checkpoint.read checks them then. The walk touches each object header once and reads no
raw data: a few ms for a run file.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from dataclasses import dataclass, field

import h5py
import numpy as np

from ..errors import RunFileError
from . import schema

#: the most a chunk compressed with deflate expands when read (zlib's largest ratio is 1032:1)
DEFLATE_MAX_RATIO = 1032
#: declared sizes below this many bytes are never refused (cheap to read, whatever they hold)
SMALL_BYTES = 1 << 16
#: a grid edge and a grid's voxels beyond these are no run that any device could hold
MAX_EDGE = 1 << 24
MAX_VOXELS = 1 << 34
#: a checkpoint's state array holds at most this many values per voxel (and 4096 more)
STATE_VALUES_PER_VOXEL = 64
#: at most this many objects in a file (a run has about 100)
MAX_OBJECTS = 100_000
#: every status a writer sets (tmesim.simulation.Simulation.run)
STATUSES = ("running", "finished", "stopped", "interrupted", "failed")

_FILTERS = {
    h5py.h5z.FILTER_DEFLATE: "deflate",
    h5py.h5z.FILTER_SHUFFLE: "shuffle",
    h5py.h5z.FILTER_FLETCHER32: "fletcher32",
}
_LINK_KINDS = {h5py.h5l.TYPE_SOFT: "a soft link", h5py.h5l.TYPE_EXTERNAL: "an external link"}
_STR = "str"  # a dtype: fixed-length bytes or a variable-length string
#: the root attribute holding the SHA-256 (hex) of every text attribute (:func:`text_digest`)
TEXT_DIGEST = "text_digest"
#: text attributes left out of the digest: the status (rewritten while a run goes on) and the
#: creation time (so that two runs of one seed differ in nothing else, their digest included)
_UNCHECKED_TEXT = {("/", "status"), ("/", "created"), ("/", TEXT_DIGEST)}


def _canon(v) -> bytes:
    """An attribute value as unambiguous bytes (type, length and content of each string)."""
    if isinstance(v, str):
        b = v.encode("utf-8", "surrogatepass")
        return b"u" + len(b).to_bytes(8, "little") + b
    if isinstance(v, bytes):
        return b"b" + len(v).to_bytes(8, "little") + v
    a = np.asarray(v, dtype=object).ravel()
    return b"a" + len(a).to_bytes(8, "little") + b"".join(_canon(x) for x in a)


def text_digest(f: h5py.File) -> str:
    """SHA-256 (hex) of every text attribute of every object in ``f`` (paths and names sorted),
    but the status, the creation time and the digest itself."""
    paths = ["/"]
    f.visit(lambda name: paths.append("/" + name))
    h = hashlib.sha256()
    for path in sorted(paths):
        obj = f[path]
        for name in sorted(obj.attrs):
            if (path, name) in _UNCHECKED_TEXT:
                continue
            dt = obj.attrs.get_id(name).dtype
            if dt.kind in "SU" or h5py.check_string_dtype(dt) is not None:
                h.update(_canon(path) + _canon(name) + _canon(obj.attrs[name]))
    return h.hexdigest()


def check_text_digest(f: h5py.File, where: str, version: tuple[int, int]) -> None:
    """Refuse a file whose text attributes are not those its writer recorded the digest of.
    Only formats from :data:`schema.TEXT_DIGEST_SINCE` to this tmesim's carry the digest as
    computed here (a newer format may compute its own)."""
    if not schema.TEXT_DIGEST_SINCE <= version <= schema.parse_version(schema.FORMAT_VERSION):
        return
    want = f.attrs.get(TEXT_DIGEST)
    if want is None:
        raise RunFileError(f"{where}: damaged run file (its text_digest attribute is missing)")
    want = want.decode("ascii", "replace") if isinstance(want, bytes) else str(want)
    if text_digest(f) != want:
        raise RunFileError(
            f"{where}: damaged run file (its text attributes -- the scenario, units, names -- "
            "are not those its writer wrote: their SHA-256 differs)"
        )


@dataclass(frozen=True)
class Data:
    """A dataset the schema names: dtype kinds (numpy ``dtype.kind`` letters, or ``_STR``),
    rank (None: any), whether its axes after the first are the grid, exact itemsizes."""

    kinds: str
    rank: int | None
    grid: bool = False
    itemsizes: tuple[int, ...] = ()
    #: size checked where it is read (checkpoint state: only a committed slot is read)
    sized_later: bool = False


@dataclass(frozen=True)
class Group:
    """A group the schema names: its named members, the pattern and member every other name
    must match (None: no other name), and the names it must hold."""

    members: dict = field(default_factory=dict)
    others: tuple[str, Data | Group] | None = None
    required: tuple[str, ...] = ()


_SNAP = Data("f", None, grid=True)
_STATE = Group(others=(r".+", Data("biuf", None, sized_later=True)))
_SLOT = Group(
    {
        "state": _STATE,
        "time_min": Data("f", 0),
        "counts": Data("iu", 1),
        "extra": Data("u", 1, itemsizes=(1,)),
        "extra_index": Data(_STR, 1),
    },
    required=("state", "time_min", "counts", "extra", "extra_index"),
)
SCHEMA = Group(
    {
        "snapshots": Group(
            {
                "time": Data("f", 1),
                "step": Data("iu", 1),
                "kind": Data("u", None, grid=True, itemsizes=(1,)),
                "tumor_state": Data("u", None, grid=True, itemsizes=(1,)),
                "memory": _SNAP,
                "fields": Group(others=(r".+", _SNAP)),
            },
            required=("time", "kind", "tumor_state", "fields"),
        ),
        "timeseries": Group(others=(r".+", Data("fiub", 1))),
        "events": Group(
            {"time_min": Data("f", 1), "kind": Data(_STR, 1), "detail": Data(_STR, 1)},
            required=("time_min", "kind", "detail"),
        ),
        "checkpoint": Group({"valid_slot": Data("iu", 0)}, others=(r"slot[0-9]{1,2}", _SLOT)),
    },
    required=("snapshots", "timeseries", "events"),
)


def short(value, n: int = 80) -> str:
    """``repr(value)`` cut to ``n`` characters: a user's value is never echoed whole."""
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


# ----------------------------------------------------------------------------- root attributes
def _number(f, key: str, where: str):
    v = f.attrs.get(key)
    if v is None:
        raise RunFileError(f"{where}: root attribute {key} is missing")
    a = np.asarray(v)
    if a.shape != () or a.dtype.kind not in "iuf":
        raise RunFileError(f"{where}: root attribute {key} is {short(v)}, expected a number")
    return a[()]


def _text(f, key: str, where: str) -> None:
    v = f.attrs.get(key)
    if v is not None and not isinstance(v, (str, bytes)):
        raise RunFileError(f"{where}: root attribute {key} is {short(v)}, expected text")


def _names(v, what: str, where: str) -> None:
    a = np.asarray(v)
    if a.ndim != 1 or a.size > 256 or not all(isinstance(x, (str, bytes)) for x in a.tolist()):
        raise RunFileError(f"{where}: {what} is {short(v)}, expected a list of names")


def grid_shape(f, where: str) -> tuple[int, ...]:
    """The root attribute ``grid_shape`` as a tuple of 2 or 3 positive ints (RunFileError if
    it is anything else, or a grid no run could have)."""
    v = f.attrs.get("grid_shape")
    a = np.asarray(v) if v is not None else None
    if (
        a is None
        or a.dtype.kind not in "iu"
        or a.ndim != 1
        or a.size not in (2, 3)
        or (a < 1).any()
        or (a > MAX_EDGE).any()
    ):
        raise RunFileError(
            f"{where}: root attribute grid_shape is {short(v)}, expected 2 or 3 positive "
            "integers (the voxels along z, y, x)"
        )
    shape = tuple(int(n) for n in a)
    if math.prod(shape) > MAX_VOXELS:
        raise RunFileError(f"{where}: grid_shape {shape} holds more voxels than any run can")
    return shape


def check_root(f, where: str) -> tuple[int, ...]:
    """Check the root attributes the readers use; returns the grid shape."""
    shape = grid_shape(f, where)
    for key in ("dx_um", "dt_min"):
        x = _number(f, key, where)
        if not (math.isfinite(x) and x > 0):
            raise RunFileError(
                f"{where}: root attribute {key} is {short(x)}, expected a finite positive number"
            )
    seed = _number(f, "seed", where)
    if np.asarray(seed).dtype.kind not in "iu":
        raise RunFileError(f"{where}: root attribute seed is {short(seed)}, expected an integer")
    v = f.attrs.get("status")
    status = v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    if not isinstance(status, str) or status.strip() not in STATUSES:
        raise RunFileError(
            f"{where}: root attribute status is {short(v)}, expected one of {', '.join(STATUSES)}"
        )
    if not isinstance(f.attrs.get("scenario"), (str, bytes)):
        raise RunFileError(f"{where}: root attribute scenario is missing or not text")
    for key in ("name", "backend", "device", "created", "tmesim_version"):
        _text(f, key, where)
    for key in ("kind_names", "tumor_state_names", "axes"):
        if key in f.attrs:
            _names(f.attrs[key], f"root attribute {key}", where)
    return shape


# ------------------------------------------------------------------------------------- walking
class _Walk:
    def __init__(self, f: h5py.File, where: str, grid: tuple[int, ...], strict: bool):
        self.f, self.where, self.grid, self.strict = f, where, grid, strict
        self.file_size = os.path.getsize(f.filename)
        self.count = 0

    def fail(self, path: str, what: str):
        raise RunFileError(f"{self.where}: {path} {what}; not a run file tmesim wrote")

    def group(self, gid, path: str, spec: Group | None) -> None:
        """Check the members of the group ``gid`` (at ``path``) against ``spec`` (None: a group
        of a newer minor version, checked for safety only)."""
        names: list[bytes] = []

        def add(name: bytes) -> None:  # returning None goes on to the next link
            names.append(name)

        gid.links.iterate(add)
        if spec is not None:
            missing = [r for r in spec.required if r.encode() not in names]
            if missing:
                self.fail(f"{path or '/'}", f"lacks {', '.join(missing)}")
        for raw in names:
            self.count += 1
            if self.count > MAX_OBJECTS:
                self.fail("/", f"holds more than {MAX_OBJECTS} objects")
            name = raw.decode("utf-8", "replace")
            sub = f"{path}/{name}"
            kind = gid.links.get_info(raw).type
            if kind != h5py.h5l.TYPE_HARD:
                self.fail(sub, f"is {_LINK_KINDS.get(kind, 'a user-defined link')}")
            obj = h5py.h5o.open(gid, raw)
            try:
                self.member(obj, sub, self.expect(spec, name, sub))
            finally:
                obj.close()

    def expect(self, spec: Group | None, name: str, path: str):
        if spec is None:
            return None
        if name in spec.members:
            return spec.members[name]
        if spec.others is not None:
            pattern, member = spec.others
            if re.fullmatch(pattern, name):
                return member
            if not spec.members:  # a group of one kind of member (fields, columns, state)
                self.fail(path, "is not a name this group may hold")
        if self.strict:
            self.fail(path, "is not part of the run-file schema")
        return None  # a newer minor version's addition: checked for safety, never read

    def member(self, obj, path: str, spec) -> None:
        info = h5py.h5o.get_info(obj)
        if info.rc != 1:
            self.fail(path, f"is reached by {info.rc} links (a run file links each object once)")
        if info.type == h5py.h5o.TYPE_GROUP:
            if isinstance(spec, Data):
                self.fail(path, "is a group where the schema has a dataset")
            self.group(obj, path, spec)
        elif info.type == h5py.h5o.TYPE_DATASET:
            if isinstance(spec, Group):
                self.fail(path, "is a dataset where the schema has a group")
            self.dataset(obj, path, spec)
        else:
            self.fail(path, "is a named datatype")

    def dataset(self, ds, path: str, spec: Data | None) -> None:
        dcpl = ds.get_create_plist()
        if dcpl.get_layout() == h5py.h5d.VIRTUAL:
            self.fail(path, "is a virtual dataset (its data would come from other datasets)")
        if dcpl.get_external_count():
            self.fail(path, "keeps its data in an external file")
        deflate = False
        for i in range(dcpl.get_nfilters()):
            fid = dcpl.get_filter(i)[0]
            if fid not in _FILTERS:
                self.fail(path, f"uses HDF5 filter {fid}, which tmesim does not write")
            deflate = deflate or fid == h5py.h5z.FILTER_DEFLATE
        dt, shape = ds.dtype, ds.shape
        if spec is not None:
            self.dtype(dt, path, spec)
            self.shape(shape, path, spec)
            if spec.sized_later:
                # a state array holds a few values per voxel (fields: one per field) or a few
                # per drug; its storage is checked when its slot is read
                if math.prod(shape) > STATE_VALUES_PER_VOXEL * math.prod(self.grid) + 4096:
                    self.fail(path, f"has shape {shape}, too large for the grid {self.grid}")
                return
        elif dt.hasobject and h5py.check_string_dtype(dt) is None:
            self.fail(path, f"has dtype {dt}, which tmesim does not write")
        self.size(ds, dcpl, path, shape, dt, deflate)

    def dtype(self, dt: np.dtype, path: str, spec: Data) -> None:
        if spec.kinds == _STR:
            ok = dt.kind == "S" or (dt.kind == "O" and h5py.check_string_dtype(dt) is not None)
        else:
            ok = dt.kind in spec.kinds and dt.names is None and dt.subdtype is None
            ok = ok and (not spec.itemsizes or dt.itemsize in spec.itemsizes)
        if not ok:
            self.fail(path, f"has dtype {short(dt)}, not the schema's")

    def shape(self, shape: tuple, path: str, spec: Data) -> None:
        rank = 1 + len(self.grid) if spec.grid else spec.rank
        if rank is not None and len(shape) != rank:
            self.fail(path, f"has shape {shape}, expected {rank} axes")
        if spec.grid and tuple(shape[1:]) != self.grid:
            self.fail(path, f"has shape {shape}, but the grid is {self.grid}")

    def size(self, ds, dcpl, path: str, shape: tuple, dt: np.dtype, deflate: bool) -> None:
        """Refuse a dataset declaring more than its stored bytes can give back. A live run's
        last row may be declared before it is written: one chunk of slack from the second row."""
        declared = math.prod(shape) * dt.itemsize
        stored = ds.get_storage_size()
        if stored > self.file_size:
            self.fail(path, f"claims {stored} stored bytes, more than the file's {self.file_size}")
        if declared <= SMALL_BYTES:
            return
        room = stored * (DEFLATE_MAX_RATIO if deflate else 1)
        if dcpl.get_layout() == h5py.h5d.CHUNKED and shape and shape[0] >= 2:
            room += math.prod(dcpl.get_chunk()) * dt.itemsize
        if declared > room:
            self.fail(
                path,
                f"declares shape {shape} ({declared} bytes) but stores only {stored} bytes; "
                "the file is damaged or crafted",
            )


def check_structure(f: h5py.File, where: str) -> None:
    """Refuse, with a one-line RunFileError naming ``where``, a file that is not data only in
    the schema's layout (see the module docstring). The file's format must have been checked
    (tmesim.io.runfile.check_format)."""
    from .runfile import attr_str, short_error

    try:
        grid = check_root(f, where)
        major, minor = schema.parse_version(attr_str(f, "format_version"))
        strict = (major, minor) <= schema.parse_version(schema.FORMAT_VERSION)
        walk = _Walk(f, where, grid, strict)
        root = h5py.h5o.get_info(f.id)
        if root.rc > 1:
            walk.fail("/", f"is reached by {root.rc} links")
        walk.group(f.id, "", SCHEMA)
        check_text_digest(f, where, (major, minor))
    except RunFileError:
        raise
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise RunFileError(f"{where}: damaged run file ({short_error(exc)})") from None
