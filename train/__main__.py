"""`python -m train --flagfile=experiments/X.flags [--flag=value ...]` (console: meshlm-train)."""

import sys

from absl import app, flags, logging

from model.errors import UserError, exit_with
from train.flags import config_from_flags, define_flags


def _parse(argv: list[str]) -> list[str]:
    """absl parsing with bad flags reported as one line and exit code 2."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        exit_with(UserError(f"{e}; see python -m train --helpfull"))


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        exit_with(UserError(f"unexpected arguments {argv[1:]}; flags are written --name=value"))
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax and grain log every file at INFO
    from train import distributed
    from train.loop import NonFiniteLoss, train  # after flag parsing: keeps --help fast

    try:
        cfg = config_from_flags()
        # Before anything touches a device: jax.distributed must set up the backend itself.
        distributed.start(cfg.distributed, cfg.coordinator_address, cfg.num_processes,
                          cfg.process_id)
        train(cfg)
    except UserError as e:
        exit_with(e)
    except NonFiniteLoss as e:
        # The run diverged rather than being misconfigured: exit code 1, but still one line.
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def run() -> None:
    define_flags()
    app.run(main, argv=sys.argv, flags_parser=_parse)


if __name__ == "__main__":
    run()
