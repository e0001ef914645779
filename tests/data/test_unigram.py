"""Tests for data/unigram.py: the baseline loss equals a direct add-one-smoothed computation.

Corpora are built from tokens so the expected value can be computed by hand.
"""

import math

import numpy as np

from data.sentencepiece_tokenizer import Tokenizer
from data.unigram import unigram_loss


def test_matches_direct_computation(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    train = ["def f(x):\n    return x\n", "import os\n", "x = 1\n" * 5]
    held_out = ["def g(y):\n\treturn y + 2\n", "print(os)\n"]
    train_ids = np.concatenate([np.append(tok.encode(t), tok.eos_id) for t in train])
    eval_ids = np.concatenate([np.append(tok.encode(t), tok.eos_id) for t in held_out])
    counts = np.bincount(train_ids, minlength=tok.vocab_size)
    expected = -np.mean(
        [math.log((counts[t] + 1) / (len(train_ids) + tok.vocab_size)) for t in eval_ids]
    )
    assert math.isclose(unigram_loss(tok, train, held_out), expected, rel_tol=1e-9)


def test_unseen_tokens_cost_log_of_smoothed_mass(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    # A one-token eval document whose token and EOS never occur in the (empty) train set: both
    # have probability 1 / V, so the loss is exactly log V.
    assert math.isclose(unigram_loss(tok, [], ["x"]), math.log(tok.vocab_size), rel_tol=1e-9)


def test_in_domain_text_beats_uniform(small_tokenizer: Tokenizer):
    tok = small_tokenizer
    text = "for i in range(10):\n    print(i)\n"
    loss = unigram_loss(tok, [text] * 20, [text])
    assert loss < math.log(tok.vocab_size) - 1.0
