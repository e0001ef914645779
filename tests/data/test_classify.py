"""Tests for data/classify.py: the stdlib "which package" task, its label order and majority
baseline, .jsonl examples and their errors, and the [CLS] text [SEP] batches."""

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from data.classify import (
    Example,
    classification_dataset,
    classification_task,
    majority_accuracy,
)
from data.mlm import special_ids
from data.options import StreamOptions
from data.sentencepiece_tokenizer import Tokenizer
from runtime.errors import UserError

LENGTH, BATCH = 32, 8


@pytest.fixture(scope="module")
def stdlib_task():
    return classification_task()


def test_stdlib_task_labels_split_and_baseline(stdlib_task):
    train, held_out, names = stdlib_task.train, stdlib_task.eval, stdlib_task.label_names
    assert stdlib_task.num_classes == len(names) == 8 and len(set(names)) == 8
    assert len(train) > 3000 and len(held_out) > 100
    labels = [e.label for e in train + held_out]
    assert min(labels) == 0 and max(labels) == 7
    # Label order: most functions first (ties by name), over train and eval together.
    counts = collections.Counter(labels)
    keys = [(-counts[i], names[i]) for i in range(8)]
    assert keys == sorted(keys) and counts[0] > counts[7]
    assert not {e.text for e in train} & {e.text for e in held_out}
    assert len({e.text for e in train + held_out}) == len(train) + len(held_out)  # no repeats
    # Every text is a def of its package: spot-check that asyncio's label holds asyncio code.
    asyncio = names.index("asyncio")
    assert sum("async def" in e.text for e in train if e.label == asyncio) > 50
    assert all(e.text.lstrip().startswith(("def ", "async def ", "@")) for e in train[:500])
    baseline = stdlib_task.majority_accuracy()
    majority = collections.Counter(e.label for e in train).most_common(1)[0][0]
    assert baseline == sum(e.label == majority for e in held_out) / len(held_out)
    assert 1 / 8 < baseline < 0.5
    described = json.loads(json.dumps(stdlib_task.describe()))
    assert described["label_names"] == names and described["majority_accuracy"] == baseline
    assert described["num_eval"] == len(held_out)


def test_stdlib_task_is_deterministic_and_nested(stdlib_task):
    again = classification_task()
    assert again.label_names == stdlib_task.label_names and again.eval == stdlib_task.eval
    assert again.fingerprint == stdlib_task.fingerprint
    four = classification_task(num_classes=4)
    assert four.label_names == stdlib_task.label_names[:4]
    assert set(four.eval) == {e for e in stdlib_task.eval if e.label < 4}
    with pytest.raises(UserError, match="num_classes=1 must be in"):
        classification_task(num_classes=1)
    with pytest.raises(UserError, match="label_names applies to .jsonl"):
        classification_task(label_names=["a", "b"])


def test_majority_accuracy():
    train = [Example("a", 1), Example("b", 1), Example("c", 0)]
    assert majority_accuracy(train, [Example("d", 1), Example("e", 2), Example("f", 0)]) == 1 / 3
    assert majority_accuracy([Example("a", 2), Example("b", 0)], [Example("c", 0)]) == 1.0


def test_batches(bert_tokenizer: Tokenizer, stdlib_task):
    tok, ids = bert_tokenizer, special_ids(bert_tokenizer)
    examples = stdlib_task.eval[:20]
    options = StreamOptions(batch_size=BATCH, seed=0, shuffle=False, repeat=False)
    batches = list(classification_dataset(examples, tok, options, length=LENGTH))
    assert len(batches) == 3
    for batch in batches:
        assert batch["labels"].shape == batch["label_weights"].shape == (BATCH,)
        for key in ("tokens", "segment_ids", "positions", "token_types"):
            assert batch[key].shape == (BATCH, LENGTH) and batch[key].dtype == np.int32
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    np.testing.assert_array_equal(rows["labels"][:20], [e.label for e in examples])
    np.testing.assert_array_equal(rows["label_weights"], np.arange(24) < 20)
    for i, example in enumerate(examples):
        expected = [ids.cls, *tok.encode(example.text)[: LENGTH - 2], ids.sep]
        n = len(expected)
        np.testing.assert_array_equal(rows["tokens"][i, :n], expected)
        np.testing.assert_array_equal(rows["segment_ids"][i], np.arange(LENGTH) < n)
    assert not rows["token_types"].any() and not rows["segment_ids"][20:].any()


