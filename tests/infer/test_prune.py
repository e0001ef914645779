"""infer.prune: the kept heads and channels are the highest-scoring ones; a pruned model is a
smaller dense model whose logits equal the original's with the removed heads and channels zeroed
(every family, MHA / GQA / MQA, scanned or not); the command writes a model dir that loads and
fine-tunes; bad inputs are one line, exit 2, nothing written."""

import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import traverse_util

from infer.compress.prune_params import count, prune, targets
from infer.engine.load import load
from model.abstract import param_shapes
from model.config import ModelConfig, get_preset
from model.family import build_model

TOKENS = np.random.default_rng(0).integers(0, 512, (2, 12)).astype(np.int32)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "infer.prune", *args], capture_output=True,
                          text=True, timeout=300, check=False)


def _masked(params: dict, pruned) -> dict:
    """The original params with every removed head's out_kernel slice and every removed MLP
    channel's wo row zeroed: what they add to the residual stream is then exactly nothing."""
    out = dict(params)
    kept = [(f"{m}/out_kernel", 3, k) for m, k in pruned.heads.items()]
    kept += [(f"{m}/wo/kernel", 2, k) for m, k in pruned.channels.items()]
    for path, ndim, index in kept:
        array = np.array(out[path])
        layers = array.reshape(-1, *array.shape[array.ndim - ndim:])
        for layer, keep in zip(layers, index, strict=True):
            layer[np.setdiff1d(np.arange(layer.shape[0]), keep)] = 0.0
        out[path] = layers.reshape(array.shape)
    return out


@functools.cache
def _forward(cfg: ModelConfig):
    return jax.jit(build_model(cfg).apply)  # one compile per config


def _apply(cfg: ModelConfig, params: dict):
    args = (TOKENS, TOKENS[:, :7]) if cfg.family == "encoder_decoder" else (TOKENS,)
    return _forward(cfg)({"params": traverse_util.unflatten_dict(params, sep="/")}, *args)


def _random_params(cfg: ModelConfig) -> dict:
    """Random params of every shape (faster than init, and with non-zero biases, so a bias
    sliced along the wrong axis would show); norm scales near 1."""
    rng = np.random.default_rng(1)
    return {path: (1.0 + 0.1 * rng.standard_normal(shape) if path.endswith("scale")
                   else 0.05 * rng.standard_normal(shape)).astype(np.float32)
            for path, shape in param_shapes(cfg).items()}


# -- which heads and channels go ---------------------------------------------------------------


def _hand_made(heads: int, kv_heads: int, head_scale: np.ndarray, mlp_scale: np.ndarray):
    """A 2-layer model whose head h of layer l has all weights head_scale[l, h] (and likewise
    its MLP channels), so the magnitude ranking is known by construction."""
    cfg = get_preset("tiny_gpt").replace(num_heads=heads, num_kv_heads=kv_heads, mlp_dim=8)
    params = {path: np.ones(shape, np.float32) for path, shape in
              {"layers/attention/query_kernel": (2, 64, heads, 16),
               "layers/attention/key_kernel": (2, 64, kv_heads, 16),
               "layers/attention/value_kernel": (2, 64, kv_heads, 16),
               "layers/attention/out_kernel": (2, heads, 16, 64),
               "layers/mlp/wi/kernel": (2, 64, 8), "layers/mlp/wo/kernel": (2, 8, 64)}.items()}
    params["layers/attention/query_kernel"] *= head_scale[:, None, :, None]
    params["layers/attention/out_kernel"] *= head_scale[:, :, None, None]
    params["layers/mlp/wi/kernel"] *= mlp_scale[:, None, :]
    params["layers/mlp/wo/kernel"] *= mlp_scale[:, :, None]
    return cfg, params


