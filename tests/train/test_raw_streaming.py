"""Raw --data files of clm/mlm/span are tokenized into temporary token shards at the start of a
run and streamed from them (data/token_cache.py): the batches are those of the same files
prepared by hand, the shards are gone when the run ends, tiny corpora keep the split of
data/corpus.py, and a run cannot resume across the two kinds of stream."""

import json
import os
import tempfile

import numpy as np
import pytest

from data.corpus import load_corpus
from data.prepare_job import prepare_corpus
from data.prepared_dataset import load_prepared
from data.sentencepiece_tokenizer import load_tokenizer
from runtime.errors import UserError
from tests.data.generated_corpus import VOCAB, write_corpus
from train.flags import TrainConfig
from train.loop import train
from train.prepare import prepare

BASE = TrainConfig(preset="tiny", seq_len=16, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                   schedule="constant", log_every=1, eval_every=2, eval_batches=2, save_every=2,
                   vocab_size=VOCAB, eval_fraction=0.1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


def _temporary_shards() -> set[str]:
    return {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("meshlm-tokens-")}


def _config(workdir):
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)


def test_raw_files_stream_the_batches_of_the_same_files_prepared(corpus, tmp_path):
    before = _temporary_shards()
    cfg = BASE.replace(data=corpus, workdir=str(tmp_path / "raw"), steps=2)
    run = prepare(cfg)
    assert _temporary_shards() - before  # tokenized into a temporary prepared directory
    streamed = [b for b, _ in zip(run.train_data, range(4), strict=False)]
    held_out = list(run.eval_data)
    # By hand, with the tokenizer the run trained: the same windows, batch for batch.
    by_hand = str(tmp_path / "prepared")
    prepare_corpus(corpus, by_hand, tokenizer=run.tokenizer.path, eval_fraction=0.1)
    explicit = prepare(cfg.replace(data=by_hand, workdir=str(tmp_path / "explicit")))
    for a, b in zip(streamed, explicit.train_data, strict=False):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    assert len(held_out) == len(list(explicit.eval_data)) > 0
    assert run.data.fingerprint["sha256"] == load_prepared(by_hand).fingerprint["sha256"]


def test_a_run_on_raw_files_records_its_stream_and_removes_its_shards(corpus, tmp_path):
    before = _temporary_shards()
    cfg = BASE.replace(data=corpus, workdir=str(tmp_path / "w"), steps=2)
    train(cfg)
    assert _temporary_shards() == before
    recorded = _config(cfg.workdir)["corpus"]
    assert recorded["stream"] == "windows" and recorded["source"] == corpus
    assert recorded["num_documents"] == 160 + 3 + 20 + 60  # every non-blank document
    train(cfg.replace(steps=4))  # resumes on a new temporary copy of the same shards
    with open(os.path.join(cfg.workdir, "metrics.jsonl")) as f:
        assert [m["step"] for m in map(json.loads, f) if "loss" in m] == [1, 2, 3, 4]
    assert _temporary_shards() == before


def test_a_tiny_corpus_keeps_the_corpus_split_and_packs_documents(tmp_path):
    files = tmp_path / "tiny"
    files.mkdir()
    words = write_corpus(str(tmp_path / "words"), jsonl_docs=0)  # its txt files: 3 documents
    for i in range(3):  # the hash split would hold none of them out
        os.rename(os.path.join(words, f"b{i}.txt"), files / f"{i}.txt")
    cfg = BASE.replace(data=str(files), workdir=str(tmp_path / "w"), steps=2, eval_fraction=0.02)
    run = prepare(cfg)
    expected = load_corpus(str(files), 0.02)
    assert (run.data.train, run.data.eval) == (expected.train, expected.eval)
    train(cfg)
    assert _config(cfg.workdir)["corpus"]["stream"] == "packed"
    # A run that read packed documents cannot resume on windows (and the reverse).
    prepared = str(tmp_path / "prepared")
    big = write_corpus(str(tmp_path / "big"))
    prepare_corpus(big, prepared, tokenizer=os.path.join(cfg.workdir, "tokenizer.model"),
                   eval_fraction=0.1)
    with pytest.raises(UserError, match="read its data .* as packed documents, this one would "
                                        "read windows of token shards"):
        prepare(cfg.replace(data=prepared, steps=4))


def test_one_text_file_holds_out_its_last_lines_as_the_corpus_split_does(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("".join(f"line {i} of the only document\n" for i in range(300)))
    out = str(tmp_path / "prepared")
    prepare_corpus(str(path), out, vocab_size=VOCAB, eval_fraction=0.05)
    prepared = load_prepared(out)
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    expected = load_corpus(str(path), 0.05)
    for split, texts in (("train", expected.train), ("eval", expected.eval)):
        reader = prepared.reader(split)
        assert reader.num_documents == 1
        np.testing.assert_array_equal(reader.document(0)[:-1], tokenizer.encode(texts[0]))
    assert prepared.manifest["num_tokens"]["eval"] < 0.1 * prepared.manifest["num_tokens"]["train"]
