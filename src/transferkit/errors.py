"""User-facing errors.

Anything a user can fix (a path, a name, a config value, a malformed file) raises a subclass of
:class:`UserError`. The CLI prints these as one line (``error: ...``) and exits with status 2 instead of
showing a traceback. Internal invariants use ``assert``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message names the problem and the fix."""


class UnknownBackboneError(UserError, KeyError):
    """A backbone name that is neither registered, a timm model, a hub id nor a local directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(UserError):
    """A dataset that cannot be used as given (layout, missing files, corrupt images...)."""
