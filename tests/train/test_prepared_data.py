"""Training on a directory of python -m data.prepare: the loop runs on its shards, resume is
bit-exact, and a damaged shard or another tokenizer is refused before anything is written."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from data.options import StreamOptions
from data.prepare_job import prepare_corpus
from data.prepared_dataset import load_prepared, prepared_dataset
from data.sentencepiece_tokenizer import BERT_SYMBOLS, train_tokenizer
from data.span import SENTINELS
from model.family import build_model
from runtime.errors import UserError
from tests.data.generated_corpus import VOCAB, documents_in_order, write_corpus
from train.checkpoint import Checkpointer
from train.flags import TrainConfig
from train.loop import train
from train.optimizer import make_optimizer
from train.prepare import prepare
from train.state import abstract_state

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = TrainConfig(preset="tiny", seq_len=16, batch_size=8, learning_rate=3e-3, warmup_steps=1,
                   schedule="constant", log_every=1, eval_every=4, eval_batches=2, save_every=2)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    corpus = write_corpus(str(tmp_path_factory.mktemp("corpus")))
    out = str(tmp_path_factory.mktemp("prepared") / "out")
    prepare_corpus(corpus, out, vocab_size=VOCAB, eval_fraction=0.1, shard_mb=0.004)
    return out


@pytest.fixture(scope="module")
def prepared_symbols(tmp_path_factory):
    """Prepared with a tokenizer that has BERT's pieces and T5's sentinels."""
    corpus = write_corpus(str(tmp_path_factory.mktemp("corpus")))
    out = str(tmp_path_factory.mktemp("prepared") / "out")
    prepare_corpus(corpus, out, vocab_size=VOCAB + 128, eval_fraction=0.1, shard_mb=0.004,
                   extra_symbols=BERT_SYMBOLS + SENTINELS)
    return out


def _losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [m["loss"] for m in map(json.loads, f) if "loss" in m]


def _final_state(cfg):
    run = prepare(cfg)
    tx, _ = make_optimizer(cfg)
    abstract, _ = abstract_state(build_model(run.model), tx, cfg.seed, run.mesh)
    checkpointer = Checkpointer(cfg.workdir)
    state, data_state, _ = checkpointer.restore(checkpointer.latest_step(), abstract)
    checkpointer.close()
    return jax.device_get(state), data_state


def test_resume_on_prepared_data_is_bit_exact(prepared, tmp_path):
    straight = BASE.replace(data=prepared, workdir=str(tmp_path / "straight"), steps=4)
    train(straight)
    halves = BASE.replace(data=prepared, workdir=str(tmp_path / "halves"), steps=2)
    train(halves)
    train(halves.replace(steps=4))
    assert len(_losses(straight.workdir)) == 4
    assert _losses(straight.workdir) == _losses(halves.workdir)
    state_a, data_a = _final_state(straight)
    state_b, data_b = _final_state(halves.replace(steps=4))
    assert data_a == data_b
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b), strict=True):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(straight.workdir, "tokenizer.model"), "rb") as a, \
            open(os.path.join(prepared, "tokenizer.model"), "rb") as b:
        assert a.read() == b.read()  # the run reads the prepared tokenizer


def test_batches_have_the_packed_keys(prepared, tmp_path):
    run = prepare(BASE.replace(data=prepared, workdir=str(tmp_path / "w"), steps=1))
    batch = next(iter(run.train_data))
    assert set(batch) == {"tokens", "segment_ids", "positions"}
    assert all(v.shape == (8, 17) and v.dtype == np.int32 for v in batch.values())
    assert not os.path.exists(tmp_path / "w")


def _refused(cfg):
    with pytest.raises(UserError) as info:
        prepare(cfg)
    assert not os.path.exists(cfg.workdir)
    return str(info.value)


def test_bad_prepared_data_is_refused(prepared, tmp_path):
    cfg = BASE.replace(data=prepared, workdir=str(tmp_path / "w"), steps=1)
    texts = documents_in_order(write_corpus(str(tmp_path / "c"), seed=1))
    other = train_tokenizer(texts, VOCAB + 8, str(tmp_path / "o.model"))
    assert "not the tokenizer" in _refused(cfg.replace(tokenizer=other.path))
    assert "lacks the pieces --objective=mlm needs; prepare it again with python -m data.prepare " \
        "--bert_symbols" in _refused(cfg.replace(objective="mlm", preset="tiny_bert"))
    assert "--objective=mlm_nsp needs the raw files" in _refused(
        cfg.replace(objective="mlm_nsp", preset="tiny_bert"))
    damaged = str(tmp_path / "damaged")
    shutil.copytree(prepared, damaged)
    with open(os.path.join(damaged, "train-00000.tokens"), "r+b") as f:
        f.seek(4)
        byte = f.read(1)
        f.seek(4)
        f.write(bytes([byte[0] ^ 0x40]))
    assert "checksum" in _refused(cfg.replace(data=damaged))
    os.remove(os.path.join(damaged, "eval-00001.tokens"))
    assert "lacks" in _refused(cfg.replace(data=damaged))
    os.rename(os.path.join(damaged, "manifest.json"), os.path.join(damaged, "progress.json"))
    assert "unfinished preparation" in _refused(cfg.replace(data=damaged))


def test_cli_refuses_a_truncated_shard_in_one_line(prepared, tmp_path):
    damaged = str(tmp_path / "damaged")
    shutil.copytree(prepared, damaged)
    with open(os.path.join(damaged, "eval-00000.tokens"), "r+b") as f:
        f.truncate(2)
    workdir = str(tmp_path / "w")
    result = subprocess.run([sys.executable, "-m", "train", f"--data={damaged}",
                             f"--workdir={workdir}", "--preset=tiny", "--steps=1"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and lines[-1].startswith("error: shard file"), lines[-3:]
    assert "truncated" in lines[-1] and not os.path.exists(workdir)


def _windows(directory, length, batches):
    """The clm rows of the prepared train split in the order the runs below read them."""
    options = StreamOptions(batch_size=8, seed=0, shuffle=True, repeat=True)
    it = iter(prepared_dataset(load_prepared(directory), "train", options, length=length))
    return [next(it) for _ in range(batches)]


def test_mlm_reads_the_prepared_windows_and_masks_them(prepared_symbols, tmp_path):
    cfg = BASE.replace(data=prepared_symbols, workdir=str(tmp_path / "w"), steps=1,
                       objective="mlm", preset="tiny_bert")
    run = prepare(cfg)
    it = iter(run.train_data)
    for rows in _windows(prepared_symbols, cfg.seq_len, 3):
        batch = next(it)
        weights = batch["weights"].astype(bool)
        assert weights.any() and not weights[rows["segment_ids"] == 0].any()
        # Unmasked positions are the window; masked ones predict exactly its tokens there.
        original = np.where(weights, batch["targets"], batch["tokens"])
        np.testing.assert_array_equal(original, rows["tokens"])
        np.testing.assert_array_equal(batch["segment_ids"], rows["segment_ids"])
        np.testing.assert_array_equal(batch["positions"], rows["positions"])
        assert 0.05 < weights.sum() / (rows["segment_ids"] > 0).sum() < 0.3


def test_span_corrupts_the_prepared_windows(prepared_symbols, tmp_path):
    cfg = BASE.replace(data=prepared_symbols, workdir=str(tmp_path / "w"), steps=1,
                       objective="span", preset="tiny_t5")
    run = prepare(cfg)
    sentinels = {run.tokenizer.piece_id(p) for p in SENTINELS}
    it = iter(run.train_data)
    restored_tokens = 0
    for rows in _windows(prepared_symbols, _raw_length(cfg), 2):
        batch = next(it)
        for r in range(8):
            enc = batch["encoder_tokens"][r][batch["encoder_segment_ids"][r] > 0][:-1]
            dec = batch["decoder_targets"][r][batch["decoder_weights"][r] > 0][:-1]
            # Re-insert every span after its sentinel: the window comes back, token for token.
            spans, current = {}, None
            for t in dec:
                if int(t) in sentinels:
                    current = int(t)
                    spans[current] = []
                else:
                    spans[current].append(int(t))
            restored = [x for t in enc for x in (spans[int(t)] if int(t) in sentinels else [int(t)])]
            raw = rows["tokens"][r][rows["segment_ids"][r] > 0]
            assert restored == raw.tolist()
            restored_tokens += len(restored)
    assert restored_tokens == 2 * 8 * _raw_length(cfg)  # full rows: documents run across them


def _raw_length(cfg):
    from data.span import raw_length
    return raw_length(cfg.seq_len, cfg.noise_density, cfg.mean_span_length)[0]


def test_a_run_whose_position_counted_rows_is_not_resumed(prepared, tmp_path):
    cfg = BASE.replace(data=prepared, workdir=str(tmp_path / "w"), steps=2)
    train(cfg)
    path = os.path.join(cfg.workdir, "config.json")
    with open(path) as f:
        config = json.load(f)
    assert config["corpus"]["stream"] == "windows"
    del config["corpus"]["stream"]  # as the meshlm before batch-counted positions wrote it
    with open(path, "w") as f:
        json.dump(config, f)
    with pytest.raises(UserError, match="counted by row"):
        prepare(cfg.replace(steps=4))
