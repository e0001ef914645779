"""Errors a user can cause (bad flags, missing files, shapes that don't match).

Every command catches `UserError` at its entry point, prints its one-line message and exits with
code 2; anything else is a bug and keeps its traceback. `model` is the root of the import graph, so
the class lives here where data/, train/ and infer/ can all reach it.
"""

import sys
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input, stated in one sentence that says what to do."""


def exit_with(error: UserError) -> NoReturn:
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
