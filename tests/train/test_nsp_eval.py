"""The held-out NSP evaluation: pairs drawn shuffled across the held-out documents, the same under
the same --seed, at least --nsp_eval_pairs of them, and the Wilson interval reported beside the
accuracy."""

import itertools

import numpy as np
import pytest

from data.corpus import Corpus, load_corpus, sample
from data.mlm import special_ids
from data.sentencepiece_tokenizer import BERT_SYMBOLS, Tokenizer, train_tokenizer
from train.flags import TrainConfig
from train.metrics import format_line, wilson_interval
from train.tasks import get_task

LENGTH = 64
# 40 lines a document, each naming its document: any piece of text tells where it came from.
DOCS = ["".join(f"<{d:02d}:{k:02d}>\n" for k in range(40)) for d in range(40)]


@pytest.fixture(scope="module")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = sample(load_corpus("stdlib").train, 300_000)
    path = tmp_path_factory.mktemp("tokenizer") / "bert.model"
    return train_tokenizer(texts, 400, str(path), extra_symbols=BERT_SYMBOLS)


def _held_out_docs(tok, cfg: TrainConfig, batches: int) -> list[int]:
    """The document of each held-out pair's A, in the order the evaluation reads them."""
    corpus = Corpus(train=DOCS[:20], eval=DOCS[20:], fingerprint={})
    stream = get_task("mlm_nsp").dataset(cfg, corpus, tok, "eval")
    sep = special_ids(tok).sep
    docs = []
    for batch in itertools.islice(iter(stream), batches):
        rows = np.where(batch["weights"] == 1, batch["targets"], batch["tokens"])
        for row, weight in zip(rows, batch["nsp_weights"]):
            if weight:
                text_a = tok.decode(row[1 : int(np.argmax(row == sep))])
                docs.append(next(d for d, doc in enumerate(DOCS) if text_a in doc))
    return docs


def test_held_out_pairs_are_shuffled_across_documents_and_deterministic(bert_tokenizer):
    cfg = TrainConfig(objective="mlm_nsp", batch_size=16, seq_len=LENGTH, seed=0)
    first = _held_out_docs(bert_tokenizer, cfg, 2)
    assert len(first) == 32 and set(first) <= set(range(20, 40))
    # In file order the first 32 pairs come from 11 documents (3 pairs each); shuffled, from
    # nearly all 20, in no sorted order.
    assert len(set(first)) >= 15 and first != sorted(first)
    assert _held_out_docs(bert_tokenizer, cfg, 2) == first  # the same every evaluation
    assert _held_out_docs(bert_tokenizer, cfg.replace(seed=1), 2) != first  # --seed picks them
    # One pass: every held-out pair once (20 documents x 3 pairs), the last batch padded.
    everything = _held_out_docs(bert_tokenizer, cfg, 10)
    assert len(everything) == 60 and sorted(everything) == sorted(list(range(20, 40)) * 3)


def test_nsp_eval_reads_at_least_nsp_eval_pairs():
    task = get_task("mlm_nsp")
    assert task.eval_batches(TrainConfig(batch_size=16, eval_batches=8)) == 64  # 1024 / 16
    assert task.eval_batches(TrainConfig(batch_size=48, eval_batches=8)) == 22  # ceil(1024/48)
    assert task.eval_batches(TrainConfig(batch_size=16, eval_batches=100)) == 100
    assert task.eval_batches(TrainConfig(batch_size=16, eval_batches=8, nsp_eval_pairs=0)) == 8
    assert get_task("mlm").eval_batches(TrainConfig(batch_size=16, eval_batches=8)) == 8


@pytest.mark.parametrize("successes,n,low,high", [
    # Wilson (1927) score intervals at z = 1.96, as scipy's binomtest(...).proportion_ci(
    # method="wilson") gives them.
    (800, 1024, 0.754904, 0.805494),
    (64, 128, 0.414652, 0.585348),
    (512, 1024, 0.469433, 0.530567),
    (0, 10, 0.0, 0.277533),
    (10, 10, 0.722467, 1.0),
])
def test_wilson_interval(successes, n, low, high):
    np.testing.assert_allclose(wilson_interval(successes, n), (low, high), atol=1e-6)


def test_interval_is_printed_beside_the_accuracy():
    low, high = wilson_interval(800, 1024)
    line = format_line(400, 400, {"eval_loss": 5.0, "eval_ppl": 148.4, "nsp_accuracy": 800 / 1024,
                                  "nsp_accuracy_low": low, "nsp_accuracy_high": high,
                                  "nsp_accuracy_n": 1024.0, "mlm_accuracy": 0.2})
    assert "nsp_accuracy 0.7812 (95% 0.7549-0.8055, n 1024) | mlm_accuracy 0.2000" in line
