"""Errors a user can cause (bad flags, missing files, shapes that don't match).

Every command catches `UserError` at its entry point, prints its one-line message and exits with
code 2; anything else is a bug and keeps its traceback. `model` is the root of the import graph, so
the class lives here where data/, train/ and infer/ can all reach it.
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


def run_command(main, define_flags, command: str) -> None:
    """The entry point of an absl command (`python -m {command}`): defines its flags, quiets
    jax's INFO logging, and turns a flag-parsing error or a UserError into one line, exit 2."""
    from absl import app, flags, logging

    def parse(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            exit_with(UserError(f"{e}; see python -m {command} --help"))

    def guarded(argv: list[str]) -> None:
        try:
            main(argv)
        except UserError as e:
            exit_with(e)

    define_flags()
    logging.set_verbosity(logging.WARNING)
    app.run(guarded, argv=sys.argv, flags_parser=parse)
