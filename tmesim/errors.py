"""Errors a user can cause and fix: each names what was wrong, where, and what was expected.

The CLI prints these as one line and exits with code 2, without a traceback. Anything else that
escapes is a bug in tmesim and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in the user's input (scenario, command line, file); printed without a traceback."""


class ScenarioError(UserError):
    """A scenario value that is missing, unknown, of the wrong type or out of range.

    Args:
        path: dotted key path in the scenario, e.g. ``fields.oxygen.diffusion_um2_per_min``.
        value: the offending value as given (``None`` when a key is missing).
        expected: what would have been accepted, in words.
    """

    def __init__(self, path: str, value, expected: str):
        self.path = path
        self.value = value
        self.expected = expected
        shown = "(missing)" if value is _MISSING else repr(value)
        super().__init__(f"scenario key '{path}': got {shown}, expected {expected}")


class RunFileError(UserError):
    """A run file that cannot be read: not a tmesim file, from a future format, or damaged."""


_MISSING = object()
