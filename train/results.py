"""`python -m train.results DIR`: every run under DIR (a `python -m train.sweep` directory, any
directory of workdirs, or one workdir) collected into `results.csv` and `results.md` (best first)
with `loss_curves.png` (one curve per run) and, for a sweep, `sweep.png` (final held-out loss against the
first swept flag, one line per value of the others); train/run_summary.py makes them.
"""

import os

from runtime.command import run_command
from runtime.errors import UserError
from train.run_summary import collect


def define_flags() -> None:
    """No flags beyond absl's own: the one argument is the directory."""


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        raise UserError("give one directory: python -m train.results DIR (a sweep's --out, a "
                        "directory of workdirs, or one workdir)")
    rows, files = collect(argv[1])
    with open(os.path.join(argv[1], "results.md"), encoding="utf-8") as f:
        print(f.read(), end="")
    print(f"{len(rows)} run(s); wrote {', '.join(files)} in {argv[1]}")


if __name__ == "__main__":
    run_command(main, define_flags, "train.results", positional=1)
