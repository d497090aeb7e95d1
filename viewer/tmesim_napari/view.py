"""``tmesim view``: napari with a run (and the run explorer), or the interactive runner."""

from __future__ import annotations

from pathlib import Path


def view_run(
    path=None,
    *,
    scenario=None,
    follow: bool | None = None,
    refresh_s: float = 2.0,
    show: bool = True,
    block: bool = True,
):
    """Open napari with the run at ``path`` and its explorer dock; returns the viewer.

    Args:
        path: a run file (optional when ``scenario`` is given).
        scenario: a scenario file to load into the interactive runner dock.
        follow: re-read the file every ``refresh_s`` seconds while its status is "running";
            default: follow when the run is still running.
        refresh_s: seconds between re-reads when following.
        show: show the window (False for tests and scripts).
        block: run the Qt event loop until the window closes (False returns at once).

    A file that cannot be opened raises ``tmesim.RunFileError`` before any window opens. Makes
    tmesim napari's reader for ``*.h5`` where nothing else claims it
    (:func:`tmesim_napari._reader_choice.claim_hdf5`).
    """
    from ._reader import read_info

    info = read_info(path) if path is not None else None
    import napari

    from ._qt.explorer import RunExplorer
    from ._qt.runner import ScenarioRunner
    from ._reader_choice import activate

    title = f"tmesim: {info.name or Path(path).stem}" if info else "tmesim"
    viewer = napari.Viewer(title=title, show=show)
    # from now on `napari run.h5` opens runs with tmesim too (unless the user chose otherwise)
    activate()
    if info is not None:
        explorer = RunExplorer(viewer, info.path, refresh_s=refresh_s)
        viewer.window.add_dock_widget(explorer, name="tmesim run", area="right")
        # start on the last snapshot (the state the run reached), 3D runs as volumes
        viewer.dims.set_current_step(0, info.n_snapshots - 1)
        if info.ndim == 3:
            viewer.dims.ndisplay = 3
        explorer.set_follow(info.status == "running" if follow is None else follow)
    if scenario is not None:
        runner = ScenarioRunner(viewer, scenario=scenario)
        viewer.window.add_dock_widget(runner, name="tmesim interactive run", area="right")
    if block:
        napari.run()
    return viewer
