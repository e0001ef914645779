"""Tests for data/seq2seq.py: the stdlib "code → docstring" task, .jsonl pairs and their errors,
and the encoder/decoder batch layout."""

import json
from pathlib import Path

import numpy as np
import pytest

from data.options import StreamOptions
from data.sentencepiece_tokenizer import Tokenizer
from data.seq2seq import Pair, seq2seq_dataset, seq2seq_task
from data.seq2seq_text import decode_text, encode_text
from data.stdlib_functions import stdlib_functions
from runtime.errors import UserError

SRC, TGT, BATCH = 48, 16, 4


@pytest.fixture(scope="module")
def stdlib_task():
    return seq2seq_task()


def test_stdlib_task_sizes_split_and_content(stdlib_task):
    train, held_out = stdlib_task.train, stdlib_task.eval
    assert len(train) > 3000 and len(held_out) > 100
    assert 0.02 < len(held_out) / (len(train) + len(held_out)) < 0.08  # eval_fraction 0.05
    assert not {p.source for p in train} & {p.source for p in held_out}
    assert all(p.source.strip() and p.target.strip() for p in train + held_out)
    assert all("\n" not in p.target for p in train + held_out)  # one paragraph, one line
    assert stdlib_task.fingerprint["num_examples"] == len(train) + len(held_out)
    # A known pair: json's JSONEncoder.default, its docstring cut out of the code.
    pair = next(p for p in train + held_out
                if p.target.startswith("Implement this method in a subclass such that"))
    assert pair.source.startswith("def default(self, o):\n    raise TypeError(")
    assert "Implement" not in pair.source and "For example" not in pair.target
    assert pair.target.endswith("(to raise a ``TypeError``).")


def test_stdlib_task_is_deterministic(stdlib_task):
    stdlib_functions.cache_clear()  # really parse the stdlib a second time
    rebuilt = seq2seq_task()
    assert rebuilt.fingerprint == stdlib_task.fingerprint
    assert rebuilt.train == stdlib_task.train and rebuilt.eval == stdlib_task.eval
    # A larger held-out fraction holds out a superset: the split is by a fixed hash per name.
    bigger = seq2seq_task(eval_fraction=0.2)
    assert set(stdlib_task.eval) <= set(bigger.eval)
    assert 0.15 < len(bigger.eval) / (len(bigger.train) + len(bigger.eval)) < 0.25


def test_batches_shift_the_target_right(bert_tokenizer: Tokenizer, stdlib_task):
    tok = bert_tokenizer
    pairs = stdlib_task.eval[:10]
    options = StreamOptions(batch_size=BATCH, seed=0, shuffle=False, repeat=False)
    batches = list(seq2seq_dataset(pairs, tok, options, source_length=SRC, target_length=TGT))
    assert len(batches) == 3
    rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    for value in rows.values():
        assert value.dtype == np.int32 and value.shape[0] == 12
    assert rows["encoder_tokens"].shape == (12, SRC) and rows["decoder_inputs"].shape == (12, TGT)
    for i, pair in enumerate(pairs):
        source = np.append(tok.encode(" " + pair.source)[: SRC - 1], tok.eos_id)
        target = np.append(tok.encode(" " + pair.target)[: TGT - 1], tok.eos_id)
        n, m = len(source), len(target)
        np.testing.assert_array_equal(rows["encoder_tokens"][i, :n], source)
        assert not rows["encoder_tokens"][i, n:].any()
        np.testing.assert_array_equal(rows["encoder_segment_ids"][i], np.arange(SRC) < n)
        np.testing.assert_array_equal(rows["decoder_targets"][i, :m], target)
        np.testing.assert_array_equal(rows["decoder_inputs"][i, :m],
                                      np.concatenate([[tok.bos_id], target[:-1]]))
        np.testing.assert_array_equal(rows["decoder_weights"][i], np.arange(TGT) < m)
        np.testing.assert_array_equal(rows["decoder_segment_ids"][i], np.arange(TGT) < m)
        np.testing.assert_array_equal(rows["decoder_positions"][i, :m], np.arange(m))
    assert not rows["decoder_weights"][10:].any() and not rows["encoder_segment_ids"][10:].any()


def test_a_word_is_split_alike_at_the_start_of_a_text_and_inside_it(bert_tokenizer: Tokenizer):
    """Our tokenizers have no dummy prefix, so "clear" alone and in "def clear" split apart; the
    seq2seq encoding must give a target the same pieces as the source word it copies."""
    tok = bert_tokenizer
    inside = tok.encode("def clear(self)")
    plain, ours = tok.encode("clear(self)"), encode_text(tok, "clear(self)")
    assert not np.array_equal(plain, ours)  # why encode_text exists
    np.testing.assert_array_equal(inside[-len(ours):], ours)  # the pieces after "def"
    assert tok.decode(inside[: len(inside) - len(ours)]) == "def"
    for text in ["clear(self)", "  indented\n\tcode", "", "x"]:
        assert decode_text(tok, encode_text(tok, text)) == text


def _write(path: Path, lines: list) -> str:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(path)


def test_jsonl_pairs_round_trip(tmp_path: Path, bert_tokenizer: Tokenizer):
    records = [{"source": f"x = {i}", "target": f"the number {i}", "id": i} for i in range(50)]
    task = seq2seq_task(_write(tmp_path / "pairs.jsonl", records + [""]), eval_fraction=0.1)
    assert sorted(task.train + task.eval) == sorted(
        Pair(r["source"], r["target"]) for r in records)
    assert 1 <= len(task.eval) < 15
    batch = next(iter(seq2seq_dataset(task.eval, bert_tokenizer,
                                      StreamOptions(batch_size=1, seed=0, shuffle=False),
                                      source_length=8, target_length=24)))
    weights = batch["decoder_weights"][0] == 1
    decoded = decode_text(bert_tokenizer, batch["decoder_targets"][0][weights][:-1])
    assert decoded == task.eval[0].target


@pytest.mark.parametrize(
    "lines, message",
    [
        ([{"source": "a"}], r'pairs.jsonl:1 has no field "target"'),
        ([{"source": "a", "target": "b"}, "{not json"], r"pairs.jsonl:2 is not valid JSON"),
        ([{"source": "a", "target": 3}], r'field "target" is int, not a string'),
        ([["a", "b"]], r"pairs.jsonl:1 is not a JSON object"),
        (["", "  "], r"pairs.jsonl has no records"),
        ([{"source": "a", "target": "b"}], r"at least 2 examples"),
    ],
)
def test_bad_jsonl_gives_one_line_user_error(tmp_path: Path, lines: list, message: str):
    path = _write(tmp_path / "pairs.jsonl", lines)
    with pytest.raises(UserError, match=message) as error:
        seq2seq_task(path)
    assert "\n" not in str(error.value)


def test_bad_lengths_raise_user_error(bert_tokenizer: Tokenizer):
    with pytest.raises(UserError, match="target_length >= 2"):
        seq2seq_dataset([Pair("a", "b")], bert_tokenizer, StreamOptions(batch_size=1, seed=0),
                        source_length=8, target_length=1)
    with pytest.raises(UserError, match="gets no seq2seq pairs"):
        seq2seq_dataset([Pair("a", "b")], bert_tokenizer,
                        StreamOptions(batch_size=1, seed=0, shard_index=1, shard_count=2),
                        source_length=8, target_length=8)
