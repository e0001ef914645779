"""How one Hugging Face tensor becomes our params and back: a `Rule` per HF tensor name, built by
the helpers below, and the two movers that apply a list of rules to a whole model.

Our params stack layers on a leading axis (`nn.scan`); HF stores one tensor per layer. A rule
whose name holds "{i}" is applied per layer into (or out of) that axis, so neither direction
ever builds a second full copy of the model: import fills preallocated arrays tensor by tensor,
export yields one HF tensor at a time.
"""

import dataclasses
import math
from collections.abc import Callable, Iterator

import numpy as np

from runtime.errors import UserError

Shapes = tuple[tuple[int, ...], ...]


@dataclasses.dataclass(frozen=True)
class Rule:
    """HF tensor `hf` <-> our params `ours` (paths like "layers/mlp/wi/kernel").

    `to_ours(tensor, shapes)` gives one array per path in `ours` (one layer's slice when
    `layers` > 0, `shapes` being those slices' shapes); `to_hf(arrays)` inverts it exactly
    (only reshapes, transposes, splits and concatenations: bit-identical round trips)."""

    hf: str
    ours: tuple[str, ...]
    to_ours: Callable[[np.ndarray, Shapes], tuple[np.ndarray, ...]]
    to_hf: Callable[[tuple[np.ndarray, ...]], np.ndarray]
    layers: int = 0

    def names(self) -> list[str]:
        return [self.hf.format(i=i) for i in range(self.layers)] if self.layers else [self.hf]


def same(hf: str, ours: str, layers: int = 0, flat: bool = False) -> Rule:
    """Same layout both sides (embedding tables, norm scales and biases, T5's bias table).
    `flat`: HF keeps a vector where we keep [heads, head_dim] (attention biases)."""
    def to_ours(w, shapes):
        if not flat and w.shape != shapes[0]:
            raise ValueError(f"shape {w.shape} is not {shapes[0]}")
        return (w.reshape(shapes[0]),)
    return Rule(hf, (ours,), to_ours, lambda a: a[0].reshape(-1) if flat else a[0], layers)


def linear(hf: str, ours: str, layers: int = 0, in_dims: int = 1) -> Rule:
    """torch `nn.Linear` weight [out, in] <-> our kernel, whose first `in_dims` axes are the
    input (e.g. query [embed, heads, head_dim]: 1; output [heads, head_dim, embed]: 2)."""
    return Rule(hf, (ours,), lambda w, s: (w.T.reshape(s[0]),),
                lambda a: a[0].reshape(math.prod(a[0].shape[:in_dims]), -1).T, layers)


def conv1d(hf: str, ours: str, layers: int = 0, in_dims: int = 1) -> Rule:
    """GPT-2's `Conv1D` weight, stored [in, out] (our order already)."""
    return Rule(hf, (ours,), lambda w, s: (w.reshape(s[0]),),
                lambda a: a[0].reshape(math.prod(a[0].shape[:in_dims]), -1), layers)


def fused(hf: str, ours: tuple[str, ...], layers: int = 0) -> Rule:
    """One HF tensor holding several of ours side by side on its last axis (GPT-2's c_attn:
    query, key, value in one [embed, 3 * embed] Conv1D weight and one [3 * embed] bias)."""
    def to_ours(w, shapes):
        parts = np.split(w, np.cumsum([math.prod(s) // math.prod(w.shape[:-1])
                                       for s in shapes])[:-1], axis=-1)
        return tuple(p.reshape(s) for p, s in zip(parts, shapes, strict=True))

    def to_hf(arrays):
        lead = arrays[0].shape[:1] if arrays[0].ndim > 2 else ()
        return np.concatenate([a.reshape(*lead, -1) for a in arrays], axis=-1)
    return Rule(hf, ours, to_ours, to_hf, layers)


def transposed(hf: str, ours: str) -> Rule:
    """An untied output projection: HF [vocab, embed], ours [embed, vocab]."""
    return Rule(hf, (ours,), lambda w, s: (w.T,), lambda a: a[0].T)


def import_params(rules: list[Rule], shapes: dict[str, tuple[int, ...]], dtype,
                  read: Callable[[str], np.ndarray | None], source: str) -> dict[str, np.ndarray]:
    """Our flat params {path: array} filled from `read(hf_name)` (None when absent).

    Every one of our params must be written by some rule: a rule table that leaves one out is
    a bug here, reported as such rather than leaving zeros in a model."""
    params = {path: np.empty(shape, dtype) for path, shape in shapes.items()}
    written: set[str] = set()
    for rule in rules:
        missing = [p for p in rule.ours if p not in shapes]
        if missing:
            raise AssertionError(f"rule {rule.hf} writes unknown params {missing}")
        for i, name in enumerate(rule.names()):
            tensor = read(name)
            if tensor is None:
                raise UserError(f"{source} has no tensor {name}, which this architecture "
                                f"needs; the checkpoint is incomplete or of another model")
            slices = tuple(shapes[p][1:] if rule.layers else shapes[p] for p in rule.ours)
            try:
                arrays = rule.to_ours(np.asarray(tensor), slices)
            except ValueError:
                raise UserError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                                f"which does not fit config.json's sizes") from None
            for path, array, shape in zip(rule.ours, arrays, slices, strict=True):
                if array.shape != shape:
                    raise UserError(f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                                    f"which does not fit config.json's sizes")
                if rule.layers:
                    params[path][i] = array
                else:
                    params[path][...] = array
        written.update(rule.ours)
    if set(shapes) - written:
        raise AssertionError(f"no HF tensor maps to {sorted(set(shapes) - written)}")
    return params


def export_tensors(rules: list[Rule], params: dict[str, np.ndarray]
                   ) -> Iterator[tuple[str, np.ndarray]]:
    """(HF name, tensor) one at a time, in rule order, from our flat params."""
    for rule in rules:
        for i, name in enumerate(rule.names()):
            arrays = tuple(np.asarray(params[p][i] if rule.layers else params[p])
                           for p in rule.ours)
            yield name, np.ascontiguousarray(rule.to_hf(arrays))
