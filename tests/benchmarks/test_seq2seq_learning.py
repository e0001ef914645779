"""benchmarks/seq2seq_learning.py's pieces on a CI budget: a tiny encoder-decoder must learn the
reverse-and-rename task (so it reads its source), scored like the benchmark scores it."""

import pytest

from benchmarks import learning_run as lr
from benchmarks import reverse_task as rt
from runtime.errors import UserError

SIZES = {"num_layers": 2, "d_model": 64, "num_heads": 4, "mlp_dim": 256}


def test_task_is_a_deterministic_function_of_the_source():
    task = rt.reverse_task(400, 50, symbols=8, min_len=3, max_len=6, seed=0)
    assert len(task.train) == 350 and len(task.eval) == 50
    assert not {s for s, _ in task.train} & {s for s, _ in task.eval}
    rename = {}
    for source, target in task.train + task.eval:
        assert len(source) == len(target)
        for s, t in zip(reversed(source), target, strict=True):
            assert rename.setdefault(s, t) == t  # one fixed renaming of symbols
    assert sorted(rename.values()) == sorted(rename)  # a permutation
    assert task == rt.reverse_task(400, 50, symbols=8, min_len=3, max_len=6, seed=0)


@pytest.fixture(scope="module")
def task():
    return rt.reverse_task(3000, 64, symbols=8, min_len=3, max_len=6, seed=0)


def _train(spec: str, task, sizes=SIZES) -> dict:
    variant = lr.parse_variant(spec)
    return lr.train_variant(variant, lr.model_config(variant, sizes, task), task, steps=300,
                            batch_size=32, warmup_steps=30, seed=0, probe_steps=(0,))


@pytest.fixture(scope="module")
def t5_run(task):
    return _train("tiny_t5@3e-3", task)


def test_tiny_t5_learns_to_reverse_and_reads_its_source(task, t5_run):
    run = t5_run
    blind = lr.source_blind_baseline(task)
    assert run["exact_match"] >= 0.8, run["examples"]
    assert run["bleu"] > 90 > blind["constant_bleu"] + 50
    assert run["source_gap"] > 2.0  # nats a token: the loss needs the true source
    assert run["eval_loss"] < 0.3 < blind["uniform_symbol_loss"]
    probe = run["probes"]["0"]
    assert all(v > 0 for v in probe["grad_norm"].values())
    assert any("cross_attention/logit_std" in k for k in probe["attention"])


def test_encoder_decoder_does_as_well_as_a_decoder_of_its_size(task, t5_run):
    """Parity: the decoder-only model of about the same size (5 layers ~ 2 + 2 with cross
    attention, as benchmarks/seq2seq_learning.py sizes it) reads `source <sep> target` rows of
    the same pairs for the same steps; the encoder-decoder must match its exact match."""
    decoder = _train("tiny_llama@3e-3+num_layers=5+num_kv_heads=4", task)
    assert 0.8 < decoder["params"] / t5_run["params"] < 1.25
    assert decoder["source_gap"] > 2.0  # the decoder-only side learns the task too
    assert t5_run["exact_match"] >= decoder["exact_match"] - 0.05, (t5_run["exact_match"],
                                                                    decoder["exact_match"])


def test_bad_variant_is_one_clear_error():
    with pytest.raises(UserError, match="preset@learning_rate"):
        lr.parse_variant("tiny_t5@fast")
