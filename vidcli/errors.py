"""The one exception type for problems a user can cause or fix.

The CLI turns a `VidcliError` into one red line on stderr and its `exit_code`; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

FAILURE = 1  # the job failed although its input was valid
BAD_INPUT = 2  # bad input or usage: nothing was done
PARTIAL = 3  # some inputs failed, the others were processed and reported (predict, kinetics-frames)
INTERRUPTED = 130  # Ctrl-C: what was finished is kept (an interrupted run can be resumed)


class VidcliError(Exception):
    """A problem the user can act on. `exit_code` 2: bad input or usage; 1: the job failed."""

    def __init__(self, message: str, exit_code: int = BAD_INPUT):
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str) -> VidcliError:
    """An error for a job that failed although its input was valid (exit code 1)."""
    return VidcliError(message, exit_code=FAILURE)
