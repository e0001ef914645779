"""Classification examples: .jsonl text/label files, or the offline task "which standard-library
package does this function come from", with their [CLS] text [SEP] batches and majority baseline."""

import collections
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import grain
import numpy as np

from data.examples import example_dataset, pad_row, shard_items
from data.mlm import special_ids
from data.options import StreamOptions
from data.records import fingerprint, read_records, split
from data.sentencepiece_tokenizer import Tokenizer
from data.stdlib_functions import stdlib_functions
from runtime.errors import UserError

STDLIB_SOURCE = "stdlib:packages"
DEFAULT_NUM_CLASSES = 8


class Example(NamedTuple):
    text: str
    label: int  # index into the task's label_names


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
    train: list[Example]
    eval: list[Example]  # held out: deterministic, disjoint from train, non-empty
    label_names: list[str]  # label i is label_names[i]
    fingerprint: dict  # JSON-able: source, python, num_examples, sha256

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    def majority_accuracy(self) -> float:
        """Eval accuracy of always answering the most frequent train label: the baseline."""
        return majority_accuracy(self.train, self.eval)

    def describe(self) -> dict:
        """JSON-able summary: label order, split sizes, majority baseline, fingerprint."""
        return {
            "label_names": self.label_names,
            "num_train": len(self.train),
            "num_eval": len(self.eval),
            "majority_accuracy": self.majority_accuracy(),
            "fingerprint": self.fingerprint,
        }


def classification_task(
    spec: str = "stdlib",
    *,
    num_classes: int = DEFAULT_NUM_CLASSES,
    label_names: Sequence[str] | None = None,
    eval_fraction: float = 0.05,
) -> ClassificationTask:
    """The examples of `spec`, split into train and a deterministic held-out eval set.

    spec "stdlib": text = the source of a stdlib function or method (data/stdlib_functions.py;
    sources that repeat an earlier one are dropped), label = its top-level package (`email`,
    `asyncio`, a top-level module such as `typing` counts as its own package), kept only for the
    `num_classes` packages with the most functions; label order is by function count, most
    first, ties by name. Held out by the hash of the qualified name.
    Otherwise `spec` names .jsonl files whose lines have a string "text" and a "label" that is a
    string or a non-negative integer. String labels are numbered in `label_names` order if given
    (others are refused), else sorted; integer labels are used as they are, with names "0", "1",
    ... Held out by the hash of the text.
    """
    if spec == "stdlib":
        if label_names is not None:
            raise UserError("label_names applies to .jsonl data; the stdlib task names its own.")
        return _stdlib_task(num_classes, eval_fraction)
    records = read_records(spec, {"text": (str,), "label": (str, int)})
    names, numbered = _number_labels([r["label"] for r in records], label_names, spec)
    examples = [Example(r["text"], label) for r, label in zip(records, numbered)]
    train, held_out = split(examples, lambda example: example.text, eval_fraction)
    return ClassificationTask(train, held_out, names, fingerprint(spec, train + held_out))


def _stdlib_task(num_classes: int, eval_fraction: float) -> ClassificationTask:
    seen, functions = set(), []
    for function in stdlib_functions():
        if function.source not in seen:
            seen.add(function.source)
            functions.append(function)
    counts = collections.Counter(function.package for function in functions)
    if not 2 <= num_classes <= len(counts):
        raise UserError(
            f"num_classes={num_classes} must be in [2, {len(counts)}] (stdlib packages)."
        )
    names = sorted(counts, key=lambda package: (-counts[package], package))[:num_classes]
    index = {name: i for i, name in enumerate(names)}
    named = [(f.qualname, Example(f.source, index[f.package])) for f in functions
             if f.package in index]
    train_named, eval_named = split(named, lambda item: item[0], eval_fraction)
    train, held_out = [e for _, e in train_named], [e for _, e in eval_named]
    source = f"{STDLIB_SOURCE}:{num_classes}"
    return ClassificationTask(train, held_out, names, fingerprint(source, train + held_out))


def _number_labels(
    labels: list[str | int], label_names: Sequence[str] | None, spec: str
) -> tuple[list[str], list[int]]:
    kinds = {type(label) for label in labels}
    if len(kinds) > 1:
        raise UserError(f"labels in {spec} mix strings and integers; use one kind for all lines.")
    if kinds == {int}:
        if min(labels) < 0:
            raise UserError(f"label {min(labels)} in {spec} is negative; number labels from 0.")
        if label_names is None:
            label_names = [str(i) for i in range(max(labels) + 1)]
        names = list(label_names)
        if max(labels) >= len(names):
            raise UserError(
                f"label {max(labels)} in {spec} is out of range for {len(names)} label names."
            )
        return names, list(labels)
    names = list(label_names) if label_names is not None else sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise UserError(
            f"unknown label {unknown[0]!r} in {spec}; the labels are {', '.join(names)}."
        )
    return names, [index[label] for label in labels]


def majority_accuracy(train: Sequence[Example], held_out: Sequence[Example]) -> float:
    """Fraction of `held_out` whose label is the most frequent label of `train` (ties: lowest)."""
    if not train or not held_out:
        raise ValueError("majority_accuracy needs train and held-out examples.")
    counts = collections.Counter(example.label for example in train)
    majority = min(counts, key=lambda label: (-counts[label], label))
    return sum(example.label == majority for example in held_out) / len(held_out)


def classification_dataset(
    examples: Sequence[Example],
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    length: int,
) -> grain.IterDataset:
    """Batches of data shard's share `examples[i::count]` (see `StreamOptions`), one example a
    row.

    A row is `[CLS] text [SEP]` then padding, the text cut to its first length - 2 tokens; an
    encoder classifies from the [CLS] position (0). Each element holds
      tokens, segment_ids, positions: int32[batch_size, length] (segment ids 1 on the row's
        tokens, 0 on padding; positions 0, 1, ... on tokens, 0 on padding).
      token_types: int32[batch_size, length], all 0.
      labels: int32[batch_size], the class index.
      label_weights: int32[batch_size], 1 on real rows, 0 on the padding rows of a last eval batch.
    The tokenizer needs the BERT pieces (data/mlm.py `special_ids`). Deterministic under `seed`,
    reshuffled each epoch with repeat=True; `iter(ds).get_state()` is JSON.
    """
    if length < 3:
        raise UserError(f"classification rows need length >= 3 ([CLS] text [SEP]), got {length}.")
    shard_examples = shard_items(
        examples, options.shard_index, options.shard_count, "classification examples"
    )
    specials = special_ids(tokenizer)
    cls, sep = np.asarray([specials.cls], np.int32), np.asarray([specials.sep], np.int32)

    def featurize(example: Example, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng  # examples are used as they are
        ids = np.concatenate([cls, tokenizer.encode(example.text)[: length - 2], sep])
        row = pad_row(ids, length)
        return {
            **row,
            "token_types": np.zeros(length, np.int32),
            "labels": np.asarray(example.label, np.int32),
            "label_weights": np.asarray(1, np.int32),
        }

    return example_dataset(shard_examples, featurize, options)
