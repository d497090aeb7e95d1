"""napari startup script for tests/viewer/test_routes.py: what `napari run.h5` showed.

napari runs its configured startup script (settings ``application.startup_script``) before it
opens the files of its command line. This one answers napari's "Choose reader" dialog, if one
comes up, as a user would (the reader named by ``TMESIM_PROBE_CHOOSE``, "Remember" unticked, or
Cancel), then writes what the viewer holds to the JSON file ``TMESIM_PROBE_OUT`` and quits.
"""

import json
import os
import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QRadioButton

OUT = os.environ["TMESIM_PROBE_OUT"]
CHOOSE = os.environ.get("TMESIM_PROBE_CHOOSE", "")
T0 = time.monotonic()
report: dict = {"dialogs": [], "layers": None}


def answer(dialog) -> None:
    buttons = dialog.findChildren(QRadioButton)
    report["dialogs"].append(
        {"class": type(dialog).__name__, "choices": [b.text() for b in buttons]}
    )
    for b in buttons:
        if b.text() == CHOOSE:
            b.setChecked(True)
            dialog.accept()
            return
    dialog.reject()


def poll() -> None:
    app = QApplication.instance()
    modal = app.activeModalWidget()
    if modal is not None:
        answer(modal)
        QTimer.singleShot(100, poll)
        return
    import napari
    from napari.settings import get_settings

    viewer = napari.current_viewer()
    # napari shows its window once it has opened the command line's files
    shown = viewer is not None and viewer.window._qt_window.isVisible()
    if not (shown and len(viewer.layers)) and time.monotonic() - T0 < 30:
        QTimer.singleShot(100, poll)
        return
    layers = []
    for layer in viewer.layers if viewer is not None else []:
        meta = layer.metadata.get("tmesim", {})
        layers.append(
            {
                "name": layer.name,
                "type": type(layer).__name__,
                "path": meta.get("path"),
                "shape": list(layer.data.shape),
                "last": np.asarray(layer.data[-1]).tolist() if layer.name == "kind" else None,
            }
        )
    report["layers"] = layers
    report["extension2reader"] = dict(get_settings().plugins.extension2reader)
    with open(OUT, "w") as fh:
        json.dump(report, fh)
    # quit() ends a running event loop only: repeat it until napari's main loop has started
    quitter = QTimer(app)
    quitter.timeout.connect(app.quit)
    quitter.start(100)


QTimer.singleShot(0, poll)
