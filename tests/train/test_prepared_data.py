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

from data.prepare_job import prepare_corpus
from data.sentencepiece_tokenizer import train_tokenizer
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
    assert "only --objective=clm" in _refused(cfg.replace(objective="mlm", preset="tiny_bert"))
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
