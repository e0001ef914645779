"""GPT-2 (`GPT2LMHeadModel`): learned positions, pre-LayerNorm, tanh GELU, biases everywhere,
query/key/value fused in one `Conv1D` (stored [in, out]), tied output by default."""

from model.config import ModelConfig
from model.hf.fields import need, refuse_unless
from model.hf.rules import Rule, conv1d, fused, same, transposed

ARCHITECTURES = ("GPT2LMHeadModel",)
MODEL_TYPE = "gpt2"
BASE_PREFIX = "transformer."  # hub checkpoints often store the base model's names alone
IGNORED = (r"(transformer\.)?h\.\d+\.attn\.(masked_)?bias",)  # causal-mask buffers, not weights


def config_from_hf(hf: dict, architecture: str, source: str) -> ModelConfig:
    refuse_unless(hf.get("activation_function", "gelu_new") in ("gelu_new", "gelu_pytorch_tanh"),
                  source, f"activation_function={hf.get('activation_function')!r}")
    refuse_unless(not hf.get("scale_attn_by_inverse_layer_idx"), source,
                  "scale_attn_by_inverse_layer_idx")
    refuse_unless(hf.get("scale_attn_weights", True), source, "scale_attn_weights=false")
    d, heads = need(hf, "n_embd", source), need(hf, "n_head", source)
    return ModelConfig(
        family="decoder", vocab_size=need(hf, "vocab_size", source),
        num_layers=need(hf, "n_layer", source), d_model=d, num_heads=heads, num_kv_heads=heads,
        mlp_dim=hf.get("n_inner") or 4 * d, max_len=need(hf, "n_positions", source),
        norm="layernorm", activation="gelu", positions="learned", use_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5)).validated()


def mismatches(cfg: ModelConfig, architecture: str) -> list[str]:
    """What keeps `cfg` from being a GPT-2 (empty: exportable as one)."""
    want = {"family": "decoder", "norm": "layernorm", "activation": "gelu",
            "positions": "learned", "use_bias": True, "post_norm": False, "embed_norm": False,
            "scale_embeddings": False, "scale_attention": True, "scale_output": False,
            "num_kv_heads": cfg.num_heads, "head_dim": 0}
    return [f"{k}={getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    return {"architectures": [architecture], "model_type": MODEL_TYPE,
            "vocab_size": cfg.vocab_size, "n_positions": cfg.max_len, "n_embd": cfg.d_model,
            "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.mlp_dim,
            "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings}


def rules(cfg: ModelConfig, architecture: str) -> list[Rule]:
    n, h = cfg.num_layers, "transformer.h.{i}."
    qkv = tuple(f"layers/attention/{p}" for p in ("query", "key", "value"))
    out = [same("transformer.wte.weight", "embed/embedding"),
           same("transformer.wpe.weight", "position_embed/embedding"),
           fused(h + "attn.c_attn.weight", tuple(p + "_kernel" for p in qkv), n),
           fused(h + "attn.c_attn.bias", tuple(p + "_bias" for p in qkv), n),
           conv1d(h + "attn.c_proj.weight", "layers/attention/out_kernel", n, in_dims=2),
           same(h + "attn.c_proj.bias", "layers/attention/out_bias", n),
           conv1d(h + "mlp.c_fc.weight", "layers/mlp/wi/kernel", n),
           same(h + "mlp.c_fc.bias", "layers/mlp/wi/bias", n),
           conv1d(h + "mlp.c_proj.weight", "layers/mlp/wo/kernel", n),
           same(h + "mlp.c_proj.bias", "layers/mlp/wo/bias", n)]
    for ours, theirs in (("attention_norm", "ln_1"), ("mlp_norm", "ln_2")):
        out += [same(f"{h}{theirs}.weight", f"layers/{ours}/scale", n),
                same(f"{h}{theirs}.bias", f"layers/{ours}/bias", n)]
    out += [same("transformer.ln_f.weight", "final_norm/scale"),
            same("transformer.ln_f.bias", "final_norm/bias")]
    if not cfg.tie_embeddings:
        out.append(transposed("lm_head.weight", "lm_head"))
    return out
