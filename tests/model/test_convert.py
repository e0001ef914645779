"""model.convert against transformers on CPU: imported models give HF's logits (1e-4) and greedy
tokens; HF -> ours -> HF and ours -> HF -> ours are bit-identical; sharded and bfloat16
checkpoints; our presets export to classes transformers loads without missing keys."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as hf
from flax import traverse_util
from safetensors import safe_open

from infer.engine import engine, seq2seq
from infer.engine.load import load
from model import sharding
from model.config import get_preset
from model.convert import export_hf, import_hf, write_model_dir
from model.family import build_model, init_inputs
from tests.model.hf_models import CASES, both_logits, build, tokens

HF_CLASSES = {"decoder": {"rope": hf.LlamaForCausalLM, "learned": hf.GPT2LMHeadModel},
              "encoder": hf.BertForPreTraining, "encoder_decoder": hf.T5ForConditionalGeneration}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """name -> (HF model, its directory, our converted directory), built once per name."""
    cache = {}

    def get(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            model = build(name)
            model.save_pretrained(root / "hf")
            summary = import_hf(str(root / "hf"), str(root / "ours"))
            assert summary["unused_tensors"] == [], summary
            cache[name] = (model, root / "hf", root / "ours")
        return cache[name]
    return get


def _tensors(directory) -> dict[str, np.ndarray]:
    out = {}
    for name in sorted(os.listdir(directory)):
        if name.endswith(".safetensors"):
            with safe_open(str(directory / name), framework="numpy") as f:
                out.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_imported_logits_equal_transformers(converted, name):
    theirs, _, ours_dir = converted(name)
    for output, ours, reference in both_logits(name, theirs, load(str(ours_dir))):
        assert ours.shape == reference.shape, output
        np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0, err_msg=output)


@pytest.mark.parametrize("name", sorted(CASES))
def test_hf_ours_hf_is_bit_identical(converted, name, tmp_path):
    _, hf_dir, ours_dir = converted(name)
    export_hf(str(ours_dir), str(tmp_path / "back"))
    original, back = _tensors(hf_dir), _tensors(tmp_path / "back")
    assert sorted(back) == sorted(original)
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert back[key].tobytes() == tensor.tobytes(), key


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa_tied", "llama_mqa"])
def test_greedy_generation_equals_transformers(converted, name):
    theirs, _, ours_dir = converted(name)
    loaded = load(str(ours_dir))
    for prompt in ([5, 17, 3, 42, 9], [7]):
        with torch.no_grad():
            out = theirs.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                                  pad_token_id=0)[0, len(prompt):].tolist()
        ours = engine.generate(loaded, [prompt], max_new_tokens=12)[0]
        assert ours[:len(out)] == out  # HF stops early if it meets its EOS id


@pytest.mark.parametrize("name", ["t5_v1_0", "t5_v1_1"])
def test_seq2seq_greedy_equals_transformers(converted, name):
    theirs, _, ours_dir = converted(name)
    loaded = load(str(ours_dir))
    assert loaded.token_ids["decoder_start_token_id"] == 0  # T5 starts from its pad id
    for source in tokens(theirs.config.vocab_size, batch=2, length=9, seed=4).tolist():
        with torch.no_grad():
            out = theirs.generate(torch.tensor([source]), max_new_tokens=10, do_sample=False,
                                  decoder_start_token_id=0, eos_token_id=None,
                                  min_new_tokens=10,
                                  # HF's cache assumes num_decoder_layers == num_layers
                                  use_cache=False)[0, 1:].tolist()
        assert seq2seq.generate(loaded, [source], 10)[0] == out


def _our_model_dir(preset: str, path, seed: int = 1) -> dict[str, np.ndarray]:
    cfg = get_preset(preset)
    params = sharding.unbox(build_model(cfg).init(jax.random.key(seed), *init_inputs(cfg)))
    flat = {k: np.asarray(v) for k, v in
            traverse_util.flatten_dict(params["params"], sep="/").items()}
    os.makedirs(path)
    write_model_dir(str(path), cfg, flat, {})
    return flat


@pytest.mark.parametrize("preset", ["tiny_gpt", "tiny_llama", "tiny_bert", "tiny_t5"])
def test_ours_hf_ours_is_bit_identical_and_loads_cleanly(preset, tmp_path):
    before = _our_model_dir(preset, tmp_path / "ours")
    export_hf(str(tmp_path / "ours"), str(tmp_path / "hf"))
    cfg = get_preset(preset)
    cls = HF_CLASSES[cfg.family]
    cls = cls[cfg.positions] if isinstance(cls, dict) else cls
    theirs, info = cls.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(info.values()), info  # no missing / unexpected / mismatched keys
    import_hf(str(tmp_path / "hf"), str(tmp_path / "again"))
    loaded = load(str(tmp_path / "again"))
    after = traverse_util.flatten_dict(jax.device_get(loaded.params["params"]), sep="/")
    assert sorted(after) == sorted(before)
    # A from-scratch T5 scales its logits; HF T5 holds that factor in the query weights, so the
    # import (unscaled, as every T5 checkpoint) has queries times head_dim**-0.5: exactly, a
    # power of two at head_dim 16.
    fold = cfg.resolved_head_dim ** -0.5 if cfg.positions == "relative" else 1.0
    assert fold in (1.0, 0.25) and loaded.config.scale_attention == (fold == 1.0)
    for key, value in before.items():
        want = value * np.float32(fold) if key.endswith("query_kernel") else value
        assert after[key].dtype == value.dtype and after[key].tobytes() == want.tobytes(), key
    ids = tokens(cfg.vocab_size, length=9)
    with torch.no_grad():
        if cfg.family == "encoder_decoder":
            reference = theirs(input_ids=torch.tensor(ids), decoder_input_ids=torch.tensor(ids))
            ours = loaded.model.apply(loaded.params, jnp.asarray(ids), jnp.asarray(ids))
        else:
            reference = theirs(torch.tensor(ids))
            ours = loaded.model.apply(loaded.params, jnp.asarray(ids))
    reference = (reference.prediction_logits if cfg.family == "encoder" else reference.logits)
    ours = ours["logits"] if isinstance(ours, dict) else ours
    np.testing.assert_allclose(np.asarray(ours), reference.numpy(), atol=1e-4, rtol=0)


def test_sharded_export_and_import(converted, tmp_path):
    theirs, _, ours_dir = converted("llama_mqa")
    summary = export_hf(str(ours_dir), str(tmp_path / "hf"), max_shard_bytes=20_000)
    assert len(summary["files"]) > 2 and summary["files"][-1] == "model.safetensors.index.json"
    reloaded = hf.LlamaForCausalLM.from_pretrained(tmp_path / "hf")
    ids = torch.tensor(tokens(theirs.config.vocab_size))
    with torch.no_grad():
        np.testing.assert_array_equal(reloaded(ids).logits.numpy(), theirs(ids).logits.numpy())
    import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
    (_, ours, reference), = both_logits("llama_mqa", theirs, load(str(tmp_path / "ours")))
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_keeps_its_dtype_both_ways(tmp_path):
    build("llama_gqa_tied").to(torch.bfloat16).save_pretrained(tmp_path / "hf")
    summary = import_hf(str(tmp_path / "hf"), str(tmp_path / "ours"))
    assert summary["dtype"] == "bfloat16"
    export_hf(str(tmp_path / "ours"), str(tmp_path / "back"))
    original, back = _tensors(tmp_path / "hf"), _tensors(tmp_path / "back")
    assert sorted(back) == sorted(original)
    assert all(back[k].dtype == original[k].dtype and back[k].tobytes() == original[k].tobytes()
               for k in original)

