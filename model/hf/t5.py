"""T5 (`T5ForConditionalGeneration`), v1.0 (ReLU, tied output scaled by d_model**-0.5) and v1.1
/ Flan (gated GELU, untied output): RMSNorm without bias, no biases, relative position bias in
the first layer of each stack shared by all layers, unscaled attention logits.

Our from-scratch T5 presets scale logits by head_dim**-0.5 (model/config.py says why); exporting
one folds that factor into the query weights, as T5's own checkpoints hold it. The fold is a
multiplication by a power of two, hence exact, when head_dim is a power of 4 (16, 64, 256);
otherwise each query weight takes one rounding. Import always gives scale_attention=False."""

import numpy as np

from model.config import ModelConfig
from model.hf.fields import need, refuse_unless
from model.hf.rules import Rule, linear, same, transposed

ARCHITECTURES = ("T5ForConditionalGeneration",)
MODEL_TYPE = "t5"
BASE_PREFIX = ""
# Tied copies of `shared.weight` that some checkpoints store again.
IGNORED = (r"(encoder|decoder)\.embed_tokens\.weight",)
_FEED_FORWARD = {"relu": "relu", "gelu": "gelu_exact", "gated-gelu": "geglu",
                 "gated-silu": "swiglu"}


def config_from_hf(hf: dict, architecture: str, source: str) -> ModelConfig:
    ff = hf.get("feed_forward_proj", "relu")
    refuse_unless(ff in _FEED_FORWARD, source, f"feed_forward_proj={ff!r}")
    heads, layers = need(hf, "num_heads", source), need(hf, "num_layers", source)
    d, d_kv = need(hf, "d_model", source), need(hf, "d_kv", source)
    tied = hf.get("tie_word_embeddings", True)
    # T5 v1.0 scales the decoder output by d_model**-0.5, v1.1 does not. transformers < 5 told
    # them apart by tie_word_embeddings alone; 5 writes scale_decoder_outputs (and always ties).
    scaled = hf.get("scale_decoder_outputs", tied is not False)
    return ModelConfig(
        family="encoder_decoder", vocab_size=need(hf, "vocab_size", source), num_layers=layers,
        num_decoder_layers=0 if hf.get("num_decoder_layers") in (None, layers)
        else hf["num_decoder_layers"],
        d_model=d, num_heads=heads, num_kv_heads=heads, head_dim=0 if d_kv * heads == d else d_kv,
        mlp_dim=need(hf, "d_ff", source), max_len=hf.get("n_positions", 512), norm="rmsnorm",
        activation=_FEED_FORWARD[ff], positions="relative", use_bias=False, tie_embeddings=tied,
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        relative_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_max_distance=hf.get("relative_attention_max_distance", 128),
        scale_attention=False, scale_output=scaled).validated()


def mismatches(cfg: ModelConfig, architecture: str) -> list[str]:
    want = {"family": "encoder_decoder", "norm": "rmsnorm", "positions": "relative",
            "use_bias": False, "post_norm": False, "embed_norm": False,
            "scale_embeddings": False, "num_kv_heads": cfg.num_heads}
    bad = [f"{k}={getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]
    return bad + ([] if cfg.activation in _FEED_FORWARD.values() else
                  [f"activation={cfg.activation}"])


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    return {"architectures": [architecture], "model_type": MODEL_TYPE,
            "vocab_size": cfg.vocab_size, "d_model": cfg.d_model,
            "d_kv": cfg.resolved_head_dim, "d_ff": cfg.mlp_dim, "num_layers": cfg.num_layers,
            "num_decoder_layers": cfg.decoder_layers, "num_heads": cfg.num_heads,
            "relative_attention_num_buckets": cfg.relative_buckets,
            "relative_attention_max_distance": cfg.relative_max_distance,
            "layer_norm_epsilon": cfg.norm_eps, "n_positions": cfg.max_len,
            "feed_forward_proj": {v: k for k, v in _FEED_FORWARD.items()}[cfg.activation],
            "tie_word_embeddings": cfg.tie_embeddings, "scale_decoder_outputs": cfg.scale_output,
            "is_encoder_decoder": True}


def _scaled(rule: Rule, factor: float) -> Rule:
    """`rule` with HF's tensor = ours * factor (the logit scale folded into the query)."""
    return Rule(rule.hf, rule.ours,
                lambda w, s: rule.to_ours((w / np.float32(factor)).astype(w.dtype), s),
                lambda a: (rule.to_hf(a) * np.float32(factor)).astype(a[0].dtype), rule.layers)


def _attention(cfg: ModelConfig, theirs: str, ours: str, n: int) -> list[Rule]:
    out = [linear(f"{theirs}.{p}.weight", f"{ours}/{name}_kernel", n)
           for p, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    if cfg.scale_attention:
        out[0] = _scaled(out[0], cfg.resolved_head_dim ** -0.5)
    return [*out, linear(f"{theirs}.o.weight", f"{ours}/out_kernel", n, in_dims=2)]


def _mlp(theirs: str, ours: str, n: int, gated: bool) -> list[Rule]:
    inputs = (("wi_0", "wg"), ("wi_1", "wi")) if gated else (("wi", "wi"),)
    return [linear(f"{theirs}.{p}.weight", f"{ours}/{name}/kernel", n)
            for p, name in (*inputs, ("wo", "wo"))]


def rules(cfg: ModelConfig, architecture: str) -> list[Rule]:
    gated = cfg.activation in ("geglu", "swiglu")
    out = [same("shared.weight", "embed/embedding")]
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.decoder_layers)):
        block, ours = f"{stack}.block.{{i}}.layer.", f"{stack}/layers/"
        out += _attention(cfg, block + "0.SelfAttention", ours + "attention", n)
        out.append(same(block + "0.layer_norm.weight", ours + "attention_norm/scale", n))
        out.append(same(f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
                        f"{stack}/relpos_bias/embedding"))
        mlp = 1
        if stack == "decoder":
            out += _attention(cfg, block + "1.EncDecAttention", ours + "cross_attention", n)
            out.append(same(block + "1.layer_norm.weight", ours + "cross_attention_norm/scale", n))
            mlp = 2
        out += _mlp(f"{block}{mlp}.DenseReluDense", ours + "mlp", n, gated)
        out.append(same(f"{block}{mlp}.layer_norm.weight", ours + "mlp_norm/scale", n))
        out.append(same(f"{stack}.final_layer_norm.weight", f"{stack}/final_norm/scale"))
    if not cfg.tie_embeddings:
        out.append(transposed("lm_head.weight", "lm_head"))
    return out
