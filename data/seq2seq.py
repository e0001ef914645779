"""Seq2seq pairs for encoder-decoder models: .jsonl source/target files, or the offline tasks
built from the stdlib ("function code → the first paragraph of its docstring", "function code →
its signature"), and their batches."""

import ast
import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import grain
import numpy as np

from data.examples import example_dataset, pad_row, shard_items
from data.options import StreamOptions
from data.records import fingerprint, read_records, split
from data.sentencepiece_tokenizer import Tokenizer
from data.seq2seq_text import encode_text
from data.stdlib_functions import stdlib_functions
from runtime.errors import UserError

STDLIB_SOURCE = "stdlib:docstrings"
SIGNATURES_SPEC = "stdlib_signatures"  # --data value of the code -> signature task
SIGNATURES_SOURCE = "stdlib:signatures"


class Pair(NamedTuple):
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class Seq2SeqTask:
    train: list[Pair]
    eval: list[Pair]  # held out: deterministic, disjoint from train, non-empty
    fingerprint: dict  # JSON-able: source, python, num_examples, sha256


def seq2seq_task(spec: str = "stdlib", eval_fraction: float = 0.05) -> Seq2SeqTask:
    """The pairs of `spec`, split into train and a deterministic held-out eval set.

    spec "stdlib": every stdlib function or method (data/stdlib_functions.py) with a docstring and
    a body; source = its code with the docstring cut out (decorators and comments kept),
    target = the docstring's first paragraph on one line; functions whose code repeats an
    earlier one are dropped; held out by the hash of the qualified name.
    spec "stdlib_signatures": every stdlib function or method; source = its code as above (its
    source when the docstring can't be cut out), target = its signature as names only:
    `name(a, b, *args, c, **kwargs)` (no annotations, defaults or `/`, `*` markers), a
    deterministic function of the source; held out as above.
    Otherwise `spec` names .jsonl files (comma-separated files, globs, directories) whose lines are
    objects with string fields "source" and "target"; held out by the hash of the source.
    """
    if spec == "stdlib":
        named = _stdlib_pairs()
        train_named, eval_named = split(named, lambda item: item[0], eval_fraction)
        train, held_out = [p for _, p in train_named], [p for _, p in eval_named]
        source = STDLIB_SOURCE
    elif spec == SIGNATURES_SPEC:
        named = _stdlib_signature_pairs()
        train_named, eval_named = split(named, lambda item: item[0], eval_fraction)
        train, held_out = [p for _, p in train_named], [p for _, p in eval_named]
        source = SIGNATURES_SOURCE
    else:
        records = read_records(spec, {"source": (str,), "target": (str,)})
        pairs = [Pair(r["source"], r["target"]) for r in records]
        train, held_out = split(pairs, lambda pair: pair.source, eval_fraction)
        source = spec
    return Seq2SeqTask(train, held_out, fingerprint(source, train + held_out))


def _stdlib_pairs() -> list[tuple[str, Pair]]:
    """(qualified name, pair) for the docstring task, in stdlib file order."""
    seen, named = set(), []
    for function in stdlib_functions():
        if function.code and function.summary and function.code not in seen:
            seen.add(function.code)
            named.append((function.qualname, Pair(function.code, function.summary)))
    return named


def _stdlib_signature_pairs() -> list[tuple[str, Pair]]:
    """(qualified name, pair) for the signature task, in stdlib file order."""
    seen, named = set(), []
    for function in stdlib_functions():
        code = function.code or function.source
        target = signature(function.source)
        if target and code not in seen:
            seen.add(code)
            named.append((function.qualname, Pair(code, target)))
    return named


def signature(source: str) -> str:
    """`name(a, b, *args, c, **kwargs)` of the function whose (dedented) source this is; "" if
    that source does not parse alone (a few continuation lines keep their indent)."""
    try:
        node = ast.parse(source).body[0]
    except SyntaxError:
        return ""
    args = node.args
    names = [a.arg for a in args.posonlyargs + args.args]
    names += [f"*{args.vararg.arg}"] if args.vararg else []
    names += [a.arg for a in args.kwonlyargs]
    names += [f"**{args.kwarg.arg}"] if args.kwarg else []
    return f"{node.name}({', '.join(names)})"


def seq2seq_dataset(
    pairs: Sequence[Pair],
    tokenizer: Tokenizer,
    options: StreamOptions,
    *,
    source_length: int,
    target_length: int,
) -> grain.IterDataset:
    """Encoder-decoder batches of data shard's share `pairs[i::count]` (see `StreamOptions`),
    one pair a row.

    The source is encoded (`encode_text`), cut to source_length - 1 tokens (keeping its start) and ends with EOS;
    the target likewise to target_length - 1 tokens + EOS. Each element holds
      encoder_tokens, encoder_segment_ids, encoder_positions: int32[batch_size, source_length]
        (segment ids 1 on tokens, 0 on padding; positions 0, 1, ... on tokens, 0 on padding).
      decoder_inputs: int32[batch_size, target_length], BOS + the target shifted right by one.
      decoder_targets: int32[batch_size, target_length], the target + EOS, 0 on padding.
      decoder_segment_ids, decoder_positions: int32[batch_size, target_length], as the encoder's.
      decoder_weights: int32[batch_size, target_length], 1 where decoder_targets is scored.
    Deterministic under `seed`, reshuffled each epoch with repeat=True; repeat=False is one pass
    with zero rows (weights 0) padding the last batch. `iter(ds).get_state()` is JSON.
    """
    if source_length < 2 or target_length < 2:
        raise UserError(
            f"need source_length and target_length >= 2, got {source_length} and {target_length}."
        )
    shard_pairs = shard_items(pairs, options.shard_index, options.shard_count, "seq2seq pairs")
    bos = np.asarray([tokenizer.bos_id], np.int32)
    eos = np.asarray([tokenizer.eos_id], np.int32)

    def featurize(pair: Pair, rng: np.random.Generator) -> dict[str, np.ndarray]:
        del rng  # pairs are used as they are
        source = np.concatenate([encode_text(tokenizer, pair.source)[: source_length - 1], eos])
        target = np.concatenate([encode_text(tokenizer, pair.target)[: target_length - 1], eos])
        encoder = pad_row(source, source_length)
        decoder = pad_row(np.concatenate([bos, target[:-1]]), target_length)
        return {
            "encoder_tokens": encoder["tokens"],
            "encoder_segment_ids": encoder["segment_ids"],
            "encoder_positions": encoder["positions"],
            "decoder_inputs": decoder["tokens"],
            "decoder_targets": pad_row(target, target_length)["tokens"],
            "decoder_segment_ids": decoder["segment_ids"],
            "decoder_positions": decoder["positions"],
            "decoder_weights": decoder["segment_ids"].copy(),
        }

    return example_dataset(shard_pairs, featurize, options)
