"""Shared fixtures for the data tests: small tokenizers trained on a slice of the stdlib corpus.

Training them once per session keeps the data tests to seconds.
"""

import pytest

from data.corpus import load_corpus, sample
from data.sentencepiece_tokenizer import BERT_SYMBOLS, Tokenizer, train_tokenizer

SMALL_VOCAB = 400


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = sample(load_corpus("stdlib").train, 300_000)
    path = tmp_path_factory.mktemp("tokenizer") / "small.model"
    return train_tokenizer(texts, SMALL_VOCAB, str(path))


@pytest.fixture(scope="session")
def bert_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    """Like small_tokenizer, plus the [MASK], [CLS], [SEP] pieces the BERT formats need."""
    texts = sample(load_corpus("stdlib").train, 300_000)
    path = tmp_path_factory.mktemp("tokenizer") / "bert.model"
    return train_tokenizer(texts, SMALL_VOCAB, str(path), extra_symbols=BERT_SYMBOLS)
