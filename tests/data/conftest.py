"""Shared fixtures for the data tests: one small tokenizer trained on a slice of the stdlib corpus.

Training it once per session keeps the data tests to seconds.
"""

import pytest

from data.corpus import load_corpus, sample
from data.tokenizer import Tokenizer, train_tokenizer

SMALL_VOCAB = 400


@pytest.fixture(scope="session")
def small_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    texts = sample(load_corpus("stdlib").train, 300_000)
    path = tmp_path_factory.mktemp("tokenizer") / "small.model"
    return train_tokenizer(texts, SMALL_VOCAB, str(path))
