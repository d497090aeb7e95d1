"""Errors a user can cause and fix: each names what was wrong, where, and what was expected.

The CLI prints these as one line and exits with code 2, without a traceback. Anything else that
escapes is a bug in tmesim and keeps its traceback.

A message shows a user's value shortened (:func:`shown`): a scenario can hold a string of 50 MB,
a list nested a thousand deep or an integer of thousands of digits, and the one line must stay
one short line.
"""

from __future__ import annotations

import reprlib

#: characters of a user's value (or key path) a message shows at most
SHOWN_CHARS = 80


class _BoundedRepr(reprlib.Repr):
    """repr that stops at a few levels, items and characters, and never fails: an integer too
    long to write out in full (Python refuses over 4300 digits) is described by its size."""

    def __init__(self):
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6
        self.maxstring = self.maxother = self.maxlong = SHOWN_CHARS

    def repr_int(self, x, level):
        if x.bit_length() > 256:  # about 77 digits; the exact count needs the full conversion
            return f"<an integer of about {int(x.bit_length() * 0.30103) + 1} digits>"
        return super().repr_int(x, level)

    def repr_str(self, x, level):
        text = repr(x[: SHOWN_CHARS + 1])
        if len(x) <= SHOWN_CHARS and len(text) <= SHOWN_CHARS + 2:
            return text
        return text[: SHOWN_CHARS - 3] + f"...' ({len(x)} characters)"


_REPR = _BoundedRepr()


def shown(value, limit: int = SHOWN_CHARS) -> str:
    """A user's value as a message shows it: its repr, cut to about ``limit`` characters (a cut
    string says its length), one line."""
    if value is _MISSING:
        return "(missing)"
    try:
        text = _REPR.repr(value)
    except Exception:  # a value's own __repr__ may fail; the message must not
        text = f"<a {type(value).__name__}>"
    if isinstance(value, str):
        return text  # already cut, with its length
    if len(text) > limit:  # a table or list of a few cut items is still long
        text = text[:limit] + "..."
    return text


def shown_path(path: str, limit: int = 100) -> str:
    """A key path as a message shows it: control characters escaped, cut after ``limit``
    characters with its length (keys come from the user too)."""
    text = str(path)
    if not text.isprintable():
        text = repr(text)[1:-1]
    if len(text) > limit:
        text = text[:limit] + f"...({len(path)} characters)"
    return text


class UserError(Exception):
    """A mistake in the user's input (scenario, command line, file); printed without a traceback."""


class ScenarioError(UserError):
    """A scenario value that is missing, unknown, of the wrong type or out of range.

    Args:
        path: dotted key path in the scenario, e.g. ``fields.oxygen.diffusion_um2_per_min``.
        value: the offending value as given (``_MISSING`` when a key is missing); the message
            shows it shortened (:func:`shown`), the attribute keeps it whole.
        expected: what would have been accepted, in words.
    """

    def __init__(self, path: str, value, expected: str):
        self.path = path
        self.value = value
        self.expected = expected
        super().__init__(
            f"scenario key '{shown_path(path)}': got {shown(value)}, expected {expected}"
        )


class RunFileError(UserError):
    """A run file that cannot be read: not a tmesim file, from a future format, or damaged."""


_MISSING = object()
