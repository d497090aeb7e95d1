"""Making tmesim napari's reader for HDF5 files, so that ``napari run.h5`` opens a run directly.

napari's builtin reader also claims ``*.h5``, ``*.hdf5`` and ``*.hdf`` (it cannot read any HDF5
file: imageio has no loader for it). With two readers for a file and no preference, napari asks
(the "Choose reader" dialog of ``napari run.h5``, File > Open, drag and drop), and
``viewer.open(path, plugin=None)`` raises ``MultipleReaderError``. A plugin cannot declare itself
the default; napari keeps the choice in its settings (``plugins.extension2reader``, the
Preferences > Plugins table, or the dialog's "Remember this choice").

:func:`claim_hdf5` sets tmesim there for each pattern the user has not chosen a reader for and no
other installed plugin (besides napari's builtins) reads. It runs when napari first uses the
plugin (npe2's ``on_activate``: a tmesim widget opened, or the reader chosen in the dialog) and
in ``tmesim view``; from then on ``napari run.h5`` opens a run without asking. A foreign HDF5 file
is then offered to tmesim first, which refuses it, and napari shows its dialog with the other
readers as before.
"""

from __future__ import annotations

import logging

PLUGIN = "tmesim"
#: the HDF5 patterns of the manifest's reader (napari.yaml)
HDF5_PATTERNS = ("*.h5", "*.hdf5", "*.hdf")
#: napari's builtin plugin, which claims these patterns but reads no HDF5 file
BUILTINS = "napari"

log = logging.getLogger(__name__)


def other_readers(pattern: str) -> set[str]:
    """Installed plugins other than tmesim and napari's builtins that read files of
    ``pattern`` (e.g. ``"*.h5"``)."""
    from npe2 import PluginManager

    probe = "probe" + pattern.lstrip("*")
    readers = PluginManager.instance().iter_compatible_readers([probe])
    return {r.plugin_name for r in readers} - {PLUGIN, BUILTINS}


def claim_hdf5(settings=None) -> list[str]:
    """Make tmesim napari's reader for the HDF5 patterns nobody else has a claim on; returns the
    patterns it set. ``settings``: napari's settings (default: ``napari.settings.get_settings()``,
    which napari saves to its settings file on change)."""
    if settings is None:
        from napari.settings import get_settings

        settings = get_settings()
    prefs = dict(settings.plugins.extension2reader)
    claimed = [p for p in HDF5_PATTERNS if p not in prefs and not other_readers(p)]
    if claimed:
        settings.plugins.extension2reader = {**prefs, **dict.fromkeys(claimed, PLUGIN)}
        log.info(
            "tmesim now opens %s files in napari (Preferences > Plugins to change)",
            ", ".join(claimed),
        )
    return claimed


def activate(ctx=None) -> None:
    """npe2 ``on_activate`` hook: :func:`claim_hdf5`, never failing the plugin's activation (a
    settings file napari cannot write leaves the choice to napari's dialog)."""
    try:
        claim_hdf5()
    except Exception as exc:  # the plugin must load whatever the settings do
        log.warning("tmesim could not become napari's HDF5 reader: %s", exc)
