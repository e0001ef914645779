"""infer.generate and infer.score on an encoder-decoder workdir (config.json, tokenizer, an orbax
checkpoint of random params laid out as training saves them): the JSON and logits equal the
engine and the model; bad input is one line, exit 2, nothing written. Also the encoder family's
MLM logits from infer.score."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data.sentencepiece_tokenizer import train_tokenizer
from data.seq2seq_text import decode_text
from infer.engine import beam, seq2seq
from infer.engine.load import Loaded, load
from infer.score import score
from model import sharding
from model.config import get_preset
from model.family import build_model, init_inputs
from train.checkpoint import Checkpointer

WORDS = ["source", "target", "encoder", "decoder", "token", "beam", "search", "length",
         "penalty", "model", "cache", "attention", "layer", "sample", "greedy", "the", "of",
         "and", "to", "in", "is"]


@pytest.fixture(scope="session")
def seq2seq_workdir(tmp_path_factory):
    """What `python -m train` leaves in a workdir, without training: config.json (only "model"
    is read), tokenizer.model, checkpoints/<step>/state with {"params": ...}."""
    workdir = tmp_path_factory.mktemp("seq2seq")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 12)) + "." for _ in range(400)]
    tok = train_tokenizer(texts, 320, str(workdir / "tokenizer.model"))
    cfg = get_preset("tiny_t5").replace(vocab_size=tok.vocab_size)
    (workdir / "config.json").write_text(json.dumps({"model": cfg.to_dict()}))
    params = jax.jit(build_model(cfg).init)(jax.random.key(0), *init_inputs(cfg))
    checkpointer = Checkpointer(str(workdir))
    checkpointer.save(1, {"params": sharding.unbox(params)["params"]}, {}, {})
    checkpointer.close()
    return str(workdir)


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=300, check=False)


def test_generate_writes_the_engine_output(seq2seq_workdir, tmp_path):
    out = tmp_path / "gen.json"
    result = _cli("infer.generate", f"--checkpoint={seq2seq_workdir}", "--prompt=beam search",
                  "--max_new_tokens=6", f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    assert set(record) == {"prompt_tokens", "tokens", "text"}
    loaded = load(seq2seq_workdir)
    tok = loaded.tokenizer
    source = tok.encode(" beam search").tolist() + [tok.eos_id]  # as data/seq2seq.py encodes
    assert record["prompt_tokens"] == [source]
    assert record["tokens"] == seq2seq.generate(loaded, [source], 6, eos_id=tok.eos_id)
    assert record["text"] == [decode_text(tok, record["tokens"][0])]
    assert result.stdout == record["text"][0] + "\n"  # streamed: the target only


def test_generate_beam_search_prints_the_best(seq2seq_workdir, tmp_path):
    (tmp_path / "sources.txt").write_text("the model\nlength penalty of the beam\n")
    out = tmp_path / "gen.json"
    result = _cli("infer.generate", f"--checkpoint={seq2seq_workdir}",
                  f"--batch_file={tmp_path}/sources.txt", "--max_new_tokens=5",
                  "--num_beams=3", "--length_penalty=0.6", f"--json={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(out.read_text())
    loaded = load(seq2seq_workdir)
    beams = seq2seq.beam_search(loaded, record["prompt_tokens"], 5, 3, 0.6,
                                loaded.tokenizer.eos_id)
    assert record["tokens"] == beam.best_rows(beams, loaded.tokenizer.eos_id)[0]
    assert len(record["text"]) == 2 and f"-> {record['text'][1]}\n" in result.stdout


def test_score_writes_the_decoder_logits(seq2seq_workdir, tmp_path):
    rng = np.random.default_rng(1)
    loaded = load(seq2seq_workdir)
    vocab = loaded.config.vocab_size
    source, decoder = rng.integers(0, vocab, (2, 7)), rng.integers(0, vocab, (2, 5))
    np.save(tmp_path / "src.npy", source)
    np.save(tmp_path / "dec.npy", decoder)
    out = tmp_path / "logits.npy"
    result = _cli("infer.score", f"--checkpoint={seq2seq_workdir}",
                  f"--tokens={tmp_path}/src.npy", f"--decoder_tokens={tmp_path}/dec.npy",
                  f"--out={out}")
    assert result.returncode == 0, result.stderr[-2000:]
    logits = np.load(out)
    assert logits.dtype == np.float32 and logits.shape == (2, 5, vocab)
    expected = jax.jit(loaded.model.apply)(loaded.params, source.astype(np.int32),
                                           decoder.astype(np.int32))
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_score_of_an_encoder_is_its_mlm_logits():
    cfg = get_preset("tiny_bert")
    model = build_model(cfg)
    params = sharding.unbox(jax.jit(model.init)(jax.random.key(0), *init_inputs(cfg)))
    tokens = np.random.default_rng(2).integers(0, cfg.vocab_size, (2, 9)).astype(np.int32)
    got = score(Loaded(cfg, model, params, sharding.make_mesh(""), None), tokens)
    expected = jax.jit(model.apply)(params, jnp.asarray(tokens))["logits"]
    assert got.dtype == np.float32 and got.shape == (2, 9, cfg.vocab_size)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("module, args, message", [
    ("infer.score", ["--tokens=SRC"], "--decoder_tokens=D.npy"),
    ("infer.score", ["--tokens=SRC", "--decoder_tokens=BIG"], "--decoder_tokens=/"),
    ("infer.generate", ["--prompt=x", "--num_beams=0"], "--num_beams must be >= 1"),
    ("infer.generate", ["--prompt=x", "--length_penalty=nan"], "--length_penalty"),
    ("infer.generate", ["--prompt=x", "--num_beams=2", "--temperature=0.5"], "deterministic"),
])
def test_bad_input_is_one_line_exit_2(seq2seq_workdir, tmp_path, module, args, message):
    np.save(tmp_path / "src.npy", np.ones((2, 4), np.int32))
    np.save(tmp_path / "big.npy", np.full((2, 4), 10_000, np.int32))
    out = tmp_path / ("o.npy" if module == "infer.score" else "o.json")
    flag = "--out" if module == "infer.score" else "--json"
    args = [a.replace("SRC", f"{tmp_path}/src.npy").replace("BIG", f"{tmp_path}/big.npy")
            for a in args]
    result = _cli(module, f"--checkpoint={seq2seq_workdir}", f"{flag}={out}", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(out)


def test_decoder_only_refuses_beams_and_decoder_tokens(workdir, tmp_path):
    np.save(tmp_path / "src.npy", np.ones((2, 4), np.int32))
    for module, args, message in [
        ("infer.generate", ["--prompt=x", "--num_beams=2"], "encoder-decoder"),
        ("infer.score", [f"--tokens={tmp_path}/src.npy", f"--decoder_tokens={tmp_path}/src.npy",
                         f"--out={tmp_path}/o.npy"], "only for encoder-decoder"),
    ]:
        result = _cli(module, f"--checkpoint={workdir}", *args)
        assert result.returncode == 2, result.stderr[-2000:]
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], result.stderr
    assert not os.path.exists(tmp_path / "o.npy")
