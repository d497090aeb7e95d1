"""An XDMF 3 sidecar (run.xdmf) so that ParaView and VisIt open the snapshots of run.h5 directly.

The sidecar only points into the HDF5 file (hyperslabs of the (T, ...) datasets); it holds no data.
Grid origin 0, spacing dx in um, axes z, y, x (XDMF's CoRectMesh order is also slowest-first).
"""

from __future__ import annotations

import os
from pathlib import Path

_DTYPES = {"uint8": ("UChar", 1), "float32": ("Float", 4), "float64": ("Float", 8)}


def write_xdmf(h5_path: str | os.PathLike, shape, dx_um: float, times_min, arrays) -> Path:
    """Write ``<run>.xdmf`` beside ``h5_path``.

    Args:
        shape: grid shape (2 or 3 entries).
        times_min: snapshot times in minutes.
        arrays: list of (attribute name, dataset path in the file, numpy dtype name).
    """
    h5_path = Path(h5_path)
    out = h5_path.with_suffix(".xdmf")
    T = len(times_min)
    dims3 = list(shape) if len(shape) == 3 else [1] + list(shape)
    dstr = " ".join(map(str, dims3))  # cell data
    nodes = " ".join(str(d + 1) for d in dims3)  # the mesh counts nodes
    topo = "3DCoRectMesh"
    lines = [
        '<?xml version="1.0" ?>',
        '<Xdmf Version="3.0">',
        "<Domain>",
        '<Grid Name="snapshots" GridType="Collection" CollectionType="Temporal">',
    ]
    for t in range(T):
        lines.append(f'<Grid Name="t{t}" GridType="Uniform">')
        lines.append(f'<Time Value="{times_min[t] / 60.0:.6g}"/>')
        lines.append(f'<Topology TopologyType="{topo}" Dimensions="{nodes}"/>')
        lines.append('<Geometry GeometryType="ORIGIN_DXDYDZ">')
        lines.append('<DataItem Format="XML" Dimensions="3">0 0 0</DataItem>')
        lines.append(f'<DataItem Format="XML" Dimensions="3">{dx_um} {dx_um} {dx_um}</DataItem>')
        lines.append("</Geometry>")
        for name, dpath, dtype in arrays:
            nt, prec = _DTYPES[dtype]
            full = [T] + list(shape)
            lines.append(f'<Attribute Name="{name}" AttributeType="Scalar" Center="Cell">')
            lines.append(f'<DataItem ItemType="HyperSlab" Dimensions="{dstr}">')
            start = " ".join([str(t)] + ["0"] * len(shape))
            stride = " ".join(["1"] * (len(shape) + 1))
            count = " ".join(["1"] + [str(s) for s in shape])
            lines.append(
                f'<DataItem Dimensions="3 {len(shape) + 1}" Format="XML">'
                f"{start} {stride} {count}</DataItem>"
            )
            lines.append(
                f'<DataItem Format="HDF" NumberType="{nt}" Precision="{prec}" '
                f'Dimensions="{" ".join(map(str, full))}">'
                f"{h5_path.name}:/{dpath}</DataItem>"
            )
            lines.append("</DataItem>")
            lines.append("</Attribute>")
        lines.append("</Grid>")
    lines += ["</Grid>", "</Domain>", "</Xdmf>", ""]
    tmp = out.with_suffix(".xdmf.tmp")
    tmp.write_text("\n".join(lines))
    os.replace(tmp, out)
    return out
