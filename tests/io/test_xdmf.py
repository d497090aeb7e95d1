"""The ParaView sidecar read by VTK's own XDMF reader: every array of a snapshot, at two times,
is the run file's data bit for bit, on the grid where tmesim puts its voxels.

VTK reads the run file through the HDF5 it ships (1.14 in the vtk 9.7 wheel), so this is also
the check that run files are written in a format older HDF5 libraries read
(tmesim.io.hdf5.LIBVER): written in HDF5 2.0's "latest" format, VTK reads their datasets as
garbage or not at all.

Needs the ``vtk`` wheel (a test extra); skipped, saying so, without it.
"""

import os
import signal

import h5py
import numpy as np
import pytest

import tmesim
from tmesim.io.xdmf import write_xdmf

from ..helpers import At, model_scenario

try:  # the legacy XDMF 2 reader ships in the wheel; ParaView's XDMF 3 reader where built
    from vtkmodules.vtkIOXdmf2 import vtkXdmfReader as _Reader
except ImportError:  # pragma: no cover - depends on the VTK build
    try:
        from vtkmodules.vtkIOXdmf3 import vtkXdmf3Reader as _Reader
    except ImportError:
        _Reader = None

pytestmark = pytest.mark.skipif(
    _Reader is None,
    reason="VTK's XDMF reader is not installed (pip install vtk: vtkIOXdmf2 or vtkIOXdmf3)",
)

#: a non-square grid (an axis swapped or a transposed array shows) with every field role:
#: oxygen, HGF and IGF-1 (growth factors), the persister signal and a drug
SETS_2D = ("grid.shape=[20,28]", "run.duration_days=0.25", "run.snapshot_every_hours=2")
SETS_3D = (
    "grid.shape=[6,8,10]",
    "init.tumor.radius_um=60",
    "run.duration_days=0.25",
    "run.snapshot_every_hours=2",
)


class VtkRun:
    """A run's sidecar opened with VTK's XDMF reader."""

    def __init__(self, xdmf):
        from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline as sdd

        self.reader = r = _Reader()
        r.SetFileName(os.fspath(xdmf))
        r.UpdateInformation()
        info = r.GetOutputInformation(0)
        self.times = tuple(info.Get(sdd.TIME_STEPS())) if info.Has(sdd.TIME_STEPS()) else ()

    def at(self, t_h: float):
        """The image at time ``t_h`` (hours), and its cell arrays as {name: numpy array}."""
        from vtkmodules.util.numpy_support import vtk_to_numpy

        self.reader.UpdateTimeStep(t_h)
        img = self.reader.GetOutputDataObject(0)
        assert img.IsA("vtkImageData"), img.GetClassName()
        cd = img.GetCellData()
        arrays = {
            cd.GetArrayName(i): vtk_to_numpy(cd.GetArray(i)).copy()
            for i in range(cd.GetNumberOfArrays())
        }
        return img, arrays


def cell_centres(img) -> np.ndarray:
    """(N, 3) x, y, z of VTK's cells, in VTK's cell order."""
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkFiltersCore import vtkCellCenters

    cc = vtkCellCenters()
    cc.SetInputData(img)
    cc.Update()
    return vtk_to_numpy(cc.GetOutput().GetPoints().GetData()).astype(float)


