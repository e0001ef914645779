"""Errors a user can cause (bad flags, missing files, shapes that don't match).

Every command catches `UserError` at its entry point (runtime/command.py), prints its one-line
message and exits with code 2; anything else is a bug and keeps its traceback.
"""

import logging
import os
import sys
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input, stated in one sentence that says what to do."""


def exit_with(error: UserError) -> NoReturn:
    print(f"error: {error}", file=sys.stderr, flush=True)
    # The refusal is the last word: background work still failing while the interpreter exits
    # (orbax's pending reads of a checkpoint that could not be restored report "Exception
    # ignored in ..." at shutdown) must not bury it under tracebacks. Only entry points call this.
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 (open until the process ends)
    logging.disable(logging.CRITICAL)  # asyncio's "Future exception was never retrieved" too
    sys.exit(2)
