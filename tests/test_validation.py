"""The published behaviours of MODEL.md section 7 (scenarios/validation), in their reduced form.

Each test runs one experiment of tmesim.validation with ``quick=True`` (dishes of about 5,000
cells instead of 20,000) and asserts that its behaviour holds by the experiment's own criterion,
which compares tmesim with the literature value or with a control arm (see each judge in
tmesim/validation.py). The full-size runs are `tmesim validate-model`.
"""

import pytest

from tmesim import validation


@pytest.mark.slow
@pytest.mark.parametrize("name", [e.name for e in validation.EXPERIMENTS])
def test_experiment_holds(name):
    lines = []
    ok = validation.run([name], quick=True, echo=lines.append)
    assert ok, "\n".join(lines)


def test_unknown_experiment_is_a_clear_error():
    from tmesim.errors import UserError
    with pytest.raises(UserError, match="no validation experiment named nope"):
        validation.run(["nope"])
