"""napari's settings for the viewer tests live in a folder of their own.

The plugin writes napari's reader preference (``plugins.extension2reader``, see
``tmesim_napari._reader_choice``) and napari saves its settings on every change: ``NAPARI_CONFIG``
points napari (here and in the napari processes the tests start) at a temporary settings file,
set before ``napari.settings`` is first imported, which reads it once.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

SETTINGS_DIR = Path(tempfile.mkdtemp(prefix="tmesim-napari-settings-"))
SETTINGS_FILE = SETTINGS_DIR / "settings.yaml"
os.environ["NAPARI_CONFIG"] = str(SETTINGS_FILE)
atexit.register(shutil.rmtree, SETTINGS_DIR, ignore_errors=True)


@pytest.fixture
def napari_settings():
    """napari's settings, checked to be the tests' own file; the reader preferences are empty
    before and after the test."""
    from napari.settings import get_settings

    settings = get_settings()
    if settings.config_path is None or Path(settings.config_path) != SETTINGS_FILE:
        pytest.fail(
            f"napari's settings were loaded from {settings.config_path} before "
            "tests/viewer/conftest.py could point them at a temporary file"
        )
    settings.plugins.extension2reader = {}
    yield settings
    settings.plugins.extension2reader = {}
