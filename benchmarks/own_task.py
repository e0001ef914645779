"""A user's own seq2seq task, made offline: writes a .jsonl of {"source", "target"} lines for a
deterministic, source-dependent mapping, the kind of file a user brings to
`python -m train --flagfile=experiments/quickstart_seq2seq.flags --data=their.jsonl`.

Tasks (`--task`):
  dates    an ISO date to its long English form: "1987-03-09" -> "9 March 1987" (the month
           number becomes a name, the day loses its leading zero, the fields are reordered);
  reorder  a "Surname, Given Initial." name to "Given Initial. Surname" and upper-cased surname:
           "Okafor, Ada K." -> "Ada K. OKAFOR" (a reordering plus a transliteration of case).
Both are functions of the source, so a model that reads its encoder can be exact and one that
does not can only guess; sources are distinct, so the held-out split (by source hash) is unseen.

Example (the README's record):
  python -m benchmarks.own_task --task=dates --out=runs/dates.jsonl
  python -m benchmarks.training_run --name=own_task_dates -- \\
      --flagfile=experiments/quickstart_seq2seq.flags --data=runs/dates.jsonl --seq_len=16 \\
      --target_len=12
"""

import calendar
import datetime
import json
import os

import numpy as np
from absl import flags

from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS
TASKS = ("dates", "reorder")
# Syllables for made-up names: no real-name list is needed offline, and the model cannot have
# memorised pairs it never saw because each name is new.
_SYLLABLES = ("ka", "lo", "mi", "ra", "to", "se", "vin", "dor", "an", "el", "fa", "gu", "hi",
              "jo", "ku", "ne", "os", "pa", "qui", "ru", "sa", "te", "u", "wa", "ye", "zo")


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    flags.DEFINE_enum("task", "dates", TASKS, "Which mapping to write (see the module doc).")
    flags.DEFINE_string("out", "", "The .jsonl file to write (required; never overwritten "
                        "unless --overwrite).")
    flags.DEFINE_integer("pairs", 8000, "Number of distinct source/target pairs.")
    flags.DEFINE_integer("seed", 0, "Seed of the random sources.")
    flags.DEFINE_bool("overwrite", False, "Replace --out if it exists.")


def long_date(iso: str) -> str:
    """'1987-03-09' -> '9 March 1987'."""
    day = datetime.date.fromisoformat(iso)
    return f"{day.day} {calendar.month_name[day.month]} {day.year}"


def reordered_name(name: str) -> str:
    """'Okafor, Ada K.' -> 'Ada K. OKAFOR'."""
    surname, given = name.split(", ", 1)
    return f"{given} {surname.upper()}"


def _name(rng: np.random.Generator) -> str:
    return "".join(rng.choice(_SYLLABLES, int(rng.integers(2, 4)))).capitalize()


def pairs(task: str, count: int, seed: int) -> list[dict]:
    """`count` distinct {"source", "target"} pairs of `task`, in a seeded random order."""
    rng = np.random.default_rng(seed)
    if task == "dates":
        first, last = datetime.date(1900, 1, 1).toordinal(), datetime.date(2099, 12, 31).toordinal()
        if count > last - first + 1:
            raise UserError(f"--pairs={count} exceeds the {last - first + 1} dates of 1900-2099")
        days = rng.choice(np.arange(first, last + 1), count, replace=False)
        sources = [datetime.date.fromordinal(int(d)).isoformat() for d in days]
        return [{"source": s, "target": long_date(s)} for s in sources]
    seen, out = set(), []
    attempts = 0
    while len(out) < count:
        attempts += 1
        if attempts > 50 * count:
            raise UserError(f"could not draw {count} distinct names; lower --pairs")
        source = f"{_name(rng)}, {_name(rng)} {chr(ord('A') + int(rng.integers(26)))}."
        if source not in seen:
            seen.add(source)
            out.append({"source": source, "target": reordered_name(source)})
    return out


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    if not FLAGS.out:
        raise UserError("give --out=FILE.jsonl, the file to write")
    if FLAGS.pairs < 10:
        raise UserError(f"--pairs must be at least 10 (some are held out), got {FLAGS.pairs}")
    if os.path.exists(FLAGS.out) and not FLAGS.overwrite:
        raise UserError(f"{FLAGS.out} exists; pass --overwrite to replace it")
    rows = pairs(FLAGS.task, FLAGS.pairs, FLAGS.seed)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    partial = FLAGS.out + ".partial"
    with open(partial, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    os.replace(partial, FLAGS.out)  # a crash never leaves a half-written task behind
    print(f"wrote {len(rows)} {FLAGS.task} pairs to {FLAGS.out}, e.g. "
          f"{rows[0]['source']!r} -> {rows[0]['target']!r}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.own_task")
