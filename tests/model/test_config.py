"""ModelConfig for every family: parameter counts, published sizes, old config.json files, and
one-line errors for settings that do not fit a family."""

import dataclasses
import json

import flax.linen as nn
import jax
import pytest

from model.config import PRESETS, ModelConfig, get_preset
from model.family import build_model, init_inputs
from model.store import read_recorded
from runtime.errors import UserError


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_num_params_equals_the_built_model(preset):
    cfg = get_preset(preset).validated()
    shapes = jax.eval_shape(build_model(cfg).init, jax.random.key(0), *init_inputs(cfg))
    leaves = jax.tree.leaves(shapes, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    assert sum(x.value.size for x in leaves) == cfg.num_params()


def test_published_sizes():
    # HF BertForPreTraining (bert-base-uncased) incl. MLM transform, MLM bias and NSP head.
    assert get_preset("bert_base").num_params() == 110_106_428
    assert round(get_preset("bert_large").num_params() / 1e6) == 336
    assert round(get_preset("t5_small").num_params() / 1e6) == 77  # google/t5-v1_1-small
    assert round(get_preset("t5_base").num_params() / 1e6) == 248  # google/t5-v1_1-base
    # Vaswani base written out: 6 encoder layers (attention 4 d^2 + 4 d, ReLU MLP 2 d f + f + d,
    # two LayerNorms 4 d), 6 decoder layers adding cross-attention and its LayerNorm, one shared
    # 32000 x 512 table, no final norms (post-LN).
    d, f = 512, 2048
    attention, mlp, norm = 4 * d * d + 4 * d, 2 * d * f + f + d, 2 * d
    expected = 6 * (attention + mlp + 2 * norm) + 6 * (2 * attention + mlp + 3 * norm) + 32000 * d
    assert get_preset("transformer_base").num_params() == expected == 60_522_496
    assert get_preset("transformer_base").num_params(include_embeddings=False) == (
        expected - 32000 * d)


def test_a_config_json_from_before_the_new_fields_still_loads():
    old = {k: v for k, v in get_preset("tiny").to_dict().items()
           if k in {"family", "vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads",
                    "head_dim", "mlp_dim", "max_len", "norm", "activation", "positions",
                    "use_bias", "tie_embeddings", "norm_eps", "rope_theta", "dtype",
                    "param_dtype", "scan_layers", "remat", "attention"}}
    assert ModelConfig.from_dict(json.loads(json.dumps(old))) == get_preset("tiny")
    for name in ("tiny_bert", "t5_base", "transformer_base"):
        cfg = get_preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("preset,changes,message", [
    ("tiny", {"positions": "relative"}, "relative"),
    ("tiny", {"family": "seq2seq"}, "family"),
    ("tiny", {"num_decoder_layers": 3}, "num_decoder_layers"),
    ("tiny_t5", {"pooler": True}, "pooler"),
    ("tiny_t5", {"type_vocab_size": 2}, "type_vocab_size"),
    ("tiny_transformer", {"d_model": 65, "num_heads": 5}, "even d_model"),
    ("tiny_t5", {"relative_buckets": 7}, "relative_buckets"),
    ("tiny_t5", {"relative_max_distance": 8}, "relative_max_distance"),
    ("tiny_bert", {"num_labels": -1}, "num_labels"),
])
def test_settings_that_do_not_fit_the_family_are_user_errors(preset, changes, message):
    with pytest.raises(UserError, match=message) as error:
        get_preset(preset).replace(**changes)
    assert "\n" not in str(error.value)


def test_decoder_layers_default_to_the_encoder_depth():
    cfg = get_preset("tiny_t5")
    assert cfg.decoder_layers == cfg.num_layers == 2
    assert cfg.replace(num_decoder_layers=3).decoder_layers == 3
    assert dataclasses.replace(get_preset("tiny"), num_layers=5).decoder_layers == 5


def test_a_model_directory_reads_back_and_bad_ones_name_the_flag(tmp_path):
    cfg = get_preset("tiny_bert")
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text(json.dumps({"model": cfg.to_dict(), "flags": {"a": 1}}))
    model, recorded = read_recorded(str(good), "teacher")
    assert model == cfg and recorded["flags"] == {"a": 1}

    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model": ')
    for path, message in [(tmp_path / "nowhere", "--init_from=.*nowhere does not exist"),
                          (tmp_path / "a_file", "--init_from=.*a_file is not a directory"),
                          (tmp_path / "empty", "--init_from=.*empty has no config.json"),
                          (broken, "broken/config.json is unreadable .*point --init_from")]:
        with pytest.raises(UserError, match=message):
            read_recorded(str(path), "init_from")
