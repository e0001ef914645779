"""BERT (`BertForMaskedLM`, `BertForPreTraining`, `BertForSequenceClassification`): post-
LayerNorm, learned positions, token types, an embedding LayerNorm, erf GELU; the MLM head
(dense + GELU + LayerNorm + tied decoder + bias), pooler, and NSP or classification head."""

from model.config import ModelConfig
from model.hf.fields import need, refuse_unless
from model.hf.rules import Rule, linear, same, transposed

ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification")
MODEL_TYPE = "bert"
BASE_PREFIX = "bert."
IGNORED = (r"(bert\.)?embeddings\.position_ids", r"cls\.predictions\.decoder\.(weight|bias)")
_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                "relu": "relu"}


def config_from_hf(hf: dict, architecture: str, source: str) -> ModelConfig:
    act = hf.get("hidden_act", "gelu")
    refuse_unless(act in _ACTIVATIONS, source, f"hidden_act={act!r}")
    refuse_unless(hf.get("position_embedding_type", "absolute") == "absolute", source,
                  f"position_embedding_type={hf.get('position_embedding_type')!r}")
    refuse_unless(not hf.get("is_decoder"), source, "is_decoder=true")
    heads = need(hf, "num_attention_heads", source)
    labels = {"BertForMaskedLM": 0, "BertForPreTraining": 2,
              "BertForSequenceClassification": len(hf.get("id2label") or {}) or
              hf.get("num_labels", 2)}[architecture]
    return ModelConfig(
        family="encoder", vocab_size=need(hf, "vocab_size", source),
        num_layers=need(hf, "num_hidden_layers", source), d_model=need(hf, "hidden_size", source),
        num_heads=heads, num_kv_heads=heads, mlp_dim=need(hf, "intermediate_size", source),
        max_len=hf.get("max_position_embeddings", 512), norm="layernorm",
        activation=_ACTIVATIONS[act], positions="learned", use_bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        post_norm=True, embed_norm=True, type_vocab_size=hf.get("type_vocab_size", 2),
        pooler=architecture != "BertForMaskedLM", num_labels=labels,
        mlm_head=architecture != "BertForSequenceClassification").validated()


def _heads(architecture: str) -> tuple[bool, bool, bool]:
    """(pooler, MLM head, NSP/classification head) that the HF class has."""
    return (architecture != "BertForMaskedLM", architecture != "BertForSequenceClassification",
            architecture != "BertForMaskedLM")


def mismatches(cfg: ModelConfig, architecture: str) -> list[str]:
    want = {"family": "encoder", "norm": "layernorm", "positions": "learned", "use_bias": True,
            "post_norm": True, "embed_norm": True, "scale_embeddings": False,
            "scale_attention": True, "num_kv_heads": cfg.num_heads, "head_dim": 0}
    bad = [f"{k}={getattr(cfg, k)}" for k, v in want.items() if getattr(cfg, k) != v]
    if cfg.activation not in _ACTIVATIONS.values():
        bad.append(f"activation={cfg.activation}")
    pooler, mlm, labels = _heads(architecture)
    bad += [f"{name}={getattr(cfg, name)} ({architecture} has one)"
            for name, needed in (("pooler", pooler), ("mlm_head", mlm), ("num_labels", labels))
            if needed and not getattr(cfg, name)]
    if architecture == "BertForPreTraining" and cfg.num_labels != 2:
        bad.append(f"num_labels={cfg.num_labels} (next-sentence prediction has 2)")
    return bad


def architecture_of(cfg: ModelConfig, objective: str | None) -> str:
    """The HF class for an encoder: what the run trained, else what its heads say."""
    if objective == "classify" or not cfg.mlm_head:
        return "BertForSequenceClassification"
    if objective == "mlm_nsp" or (objective is None and cfg.pooler and cfg.num_labels == 2):
        return "BertForPreTraining"
    return "BertForMaskedLM"


def config_to_hf(cfg: ModelConfig, architecture: str) -> dict:
    hf = {"architectures": [architecture], "model_type": MODEL_TYPE,
          "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model,
          "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
          "intermediate_size": cfg.mlp_dim,
          "hidden_act": {v: k for k, v in _ACTIVATIONS.items()}[cfg.activation],
          "max_position_embeddings": cfg.max_len, "type_vocab_size": cfg.type_vocab_size,
          "layer_norm_eps": cfg.norm_eps, "position_embedding_type": "absolute",
          "tie_word_embeddings": cfg.tie_embeddings}
    if architecture == "BertForSequenceClassification":
        hf["id2label"] = {str(i): f"LABEL_{i}" for i in range(cfg.num_labels)}
        hf["label2id"] = {f"LABEL_{i}": i for i in range(cfg.num_labels)}
    return hf


def rules(cfg: ModelConfig, architecture: str) -> list[Rule]:
    n, e, h = cfg.num_layers, "bert.embeddings.", "bert.encoder.layer.{i}."
    ours = "encoder/layers/"
    out = [same(e + "word_embeddings.weight", "embed/embedding"),
           same(e + "position_embeddings.weight", "encoder/position_embed/embedding"),
           same(e + "token_type_embeddings.weight", "encoder/type_embed/embedding"),
           same(e + "LayerNorm.weight", "encoder/embed_norm/scale"),
           same(e + "LayerNorm.bias", "encoder/embed_norm/bias")]
    for theirs, name in (("query", "query"), ("key", "key"), ("value", "value")):
        out += [linear(f"{h}attention.self.{theirs}.weight", f"{ours}attention/{name}_kernel", n),
                same(f"{h}attention.self.{theirs}.bias", f"{ours}attention/{name}_bias", n,
                     flat=True)]
    out += [linear(h + "attention.output.dense.weight", ours + "attention/out_kernel", n,
                   in_dims=2),
            same(h + "attention.output.dense.bias", ours + "attention/out_bias", n),
            linear(h + "intermediate.dense.weight", ours + "mlp/wi/kernel", n),
            same(h + "intermediate.dense.bias", ours + "mlp/wi/bias", n),
            linear(h + "output.dense.weight", ours + "mlp/wo/kernel", n),
            same(h + "output.dense.bias", ours + "mlp/wo/bias", n)]
    for theirs, name in (("attention.output.LayerNorm", "attention_norm"),
                         ("output.LayerNorm", "mlp_norm")):
        out += [same(f"{h}{theirs}.weight", f"{ours}{name}/scale", n),
                same(f"{h}{theirs}.bias", f"{ours}{name}/bias", n)]
    pooler, mlm, labels = _heads(architecture)
    if pooler:
        out += [linear("bert.pooler.dense.weight", "pooler/kernel"),
                same("bert.pooler.dense.bias", "pooler/bias")]
    if mlm:
        t = "cls.predictions.transform."
        out += [linear(t + "dense.weight", "mlm_dense/kernel"),
                same(t + "dense.bias", "mlm_dense/bias"),
                same(t + "LayerNorm.weight", "mlm_norm/scale"),
                same(t + "LayerNorm.bias", "mlm_norm/bias"),
                same("cls.predictions.bias", "mlm_bias")]
        if not cfg.tie_embeddings:
            out.append(transposed("cls.predictions.decoder.weight", "lm_head"))
    if labels:
        head = "classifier" if architecture == "BertForSequenceClassification" else \
            "cls.seq_relationship"
        out += [linear(head + ".weight", "classifier/kernel"),
                same(head + ".bias", "classifier/bias")]
    return out
