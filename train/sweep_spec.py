"""Sweep specifications: `name=v1,v2;name2=v3,v4` (a grid) and, for `--random=N`, ranges such as
`learning_rate=log(1e-4,1e-2)`, `warmup_steps=int(10,100)`, `weight_decay=uniform(0,0.1)` next to
plain lists (sampled uniformly). Values are checked against the type of the `TrainConfig` field
they set, so a typo fails here, in one line, before any trial starts."""

import dataclasses
import itertools
import math
import re
from typing import Any

import numpy as np

from runtime.errors import UserError
from train.flags import TrainConfig

# Flags a sweep may not set: every trial's workdir is the sweep's own choice.
RESERVED = ("workdir", "overwrite")
_RANGE = re.compile(r"^(log|uniform|int)\((.*)\)$")


@dataclasses.dataclass(frozen=True)
class Axis:
    """One swept flag: a list of values, or a range `kind` in [low, high] (random search only)."""

    name: str
    values: tuple = ()
    kind: str = ""  # "log" | "uniform" | "int" for a range
    low: float = 0.0
    high: float = 0.0

    def sample(self, rng: np.random.Generator) -> Any:
        if not self.kind:
            return self.values[rng.integers(len(self.values))]
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high) + 1))
        if self.kind == "log":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))


def field_types() -> dict[str, type]:
    """TrainConfig field name -> the type of its flag's value."""
    types = {}
    for field in dataclasses.fields(TrainConfig):
        default = field.default
        # Size flags default to None (the preset's value); they are all integers.
        types[field.name] = int if default is None else type(default)
    return types


def _convert(name: str, text: str, kind: type) -> Any:
    text = text.strip()
    try:
        if kind is bool:
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if kind is int:  # 1e3 is a fine way to write 1000
            value = float(text)
            if not value.is_integer():
                raise ValueError(text)
            return int(value)
        return kind(text)
    except ValueError:
        raise UserError(f"--sweep: {name}={text!r} is not a valid {kind.__name__}") from None


def parse(spec: str) -> list[Axis]:
    """Axes of `spec`, in the order written."""
    if not spec.strip():
        raise UserError("--sweep is empty; write e.g. --sweep='learning_rate=1e-3,3e-4;"
                        "batch_size=16,32'")
    types, axes = field_types(), []
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        name, sep, rest = part.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--sweep: {part!r} is not NAME=VALUES (e.g. learning_rate=1e-3,3e-4)")
        if name not in types:
            raise UserError(f"--sweep: {name!r} is not a flag of python -m train")
        if name in RESERVED:
            raise UserError(f"--sweep: {name} is set by the sweep itself and cannot be swept")
        if any(axis.name == name for axis in axes):
            raise UserError(f"--sweep: {name} is given twice")
        ranged = _RANGE.match(rest.strip())
        if ranged:
            axes.append(_range_axis(name, ranged.group(1), ranged.group(2), types[name]))
            continue
        values = [v for v in (v.strip() for v in rest.split(",")) if v]
        if not values:
            raise UserError(f"--sweep: {name} has an empty list of values")
        converted = tuple(_convert(name, v, types[name]) for v in values)
        if len(set(converted)) != len(converted):
            raise UserError(f"--sweep: {name} lists a value twice")
        axes.append(Axis(name, converted))
    if not axes:
        raise UserError("--sweep names no flag; write e.g. --sweep='learning_rate=1e-3,3e-4'")
    return axes


def _range_axis(name: str, kind: str, args: str, field_type: type) -> Axis:
    bounds = [b.strip() for b in args.split(",")]
    try:
        low, high = (float(b) for b in bounds)
    except ValueError:
        raise UserError(f"--sweep: {name}={kind}({args}) needs two numbers, e.g. "
                        f"{kind}(1e-4,1e-2)") from None
    if field_type not in (int, float) or (kind != "int" and field_type is int):
        want = "int(LOW,HIGH)" if field_type is int else "a list of values"
        raise UserError(f"--sweep: {name} is a {field_type.__name__} flag; use {want}")
    if not low < high or (kind == "log" and low <= 0):
        raise UserError(f"--sweep: {name}={kind}({args}) needs low < high"
                        + (" and low > 0" if kind == "log" else ""))
    return Axis(name, kind=kind, low=low, high=high)


def trials(axes: list[Axis], random: int = 0, seed: int = 0) -> list[dict[str, Any]]:
    """The overrides of each trial: the full grid, or `random` samples (seeded)."""
    if random:
        rng = np.random.default_rng(seed)
        return [{axis.name: axis.sample(rng) for axis in axes} for _ in range(random)]
    ranged = [axis.name for axis in axes if axis.kind]
    if ranged:
        raise UserError(f"--sweep: {', '.join(ranged)} is a range; ranges need --random=N")
    return [dict(zip([a.name for a in axes], combo, strict=True))
            for combo in itertools.product(*(axis.values for axis in axes))]
