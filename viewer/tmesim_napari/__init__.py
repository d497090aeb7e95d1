"""tmesim_napari: the napari plugin of tmesim (npe2 manifest ``napari.yaml``).

- a reader: ``napari run.h5`` (or File > Open) shows a tmesim run as lazily loaded layers; once
  napari has used the plugin, tmesim is napari's reader for ``*.h5`` where nothing else claims it
  (``_reader_choice``), so napari stops asking which reader to use;
- ``RunExplorer``: a dock widget with the legend, the time series, a time marker, the run's
  events, and refresh/follow for a run still being written;
- ``ScenarioRunner``: loads a scenario, takes ``key.path=value`` overrides, runs it in a background
  thread with the layers updating live, can pause and stop;
- ``view_run``: what ``tmesim view run.h5`` calls.

Importing this package does not import napari or Qt (the reader's ``get_reader`` stays cheap).
"""

from ._reader import get_reader, read_events, read_info, read_run, read_timeseries, sniff

__all__ = [
    "get_reader",
    "read_events",
    "read_info",
    "read_run",
    "read_timeseries",
    "sniff",
    "view_run",
]


def view_run(*args, **kwargs):
    """Open napari with a run (see :func:`tmesim_napari.view.view_run`)."""
    from .view import view_run as _view_run

    return _view_run(*args, **kwargs)