def test_the_highest_scoring_heads_and_channels_are_kept():
    mlp_scale = np.array([[0, 5, 1, 0, 4, 3, 0, 2], [7, 0, 0, 1, 0, 2, 0, 3]], np.float32)
    # MHA: the best 2 of 4 heads in each layer (kv heads go with them).
    cfg, params = _hand_made(4, 4, np.array([[1, 4, 0, 3], [0, 0, 2, 1]], np.float32), mlp_scale)
    pruned, goal = prune(cfg, params, heads=0.5, mlp=0.5)
    np.testing.assert_array_equal(pruned.heads["layers/attention"], [[1, 3], [2, 3]])
    np.testing.assert_array_equal(pruned.channels["layers/mlp"], [[1, 4, 5, 7], [0, 3, 5, 7]])
    assert (goal.heads, goal.kv_heads, goal.mlp) == (2, 2, 4)
    assert pruned.params["layers/attention/key_kernel"].shape == (2, 64, 2, 16)
    np.testing.assert_array_equal(pruned.params["layers/mlp/wo/kernel"][1, :, 0], [7, 1, 2, 3])
    # GQA (2 groups of 2): the better head of each group, even where the two best heads of a
    # layer share a group (layer 0: heads 0 and 1); kv heads stay.
    cfg, params = _hand_made(4, 2, np.array([[3, 2, 0, 1], [0, 1, 5, 0]], np.float32), mlp_scale)
    pruned, goal = prune(cfg, params, heads=0.5, mlp=0.5)
    np.testing.assert_array_equal(pruned.heads["layers/attention"], [[0, 3], [1, 2]])
    assert (goal.heads, goal.kv_heads) == (2, 2)
    assert pruned.params["layers/attention/key_kernel"].shape == (2, 64, 2, 16)
    np.testing.assert_array_equal(pruned.params["layers/attention/out_kernel"][0, :, 0, 0], [3, 1])
    # MQA (one group of 4): the best 2 of the layer, the one kv head stays.
    cfg, params = _hand_made(4, 1, np.array([[3, 2, 0, 1], [0, 1, 5, 0]], np.float32), mlp_scale)
    pruned, goal = prune(cfg, params, heads=0.5, mlp=0.5)
    np.testing.assert_array_equal(pruned.heads["layers/attention"], [[0, 1], [1, 2]])
    assert (goal.heads, goal.kv_heads) == (2, 1)


def test_fractions_round_to_what_the_groups_allow():
    tiny = get_preset("tiny")  # 4 query heads in 2 groups
    goal = targets(tiny, 0.25, 0.3)
    assert (goal.heads, goal.kv_heads, goal.mlp) == (2, 2, 90)  # 1 of each group of 2 goes
    assert len(goal.notes) == 2 and "1 of each group" in goal.notes[0]
    assert targets(tiny, 0.9, 0.0).heads == 2  # a group keeps at least one head
    assert targets(tiny.replace(num_heads=8, num_kv_heads=2), 0.5, 0.0).heads == 4
    assert targets(get_preset("tiny_gpt"), 0.25, 0.5).notes == ()  # 1 of 4 heads, 128 of 256


# -- slicing is removing: logits equal the masked original ---------------------------------------


# GQA with groups of 2, scanned, is the trained workdir's model (tested below).
@pytest.mark.parametrize("preset,overrides", [
    # GQA, groups of 4, SwiGLU, rope, layers unrolled (a module per layer).
    ("tiny_llama", {"num_heads": 8, "num_kv_heads": 2, "scan_layers": False}),
    # Encoder, MHA with biases (key/value heads go with their query heads), post-norm.
    ("tiny_bert", {}),
    # Encoder-decoder: cross-attention, a relative bias table per stack, GeGLU.
    ("tiny_t5", {}),
])
def test_pruned_logits_equal_the_masked_original(preset, overrides):
    cfg = get_preset(preset).replace(**overrides)
    params = _random_params(cfg)
    pruned, _ = prune(cfg, params, heads=0.5, mlp=0.5)
    assert pruned.config.num_heads == cfg.num_heads // 2
    assert pruned.config.head_dim == cfg.resolved_head_dim
    assert count(pruned.params) == pruned.config.num_params() < count(params)
    got, want = _apply(pruned.config, pruned.params), _apply(cfg, _masked(params, pruned))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), got, want)
    # The masking matters: the unmasked original differs.
    unmasked = jax.tree.leaves(_apply(cfg, params))
    assert max(np.abs(a - b).max() for a, b in zip(jax.tree.leaves(got), unmasked, strict=True)) > 1e-3
    if cfg.positions == "relative":  # one head set per stack, as its shared bias table needs
        for module, kept in pruned.heads.items():
            if module.endswith("/attention"):
                assert (kept == kept[0]).all()


