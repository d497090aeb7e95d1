import numpy as np
import pytest

import tmesim

SMALL_2D = """
[run]
name = "small"
seed = 11
duration_days = 1
dt_min = 6
snapshot_every_hours = 6

[grid]
shape = [48, 48]
dx_um = 20

[init.tumor]
shape = "disk"
radius_um = 150

[init.vessels]
placement = "random"
density = 0.01
"""


@pytest.fixture
def small_scenario():
    return tmesim.loads_scenario(SMALL_2D)


@pytest.fixture
def rng_np():
    return np.random.default_rng(12345)
