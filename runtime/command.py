"""The entry point every `python -m X` command goes through: flags defined and parsed by absl,
jax's INFO logging quieted, and a bad flag, a stray argument or a UserError turned into one
`error:` line and exit code 2."""

import sys
from collections.abc import Callable

from absl import app, flags, logging

from runtime.errors import UserError, exit_with


def parse_flags(argv: list[str], command: str, help_flag: str = "--help",
                positional: int | None = 0) -> list[str]:
    """absl parsing with a bad flag, or more than `positional` positional arguments (None: any
    number), reported as one line, exit 2."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        exit_with(UserError(f"{e}; see python -m {command} {help_flag}"))
    if positional is not None and len(rest) > 1 + positional:
        exit_with(UserError(f"unexpected arguments {rest[1:]}; flags are written --name=value "
                            f"(see python -m {command} {help_flag})"))
    return rest


def run_command(main: Callable[[list[str]], None], define_flags: Callable[[], None],
                command: str, help_flag: str = "--help", positional: int | None = 0) -> None:
    """Runs `main` as the absl command `python -m {command}` after `define_flags()`; `positional`:
    how many positional arguments it takes at most (train.results: its directory; None for
    train.launch_local, which passes everything after `--` to each process)."""

    def guarded(argv: list[str]) -> None:
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)  # orbax and grain log every file at INFO
        try:
            main(argv)
        except UserError as e:
            exit_with(e)

    define_flags()
    app.run(guarded, argv=sys.argv, flags_parser=lambda argv: parse_flags(argv, command, help_flag,
                                                                   positional))
