"""Llama (`LlamaForCausalLM`): RMSNorm, SwiGLU, rotary positions in the rotate-half layout (ours
too, so no permutation), grouped KV heads, tied or untied output, optional biases."""

from model.config import ModelConfig
from model.hf.fields import need, refuse_unless
from model.hf.rules import Rule, linear, same, transposed

ARCHITECTURES = ("LlamaForCausalLM",)
MODEL_TYPE = "llama"
BASE_PREFIX = "model."
IGNORED = (r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",)  # a recomputed buffer


def _rope_theta(hf: dict, source: str) -> float:
    """transformers < 5 writes rope_theta + rope_scaling; 5 writes rope_parameters."""
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    refuse_unless(kind == "default", source, f"rope scaling {kind!r}")
    return float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0)


def config_from_hf(hf: dict, architecture: str, source: str) -> ModelConfig:
    refuse_unless(hf.get("hidden_act", "silu") == "silu", source,
                  f"hidden_act={hf.get('hidden_act')!r}")
    refuse_unless(hf.get("pretraining_tp", 1) == 1, source, "pretraining_tp > 1")
    bias = bool(hf.get("attention_bias", False))
    refuse_unless(bias == bool(hf.get("mlp_bias", False)), source,
                  "attention_bias different from mlp_bias")
    d, heads = need(hf, "hidden_size", source), need(hf, "num_attention_heads", source)
    return ModelConfig(
        family="decoder", vocab_size=need(hf, "vocab_size", source),
        num_layers=need(hf, "num_hidden_layers", source), d_model=d, num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=0 if hf.get("head_dim") in (None, d // heads) else hf["head_dim"],
        mlp_dim=need(hf, "intermediate_size", source),
        max_len=hf.get("max_position_embeddings", 2048), norm="rmsnorm", activation="swiglu",
        positions="rope", use_bias=bias, tie_embeddings=hf.get("tie_word_embeddings", False),
        norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(hf, source)).validated()


def mismatches(cfg: ModelConfig, architecture: str) -> list[str]:
    want = {"family": "decoder", "norm": "rmsnorm", "activation": "swiglu", "positions": "rope",
            "post_norm": False, "embed_norm": False, "scale_embeddings": False,
            "scale_attention": True, "scale_output": False}
    return [f"{k}={getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    return {"architectures": [architecture], "model_type": MODEL_TYPE,
            "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
            "intermediate_size": cfg.mlp_dim, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.resolved_head_dim, "hidden_act": "silu",
            "max_position_embeddings": cfg.max_len, "rms_norm_eps": cfg.norm_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": None,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
            "attention_bias": cfg.use_bias, "mlp_bias": cfg.use_bias,
            "tie_word_embeddings": cfg.tie_embeddings}


def rules(cfg: ModelConfig, architecture: str) -> list[Rule]:
    n, h = cfg.num_layers, "model.layers.{i}."
    projections = {"q_proj": "query", "k_proj": "key", "v_proj": "value"}
    out = [same("model.embed_tokens.weight", "embed/embedding"),
           same(h + "input_layernorm.weight", "layers/attention_norm/scale", n),
           same(h + "post_attention_layernorm.weight", "layers/mlp_norm/scale", n),
           linear(h + "self_attn.o_proj.weight", "layers/attention/out_kernel", n, in_dims=2)]
    for theirs, ours in projections.items():
        out.append(linear(f"{h}self_attn.{theirs}.weight", f"layers/attention/{ours}_kernel", n))
        if cfg.use_bias:
            out.append(same(f"{h}self_attn.{theirs}.bias", f"layers/attention/{ours}_bias", n,
                            flat=True))
    if cfg.use_bias:
        out.append(same(h + "self_attn.o_proj.bias", "layers/attention/out_bias", n))
    for theirs, ours in (("gate_proj", "wg"), ("up_proj", "wi"), ("down_proj", "wo")):
        out.append(linear(f"{h}mlp.{theirs}.weight", f"layers/mlp/{ours}/kernel", n))
        if cfg.use_bias:
            out.append(same(f"{h}mlp.{theirs}.bias", f"layers/mlp/{ours}/bias", n))
    out.append(same("model.norm.weight", "final_norm/scale"))
    if not cfg.tie_embeddings:
        out.append(transposed("lm_head.weight", "lm_head"))
    return out
