"""The encoder-decoder engine: cached on-device greedy decoding of a padded batch equals the
uncached full forward per source, EOS stops a row, sampling is seeded, BOS comes from the
tokenizer."""

import types

import pytest

from infer.engine import seq2seq
from infer.engine.sampling import Sampling
from tests.infer.seq2seq_models import SOURCES, greedy_reference, random_loaded


@pytest.mark.parametrize("preset", ["tiny_t5", "tiny_transformer"])
def test_cached_greedy_equals_uncached_reference(preset):
    loaded = random_loaded(preset)
    batched = seq2seq.generate(loaded, SOURCES, max_new_tokens=8)
    assert len({tuple(row) for row in batched}) == len(SOURCES)  # the sources matter
    for source, got in zip(SOURCES, batched, strict=True):
        assert got == greedy_reference(loaded, source, 8)


def test_eos_stops_and_is_excluded():
    loaded = random_loaded("tiny_t5")
    free = seq2seq.generate(loaded, SOURCES, max_new_tokens=8)
    stop = free[0][3]
    cut = seq2seq.generate(loaded, SOURCES, max_new_tokens=8, eos_id=stop)
    for row, got in zip(free, cut, strict=True):
        assert got == (row[:row.index(stop)] if stop in row else row)
    assert cut[0] == free[0][:free[0].index(stop)]
    assert cut[0] == greedy_reference(loaded, SOURCES[0], 8, eos_id=stop)


def test_sampling_is_seeded_and_top_1_is_greedy():
    loaded = random_loaded("tiny_t5")
    hot = Sampling(temperature=1.0)
    first = seq2seq.generate(loaded, SOURCES, 8, hot, seed=1)
    assert first == seq2seq.generate(loaded, SOURCES, 8, hot, seed=1)
    assert first != seq2seq.generate(loaded, SOURCES, 8, hot, seed=2)
    assert seq2seq.generate(loaded, SOURCES, 8, Sampling(temperature=1.0, top_k=1), seed=3) == \
        seq2seq.generate(loaded, SOURCES, 8)


def test_streaming_reports_every_step_in_order_and_equals_one_program():
    # Sampled, 20 steps (3 chunks), an EOS that ends some rows early: the chunked streaming loop
    # chooses the tokens of the one-program loop and reports each step once, in order.
    loaded = random_loaded("tiny_t5")
    hot = Sampling(temperature=1.0)
    free = seq2seq.generate(loaded, SOURCES, 20, hot, seed=5)
    eos = free[0][6]
    whole = seq2seq.generate(loaded, SOURCES, 20, hot, seed=5, eos_id=eos)
    seen = []
    streamed = seq2seq.generate(loaded, SOURCES, 20, hot, seed=5, eos_id=eos,
                                on_token=lambda step, tokens, done: seen.append(
                                    (step, tokens.tolist(), done.tolist())))
    assert streamed == whole and len(whole[0]) == free[0].index(eos) < 20
    assert [step for step, _, _ in seen] == list(range(len(seen)))
    for row, ids in enumerate(whole):
        for step, tokens, done in seen:
            assert done[row] == (step >= len(ids))
            if step < len(ids):
                assert tokens[row] == ids[step]


def test_bos_comes_from_the_tokenizer():
    def loaded(tokenizer, **ids):
        return types.SimpleNamespace(tokenizer=tokenizer, token_ids=ids)
    assert seq2seq.start_id_of(loaded(None)) == 2
    assert seq2seq.start_id_of(loaded(types.SimpleNamespace(bos_id=7))) == 7
    assert seq2seq.start_id_of(loaded(types.SimpleNamespace(bos_id=-1))) == 2
    # An imported T5 names its start token (its pad id, 0) in config.json.
    assert seq2seq.start_id_of(loaded(types.SimpleNamespace(bos_id=-1),
                                      decoder_start_token_id=0)) == 0


@pytest.mark.parametrize("sources, new, message", [
    ([[5], []], 4, "at least one token"),
    ([[5]], 0, "must be positive"),
    ([[5]], 1000, "target length"),
    ([[5] * 200], 4, "exceeds the model's context"),
])
def test_bad_requests_are_user_errors(sources, new, message):
    from runtime.errors import UserError

    with pytest.raises(UserError, match=message):
        seq2seq.generate(random_loaded("tiny_t5"), sources, new)
