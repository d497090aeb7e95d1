"""A run written by another process that holds until the test lets it go on (viewer tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tmesim.errors import RunFileError

#: the writer holds from this agent step until the gate file exists
HOLD_AT_STEP = 25


def start_gated_run(scen: Path, out: Path, gate: Path) -> subprocess.Popen:
    """Start ``tmesim`` running ``scen`` into ``out`` in its own process; it holds at step
    :data:`HOLD_AT_STEP` until ``gate`` exists. Returns once the file holds two snapshots."""
    from tmesim_napari import read_info

    code = textwrap.dedent(f"""
        import time, pathlib, tmesim
        class Gate:
            from tmesim.schedules import IterationInterval
            schedule = IterationInterval(1)
            def __call__(self, sim):
                while sim.state.step >= {HOLD_AT_STEP} and not pathlib.Path({str(gate)!r}).exists():
                    time.sleep(0.02)
        sim = tmesim.Simulation(tmesim.load_scenario({str(scen)!r}))
        sim.callbacks.append(Gate())
        sim.run({str(out)!r})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if read_info(out).n_snapshots >= 2:
                    return proc
            except RunFileError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.1)
    except BaseException:
        gate.touch()
        proc.wait(timeout=60)
        raise
