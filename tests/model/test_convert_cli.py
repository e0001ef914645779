"""`python -m model.convert` as users run it: import a HF model with its tokenizer.json, generate
the same tokens as transformers, fine-tune it with `--init_from`, export the result again; a model
without a tokenizer serves token ids only; bad input is one line, exit 2, nothing written."""

import inspect
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
import torch
import transformers as hf

from infer.engine.load import load
from tests.model.hf_models import build, tokens


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=600, check=False, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def gpt2_with_tokenizer(tmp_path_factory):
    """A HF GPT-2 directory holding a byte-level BPE tokenizer.json, as on the Hub."""
    directory = tmp_path_factory.mktemp("hf_gpt2")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(inspect.getsource(json).splitlines(keepends=True), vocab_size=400,
                            min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    bpe.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}))
    torch.manual_seed(0)
    config = hf.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64,
                           vocab_size=bpe.get_vocab_size(), bos_token_id=0, eos_token_id=0)
    hf.GPT2LMHeadModel(config).eval().save_pretrained(directory)
    return directory


def test_import_generate_fine_tune_export(gpt2_with_tokenizer, tmp_path):
    ours, workdir, back = tmp_path / "ours", tmp_path / "tuned", tmp_path / "back"
    result = _run("model.convert", f"--from_hf={gpt2_with_tokenizer}", f"--out={ours}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "imported GPT2LMHeadModel" in result.stdout and "tokenizer.json" in result.stdout

    # Text in, the same greedy tokens as transformers out, through the imported tokenizer.
    result = _run("infer.generate", f"--checkpoint={ours}", "--prompt=def load(fp",
                  "--max_new_tokens=8", f"--json={tmp_path}/out.json")
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    theirs = hf.GPT2LMHeadModel.from_pretrained(gpt2_with_tokenizer).eval()
    prompt = hf.PreTrainedTokenizerFast(
        tokenizer_file=str(gpt2_with_tokenizer / "tokenizer.json"))("def load(fp")["input_ids"]
    assert out["prompt_tokens"] == [prompt]
    with torch.no_grad():
        expected = theirs.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                   pad_token_id=0)[0, len(prompt):].tolist()
    assert out["tokens"][0][:len(expected)] == expected

    result = _run("train", f"--init_from={ours}", f"--workdir={workdir}", "--steps=3",
                  "--seq_len=32", "--batch_size=8", "--warmup_steps=1", "--eval_every=0",
                  "--save_every=3", "--log_every=1", "--learning_rate=1e-2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (workdir / "tokenizer.json").exists()

    result = _run("model.convert", f"--to_hf={back}", f"--checkpoint={workdir}")
    assert result.returncode == 0, result.stderr[-2000:]
    tuned, info = hf.GPT2LMHeadModel.from_pretrained(back, output_loading_info=True)
    assert not any(info.values()), info
    assert (back / "tokenizer.json").exists()
    ids = tokens(theirs.config.vocab_size)
    loaded = load(str(workdir))
    ours_logits = np.asarray(loaded.model.apply(loaded.params, jnp.asarray(ids)))
    with torch.no_grad():
        np.testing.assert_allclose(ours_logits, tuned(torch.tensor(ids)).logits.numpy(),
                                   atol=1e-4, rtol=0)
        assert np.abs(ours_logits - theirs(torch.tensor(ids)).logits.numpy()).max() > 1e-3


def test_without_tokenizer_token_ids_work_and_text_is_refused(tmp_path):
    build("llama_gqa_tied").save_pretrained(tmp_path / "hf")
    result = _run("model.convert", f"--from_hf={tmp_path}/hf", f"--out={tmp_path}/ours")
    assert result.returncode == 0 and "token-id commands only" in result.stdout, result.stderr
    result = _run("infer.generate", f"--checkpoint={tmp_path}/ours", "--prompt=hi")
    assert result.returncode == 2 and "has no tokenizer" in result.stderr
    np.save(tmp_path / "ids.npy", tokens(64, batch=1, length=5))
    result = _run("infer.score", f"--checkpoint={tmp_path}/ours", f"--tokens={tmp_path}/ids.npy",
                  f"--out={tmp_path}/logits.npy")
    assert result.returncode == 0, result.stderr[-2000:]
    assert np.load(tmp_path / "logits.npy").shape == (1, 5, 64)


def _hf_dir(path, config: dict | None, files: dict[str, bytes] = ()) -> str:
    os.makedirs(path)
    if config is not None:
        (path / "config.json").write_text(json.dumps(config))
    for name, content in dict(files).items():
        (path / name).write_bytes(content)
    return str(path)


GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "n_embd": 32, "n_layer": 1,
        "n_head": 4, "n_positions": 16, "vocab_size": 50}


@pytest.mark.parametrize("case, message", [
    ("neither", "exactly one of --from_hf"),
    ("missing", "is not a directory"),
    ("pickle", "pickle checkpoint"),
    ("mistral", "is not supported; meshlm converts"),
    ("activation", "activation_function='relu' is not supported"),
    ("rope_scaling", "rope scaling 'llama3' is not supported"),
    ("out_not_empty", "is not empty"),
    ("vaswani", "cannot be written as"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, message, tmp_path):
    out = tmp_path / "out"
    if case == "neither":
        args = [f"--out={out}"]
    elif case == "missing":
        args = [f"--from_hf={tmp_path}/nowhere", f"--out={out}"]
    elif case == "pickle":
        args = [f"--from_hf={_hf_dir(tmp_path / 'p', GPT2, {'pytorch_model.bin': b'x'})}",
                f"--out={out}"]
    elif case == "mistral":
        args = [f"--from_hf={_hf_dir(tmp_path / 'm', {'architectures': ['MistralForCausalLM']})}",
                f"--out={out}"]
    elif case == "activation":
        args = [f"--from_hf={_hf_dir(tmp_path / 'a', {**GPT2, 'activation_function': 'relu'})}",
                f"--out={out}"]
    elif case == "rope_scaling":
        llama = {"architectures": ["LlamaForCausalLM"], "hidden_size": 32, "vocab_size": 50,
                 "num_attention_heads": 4, "num_hidden_layers": 1, "intermediate_size": 64,
                 "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}
        args = [f"--from_hf={_hf_dir(tmp_path / 'r', llama)}", f"--out={out}"]
    elif case == "out_not_empty":
        build("gpt2").save_pretrained(tmp_path / "hf")
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args = [f"--from_hf={tmp_path}/hf", f"--out={out}"]
    else:
        from model.config import get_preset
        _hf_dir(tmp_path / "ours", {"model": get_preset("tiny_transformer").to_dict()})
        args = [f"--to_hf={out}", f"--checkpoint={tmp_path}/ours"]
    before = sorted(os.listdir(tmp_path))
    result = _run("model.convert", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == before  # no output, no staging directory left
    if case == "out_not_empty":
        assert os.listdir(out) == ["keep.txt"]