# -- the command on a trained workdir ------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_dir(workdir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned") / "model"
    result = _cli(f"--checkpoint={workdir}", f"--out={out}", "--heads=0.5", "--mlp=0.5",
                  "--finetune_steps=3", "--eval_batches=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result.stdout


def test_the_command_writes_a_smaller_model(pruned_dir, workdir):
    out, _ = pruned_dir
    config = json.loads((out / "config.json").read_text())
    assert (config["model"]["num_heads"], config["model"]["num_kv_heads"],
            config["model"]["mlp_dim"], config["model"]["head_dim"]) == (2, 2, 64, 16)
    assert config["pruned"]["heads_fraction"] == 0.5 and config["pruned"]["score"] == "magnitude"
    with open(os.path.join(workdir, "tokenizer.model"), "rb") as f:
        assert (out / "tokenizer.model").read_bytes() == f.read()
    original, small = load(workdir), load(str(out))
    before = sum(x.size for x in jax.tree.leaves(original.params))
    after = sum(x.size for x in jax.tree.leaves(small.params))
    assert after < before
    assert config["pruned"]["params"] == {"before": before, "after": after}


def test_the_pruned_model_equals_the_masked_original(pruned_dir, workdir):
    out, _ = pruned_dir
    original, small = load(workdir), load(str(out))
    flat = {k: np.asarray(v) for k, v in
            traverse_util.flatten_dict(original.params["params"], sep="/").items()}
    pruned, _ = prune(original.config, flat, heads=0.5, mlp=0.5)
    record = json.loads((out / "prune.json").read_text())
    assert record["kept_heads"] == {m: k.tolist() for m, k in pruned.heads.items()}
    logits = jax.jit(small.model.apply)(small.params, TOKENS)
    np.testing.assert_allclose(logits, _apply(original.config, _masked(flat, pruned)), atol=2e-5)


def test_the_command_fine_tunes_and_reports_losses(pruned_dir):
    out, stdout = pruned_dir
    record = json.loads((out / "prune.json").read_text())
    losses = {k: record["eval"][k]["eval_loss"] for k in ("unpruned", "pruned", "finetuned")}
    assert all(np.isfinite(v) and v > 0 for v in losses.values()), losses
    assert record["eval"]["finetuned"]["eval_tokens"] == record["eval"]["pruned"]["eval_tokens"]
    assert record["finetune"]["steps"] == 3
    assert "held-out loss: unpruned" in stdout and "3 fine-tune steps" in stdout
    finetuned = json.loads((out / "finetune" / "config.json").read_text())
    assert finetuned["model"]["num_heads"] == 2 and finetuned["flags"]["init_from"] == str(out)
    assert load(str(out / "finetune")).config.mlp_dim == 64


BAD_INPUTS = [
    (["--heads=1.5"], "must be a fraction in [0, 1)"),
    (["--out="], "--out=DIR is required"),
    (["--checkpoint={case}"], "has no config.json"),
    (["--out={existing}"], "exists and is not empty"),
    (["--checkpoint={pruned}", "--finetune_steps=2"], "needs the training flags"),
]


def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, pruned_dir, tmp_path):
    """Every case in its own directory, the commands side by side (each is mostly interpreter
    start-up); a refused command leaves no --out and no staging dir there."""
    runs = []
    for i, (args, message) in enumerate(BAD_INPUTS):
        case = tmp_path / str(i)
        (case / "existing").mkdir(parents=True)
        (case / "existing" / "keep.txt").write_text("mine")
        values = {"case": case, "existing": case / "existing", "pruned": pruned_dir[0]}
        given = {"checkpoint": workdir, "out": case / "out", "heads": 0.5}
        for arg in args:
            name, _, value = arg[2:].partition("=")
            given[name] = value.format(**values)
        command = [sys.executable, "-m", "infer.prune", *(f"--{k}={v}" for k, v in given.items())]
        runs.append((subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True), message, case))
    for process, message, case in runs:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 2, (message, stderr[-2000:])
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and message in lines[0], stderr[-2000:]
        assert os.listdir(case) == ["existing"]
        assert os.listdir(case / "existing") == ["keep.txt"]