def test_hosts_split_the_examples(bert_tokenizer: Tokenizer, stdlib_task):
    examples = stdlib_task.eval[:30]

    def rows(index: int) -> list[tuple[int, tuple]]:
        options = StreamOptions(batch_size=4, seed=0, shuffle=False, repeat=False,
                                shard_index=index, shard_count=2)
        ds = classification_dataset(examples, bert_tokenizer, options, length=LENGTH)
        return [(int(b["labels"][r]), tuple(b["tokens"][r])) for b in ds for r in range(4)
                if b["label_weights"][r]]

    for index in (0, 1):
        share = examples[index::2]
        host_rows = rows(index)
        assert [label for label, _ in host_rows] == [e.label for e in share]
        assert [bert_tokenizer.decode(tokens[1:8]) for _, tokens in host_rows] == [
            bert_tokenizer.decode(bert_tokenizer.encode(e.text)[:7]) for e in share]


def _write(path: Path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def test_jsonl_labels(tmp_path: Path):
    records = [{"text": f"review {i}", "label": ["pos", "neg", "meh"][i % 3]} for i in range(30)]
    task = classification_task(_write(tmp_path / "a.jsonl", records))
    assert task.label_names == ["meh", "neg", "pos"]  # sorted when not given
    by_text = {e.text: task.label_names[e.label] for e in task.train + task.eval}
    assert by_text == {r["text"]: r["label"] for r in records}
    order = ["pos", "neg", "meh"]
    ordered = classification_task(str(tmp_path / "a.jsonl"), label_names=order)
    assert {e.text: e.label for e in ordered.train + ordered.eval} == {
        r["text"]: order.index(r["label"]) for r in records}
    assert ordered.eval == [Example(e.text, order.index(task.label_names[e.label]))
                            for e in task.eval]  # the split does not depend on label names
    numbered = [{"text": f"t{i}", "label": i % 4} for i in range(20)]
    task = classification_task(_write(tmp_path / "b.jsonl", numbered))
    assert task.label_names == ["0", "1", "2", "3"]
    assert sorted(e.label for e in task.train + task.eval) == sorted(i % 4 for i in range(20))


@pytest.mark.parametrize(
    "lines, names, message",
    [
        ([{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], ["x"],
         r"unknown label 'y' in .*; the labels are x\."),
        ([{"text": "a", "label": "x"}, {"text": "b", "label": 1}], None, "mix strings and"),
        ([{"text": "a", "label": -1}, {"text": "b", "label": 1}], None, "is negative"),
        ([{"text": "a", "label": 0}, {"text": "b", "label": 2}], ["x", "y"], "out of range"),
        ([{"text": "a", "label": True}], None, r'field "label" is bool, not a string or an'),
        ([{"text": "a"}], None, r'data.jsonl:1 has no field "label"'),
        ([{"label": "a"}], None, r'data.jsonl:1 has no field "text"'),
        ([], None, "data.jsonl has no records"),
    ],
)
def test_bad_jsonl_gives_one_line_user_error(tmp_path: Path, lines, names, message):
    path = _write(tmp_path / "data.jsonl", lines)
    with pytest.raises(UserError, match=message) as error:
        classification_task(path, label_names=names)
    assert "\n" not in str(error.value)


def test_bad_arguments(bert_tokenizer: Tokenizer, small_tokenizer: Tokenizer, tmp_path: Path):
    examples = [Example("a", 0), Example("b", 1)]
    with pytest.raises(UserError, match="length >= 3"):
        classification_dataset(examples, bert_tokenizer, StreamOptions(batch_size=1, seed=0),
                               length=2)
    with pytest.raises(UserError, match=r"\[CLS\]"):
        classification_dataset(examples, small_tokenizer, StreamOptions(batch_size=1, seed=0),
                               length=8)
    with pytest.raises(UserError, match="does not exist"):
        classification_task(str(tmp_path / "missing.jsonl"))
    (tmp_path / "notes.txt").write_text("hello\n")
    with pytest.raises(UserError, match="unsupported data file"):
        classification_task(str(tmp_path / "notes.txt"))
