"""tmesim: spatial simulation of drug-tolerant persister cells in the tumor microenvironment.

import tmesim
sc = tmesim.load_scenario("scenarios/quickstart_2d.toml", overrides={"run.seed": 7})
sim = tmesim.Simulation(sc, backend="auto")
sim.run("run.h5", progress=True)
ds = tmesim.open_run("run.h5")
"""

__version__ = "0.1.0"

from .errors import RunFileError, ScenarioError, UserError
from .io.reader import open_run
from .scenario import Scenario, load_scenario, loads_scenario
from .simulation import Model, Simulation

__all__ = [
    "Model",
    "RunFileError",
    "Scenario",
    "ScenarioError",
    "Simulation",
    "UserError",
    "__version__",
    "load_scenario",
    "loads_scenario",
    "open_run",
]
