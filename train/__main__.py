"""`python -m train --flagfile=experiments/X.flags [--flag=value ...]` (console: meshlm-train)."""

import sys

from absl import app, flags, logging

from runtime.command import parse_flags
from runtime.errors import UserError, exit_with
from train.flags import config_from_flags, define_flags


def main(argv: list[str]) -> None:
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
    app.run(main, argv=sys.argv, flags_parser=lambda argv: parse_flags(argv, "train", "--helpfull"))


if __name__ == "__main__":
    run()
