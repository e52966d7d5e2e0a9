"""The errors a stage raises: small, so that declaring stages imports nothing else."""

from __future__ import annotations


class StageError(Exception):
    """A stage cannot run, for a reason the user can fix (a missing file, a
    corrupt checkpoint).  Shown at the stage's line as a diagnostic, with
    ``help`` under it.  An exporter that cannot write some stages names
    each in ``stages`` (stage key -> why), shown at each one's line."""

    def __init__(self, message: str, help: str | None = None, code: str = "E601",
                 stages: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.help, self.code = message, help, code
        self.stages = dict(stages or {})


class Interrupted(Exception):
    """The user asked to stop (Ctrl-C); raised between steps."""