def check_against_file(h5_path, rows) -> int:
    """Compare the sidecar of ``h5_path``, as VTK reads it, with the file at snapshot ``rows``:
    times, grid and every array. Returns the number of arrays compared per row."""
    with h5py.File(h5_path, "r") as f:
        shape = tuple(int(n) for n in f.attrs["grid_shape"])
        dx = float(f.attrs["dx_um"])
        times = f["snapshots/time"][:]
        datasets = {k: f[f"snapshots/{k}"] for k in ("kind", "tumor_state", "memory")}
        datasets.update({k: d for k, d in f["snapshots/fields"].items()})
        assert len(datasets) >= 4
        run = VtkRun(h5_path.with_suffix(".xdmf"))
        np.testing.assert_array_equal(run.times, times / 60.0)  # hours
        zyx = shape if len(shape) == 3 else (1, *shape)  # a 2D run: one layer of cells
        for t in rows:
            img, arrays = run.at(times[t] / 60.0)
            # VTK's axes are x, y, z: the file's last axis first
            assert img.GetDimensions() == tuple(n + 1 for n in zyx[::-1])
            assert img.GetNumberOfCells() == int(np.prod(shape))
            np.testing.assert_allclose(img.GetSpacing(), (dx, dx, dx), rtol=0, atol=0)
            np.testing.assert_allclose(img.GetOrigin(), (0.0, 0.0, 0.0), rtol=0, atol=0)
            # cell k of VTK is the voxel (z, y, x) at k in C order, centred where tmesim puts it
            z, y, x = np.unravel_index(np.arange(img.GetNumberOfCells()), zyx)
            np.testing.assert_allclose(
                cell_centres(img), (np.stack([x, y, z], axis=1) + 0.5) * dx, rtol=0, atol=1e-9
            )
            assert sorted(arrays) == sorted(datasets)
            for name, ds in datasets.items():
                want = ds[t]
                got = arrays[name]
                assert got.dtype == want.dtype, name
                np.testing.assert_array_equal(got.reshape(shape), want, err_msg=f"{name} t={t}")
        return len(datasets)


def _run(tmp_path, name, case, sets):
    sc = model_scenario(case, *sets)
    return sc, tmesim.Simulation(sc, backend="cpu").run(tmp_path / name)


@pytest.mark.parametrize(
    "case, sets",
    [("2d-adi", SETS_2D), ("3d-lod", SETS_3D)],
    ids=["2d", "3d"],
)
def test_vtk_reads_the_run_files_values_and_grid(tmp_path, case, sets):
    sc, path = _run(tmp_path, "run.h5", case, sets)
    with h5py.File(path, "r") as f:
        T = f["snapshots/time"].shape[0]
        # the rows compared hold what a wrong read would miss: drug, growth factors, memory
        assert T == 4 and f["snapshots/fields/erlotinib"][1].max() > 0
        assert f["snapshots/memory"][T - 1].max() > 0 and f["snapshots/fields/hgf"][1].max() > 0
    n = check_against_file(path, [1, T - 1])
    assert n == 3 + len(sc.fields)


def test_vtk_reads_a_resumed_run(tmp_path):
    """Snapshots written before an interruption and after the resume (the file reopened for
    appending) read alike."""
    sc = model_scenario("2d-adi", *SETS_2D)
    out = tmp_path / "r.h5"
    sim = tmesim.Simulation(sc, "cpu")
    sim.callbacks.append(At(33, lambda s: os.kill(os.getpid(), signal.SIGUSR1)))
    sim.run(out)
    assert sim.status == "interrupted"
    sim = tmesim.Simulation.resume(out, backend="cpu")
    assert sim.resumed_from == 33 and sim.status == "finished"
    # rows 2 and 3 (steps 40 and 60) were written after the resume
    check_against_file(out, [1, 2, 3])


def test_names_are_escaped_and_the_run_file_is_named_relative_to_the_sidecar(tmp_path):
    """A run file whose name holds XML's special characters, and a field name that does: the
    sidecar stays well-formed and VTK reads them."""
    d = tmp_path / "a & <b>"
    d.mkdir()
    path = d / "R&D 'x'.h5"
    shape = (3, 4)
    with h5py.File(path, "w") as f:
        f.attrs["grid_shape"] = np.asarray(shape)
        f.attrs["dx_um"] = 5.0
        f["snapshots/time"] = [0.0, 7.0]
        for k in ("kind", "tumor_state"):
            f[f"snapshots/{k}"] = np.arange(24, dtype=np.uint8).reshape(2, *shape)
        f["snapshots/memory"] = np.linspace(0, 1, 24, dtype=np.float32).reshape(2, *shape)
        f['snapshots/fields/a<&>"b'] = -np.arange(24, dtype=np.float32).reshape(2, *shape)
    arrays = [
        ("kind", "snapshots/kind", "uint8"),
        ("tumor_state", "snapshots/tumor_state", "uint8"),
        ("memory", "snapshots/memory", "float32"),
        ('a<&>"b', 'snapshots/fields/a<&>"b', "float32"),
    ]
    write_xdmf(path, shape, 5.0, [0.0, 7.0], arrays)  # 7 min: 0.11666... h, not rounded
    check_against_file(path, [0, 1])
