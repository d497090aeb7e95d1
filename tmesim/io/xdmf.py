"""The XDMF sidecar (run.xdmf) through which ParaView, VisIt and VTK open the snapshots of run.h5.

The sidecar holds no data. It is one temporal collection with a uniform Grid per snapshot (its
``Time`` in hours); each array of a snapshot is a HyperSlab DataItem that selects that
snapshot's row of a ``(T, [Z,] Y, X)`` dataset in the run file (named relative to the sidecar,
which sits beside it). Kinds and tumor states are ``UChar`` codes (their names are the
datasets' ``names`` attributes), memory and fields 4-byte floats.

The geometry is written as VTK's XDMF readers (vtkXdmfReader for XDMF 2, ParaView's
vtkXdmf3Reader) take it:

- a ``3DCoRectMesh`` whose ``Dimensions`` count nodes slowest axis first, (z, y, x): the
  readers reverse them into VTK's (x, y, z), so that VTK's x is the file's last axis;
- ``ORIGIN_DXDYDZ`` geometry in the same (z, y, x) order: origin 0, spacing ``dx_um``;
- the arrays cell-centred, one cell a voxel: voxel ``i`` spans ``[i dx, (i + 1) dx]`` um, its
  centre where tmesim.grid puts it, and VTK's cell order (x fastest) is the file's C order;
- a 2D run (y, x) as one layer of cells, ``dx_um`` thick, in VTK's x-y plane: both readers put
  a ``2DCoRectMesh`` in the y-z plane instead, and vtkXdmfReader reads no cell data from a grid
  one node thick.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

#: numpy dtype name -> (XDMF NumberType, Precision in bytes)
_DTYPES = {"uint8": ("UChar", 1), "float32": ("Float", 4), "float64": ("Float", 8)}


def _ints(values) -> str:
    return " ".join(str(int(v)) for v in values)


def grid_xml(shape, dx_um: float) -> list[str]:
    """The Topology and Geometry elements of one snapshot's grid (see the module docstring)."""
    cells = [1] + list(shape) if len(shape) == 2 else list(shape)
    nodes = [n + 1 for n in cells]
    dx = repr(float(dx_um))
    return [
        f'<Topology TopologyType="3DCoRectMesh" Dimensions="{_ints(nodes)}"/>',
        '<Geometry GeometryType="ORIGIN_DXDYDZ">',
        '<DataItem Name="Origin" Format="XML" NumberType="Float" Precision="8" '
        'Dimensions="3">0 0 0</DataItem>',
        '<DataItem Name="Spacing" Format="XML" NumberType="Float" Precision="8" '
        f'Dimensions="3">{dx} {dx} {dx}</DataItem>',
        "</Geometry>",
    ]


def attribute_xml(name: str, h5_name: str, dpath: str, dtype: str, t: int, T: int, shape):
    """An Attribute element: row ``t`` of the ``(T, *shape)`` dataset ``dpath`` of the file
    ``h5_name``, cell-centred."""
    nt, prec = _DTYPES[dtype]
    rank = 1 + len(shape)
    start = [t] + [0] * len(shape)
    stride = [1] * rank
    count = [1] + list(shape)
    cells = [1] + list(shape) if len(shape) == 2 else list(shape)
    return [
        f'<Attribute Name={quoteattr(name)} AttributeType="Scalar" Center="Cell">',
        f'<DataItem ItemType="HyperSlab" Dimensions="{_ints(cells)}" Type="HyperSlab">',
        f'<DataItem Dimensions="3 {rank}" Format="XML" NumberType="UInt" Precision="4">'
        f"{_ints(start)} {_ints(stride)} {_ints(count)}</DataItem>",
        f'<DataItem Format="HDF" NumberType="{nt}" Precision="{prec}" '
        f'Dimensions="{_ints([T, *shape])}">{escape(h5_name)}:/{escape(dpath)}</DataItem>',
        "</DataItem>",
        "</Attribute>",
    ]


def write_xdmf(h5_path: str | os.PathLike, shape, dx_um: float, times_min, arrays) -> Path:
    """Write ``<run>.xdmf`` beside ``h5_path`` (to a temporary file, then renamed over it).

    Args:
        shape: grid shape, (y, x) or (z, y, x).
        dx_um: voxel edge in um.
        times_min: snapshot times in minutes (the sidecar gives them in hours).
        arrays: list of (attribute name, dataset path in the file, numpy dtype name).
    """
    h5_path = Path(h5_path)
    out = h5_path.with_suffix(".xdmf")
    T = len(times_min)
    geometry = grid_xml(shape, dx_um)
    lines = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<Xdmf Version="3.0">',
        "<Domain>",
        '<Grid Name="snapshots" GridType="Collection" CollectionType="Temporal">',
    ]
    for t in range(T):
        lines.append(f'<Grid Name="t{t}" GridType="Uniform">')
        lines.append(f'<Time Value="{float(times_min[t]) / 60.0!r}"/>')
        lines += geometry
        for name, dpath, dtype in arrays:
            lines += attribute_xml(name, h5_path.name, dpath, dtype, t, T, shape)
        lines.append("</Grid>")
    lines += ["</Grid>", "</Domain>", "</Xdmf>", ""]
    tmp = out.with_suffix(".xdmf.tmp")
    tmp.write_text("\n".join(lines), encoding="utf-8")
    os.replace(tmp, out)
    return out
