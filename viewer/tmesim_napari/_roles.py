"""What each field of a run is (its role: ``oxygen``, ``growth_factor``, ``signal``, ``drug``),
which the viewer colours and shows it by.

A field's role is, in this order: the dataset's ``role`` attribute (what the writer stores);
else what the run's own scenario (the root ``scenario`` attribute, TOML text) makes it: a
``role`` key in its ``[fields.<name>]`` table, a drug of ``[drugs.<name>]`` (each drug has a field
of its name), or the preset of a known field name (``oxygen``, ``hgf``, ``igf1``, ``signal``,
which the simulator also adds by itself where CAFs or TAMs need them); else, for a file without a
readable scenario, the preset of its name; else ``"unknown"``. A field the scenario defines
without a role is ``"other"``, as the simulator writes it.

Only the scenario layer's preset table is used (``tmesim.scenario.FIELD_PRESETS``): the stored
scenario is parsed as TOML, not validated, so a scenario from an older tmesim still names its
fields.
"""

from __future__ import annotations

import tomllib

from tmesim.scenario import FIELD_PRESETS

UNKNOWN = "unknown"
#: the role of a field the scenario defines without one (FieldConfig's default)
OTHER = "other"


def preset_roles() -> dict[str, str]:
    """{field name: role} of the known fields (oxygen, hgf, igf1, signal)."""
    return {name: str(p.get("role", OTHER)) for name, p in FIELD_PRESETS.items()}


def scenario_roles(text: str) -> dict[str, str]:
    """{field name: role} that the scenario ``text`` gives its fields, in the simulator's order
    (the scenario's fields, then its drugs); {} for text that is not a TOML table."""
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, TypeError, ValueError, RecursionError):
        # a damaged or hostile text (nesting deeper than the parser recurses) names no roles
        return {}
    presets = preset_roles()
    out: dict[str, str] = {}
    fields = data.get("fields")
    if isinstance(fields, dict):
        for name, spec in fields.items():
            role = spec.get("role") if isinstance(spec, dict) else None
            out[name] = role if isinstance(role, str) else presets.get(name, OTHER)
    for name, role in presets.items():
        out.setdefault(name, role)  # oxygen always; hgf, igf1, signal where stroma adds them
    drugs = data.get("drugs")
    if isinstance(drugs, dict):
        for name in drugs:
            out[name] = "drug"
    return out


def field_role(name: str, attr: str | None, from_scenario: dict[str, str]) -> str:
    """The role of field ``name``: its dataset attribute ``attr`` if set, else the scenario's
    (``from_scenario``, see :func:`scenario_roles`), else its name's preset, else unknown."""
    if attr:
        return attr
    if name in from_scenario:
        return from_scenario[name]
    return preset_roles().get(name, UNKNOWN)
