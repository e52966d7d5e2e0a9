"""The errors a stage raises: small, so that declaring stages imports nothing else."""

from __future__ import annotations


class StageError(Exception):
    """A stage cannot run, for a reason the user can fix (a missing file, a
    corrupt checkpoint).  Shown at the stage's line as a diagnostic, with
    ``help`` under it."""

    def __init__(self, message: str, help: str | None = None, code: str = "E601"):
        super().__init__(message)
        self.message, self.help, self.code = message, help, code


class Interrupted(Exception):
    """The user asked to stop (Ctrl-C); raised between steps."""
