"""`ModelConfig`, the one description of a model's shape and numerics, and its named presets.

Presets give published shapes; explicit size flags override them through `ModelConfig.replace`.
A model directory records its config in config.json (read and written by model/store.py).
"""

import dataclasses
from typing import Any

from runtime.errors import UserError

FAMILIES = ("decoder", "encoder", "encoder_decoder")
NORMS = ("layernorm", "rmsnorm")
# gelu: tanh approximation (GPT-2, T5 v1.1); gelu_exact: erf (BERT); swiglu/geglu: gated (Llama /
# T5 v1.1).
ACTIVATIONS = ("gelu", "gelu_exact", "swiglu", "geglu", "relu")
GATED = ("swiglu", "geglu")
POSITIONS = ("learned", "rope", "sinusoidal", "relative")  # relative: T5's bucketed bias
ATTENTION_BACKENDS = ("xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")
# normal: GPT-2 / BERT, N(0, 0.02) for every matrix and table. fan_in: Mesh TF / T5X / HF T5
# (`_init_weights`), each matrix N(0, 1/fan_in) so every layer starts with unit-scale outputs;
# see model/layers.py `kernel_init`.
PARAM_INITS = ("normal", "fan_in")
# Inference only (model/quant.py): int8 weights, an int8 KV cache, or both.
QUANT_MODES = ("none", "int8", "int8_kv", "int8+int8_kv")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    family: str = "decoder"
    vocab_size: int = 32000
    num_layers: int = 2
    d_model: int = 64
    num_heads: int = 4
    num_kv_heads: int = 4  # < num_heads gives GQA, 1 gives MQA
    head_dim: int = 0  # 0 means d_model // num_heads
    mlp_dim: int = 256
    max_len: int = 1024  # longest sequence; sizes the learned position table
    norm: str = "layernorm"
    activation: str = "gelu"
    positions: str = "learned"
    use_bias: bool = True
    tie_embeddings: bool = True
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    dtype: str = "float32"  # compute dtype of activations and matmuls
    param_dtype: str = "float32"  # storage dtype of params (and so of optimizer state)
    scan_layers: bool = True
    remat: str = "none"
    attention: str = "xla"
    # Encoder and encoder-decoder families (defaults keep a decoder-only config unchanged).
    num_decoder_layers: int = 0  # encoder_decoder: decoder depth; 0 means num_layers
    post_norm: bool = False  # norm(x + f(x)) (Vaswani, BERT) instead of x + f(norm(x))
    embed_norm: bool = False  # a norm right after the input embeddings (BERT)
    scale_embeddings: bool = False  # token embeddings times sqrt(d_model) (Vaswani)
    relative_buckets: int = 32  # T5 relative bias buckets (an encoder splits them by direction)
    relative_max_distance: int = 128  # offsets beyond this share the last bucket
    type_vocab_size: int = 0  # encoder: token-type (segment A/B) embeddings; 0 = none
    pooler: bool = False  # encoder: dense + tanh over the first token (BERT's [CLS])
    num_labels: int = 0  # encoder: a classification head on the pooled token; 0 = none
    mlm_head: bool = True  # encoder: the masked-LM head (HF's BertForSequenceClassification has none)
    # Attention logits times head_dim**-0.5. T5 instead folds that scale into its query init,
    # so its checkpoints need False.
    scale_attention: bool = True
    # Final hidden states times d_model**-0.5 before the output projection (T5 v1.0, whose
    # embedding table is shared between input and output).
    scale_output: bool = False
    # How params start (PARAM_INITS); imported checkpoints replace them, so it only shapes
    # training from scratch.
    param_init: str = "normal"
    # Inference only: int8 weights ("int8"), an int8 KV cache ("int8_kv") or both; see
    # model/quant.py. A quantized model is not trained.
    quant: str = "none"

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

    @property
    def int8_weights(self) -> bool:
        return self.quant in ("int8", "int8+int8_kv")

    @property
    def int8_kv(self) -> bool:
        return self.quant in ("int8_kv", "int8+int8_kv")

    @property
    def decoder_layers(self) -> int:
        """Layers in the decoder stack of an encoder-decoder (num_layers in the other families)."""
        return self.num_decoder_layers or self.num_layers

    def replace(self, **overrides: Any) -> "ModelConfig":
        """Returns a validated copy; `None` values leave the field as it is."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        if ("num_heads" in changes and "num_kv_heads" not in changes
                and self.num_kv_heads == self.num_heads):
            changes["num_kv_heads"] = changes["num_heads"]  # an MHA preset stays MHA
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown model setting(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes).validated()

    def validated(self) -> "ModelConfig":
        choices = {"family": FAMILIES, "norm": NORMS, "activation": ACTIVATIONS,
                   "positions": POSITIONS, "attention": ATTENTION_BACKENDS, "remat": REMAT_POLICIES,
                   "dtype": DTYPES, "param_dtype": DTYPES, "quant": QUANT_MODES,
                   "param_init": PARAM_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name}={getattr(self, name)} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "num_layers", "d_model", "num_heads", "num_kv_heads", "mlp_dim",
                     "max_len"):
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        if not self.head_dim and self.d_model % self.num_heads:
            raise UserError(f"--d_model={self.d_model} is not divisible by "
                            f"--num_heads={self.num_heads}; change one of them")
        if self.num_heads % self.num_kv_heads:
            raise UserError(f"--num_heads={self.num_heads} must be a multiple of "
                            f"--num_kv_heads={self.num_kv_heads}")
        if self.positions == "rope" and self.resolved_head_dim % 2:
            raise UserError(f"rotary positions need an even head_dim, got {self.resolved_head_dim}")
        return self._validated_families()

    def _validated_families(self) -> "ModelConfig":
        for name in ("num_decoder_layers", "type_vocab_size", "num_labels"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be 0 or a positive integer, got {getattr(self, name)}")
        if self.relative_buckets < 4 or self.relative_buckets % 2:
            raise UserError(f"--relative_buckets must be an even number >= 4, got "
                            f"{self.relative_buckets}")
        if self.relative_max_distance <= self.relative_buckets // 2:
            raise UserError(f"--relative_max_distance={self.relative_max_distance} must exceed "
                            f"half of --relative_buckets={self.relative_buckets}")
        if self.positions == "sinusoidal" and self.d_model % 2:
            raise UserError(f"sinusoidal positions need an even d_model, got {self.d_model}")
        # A decoder-only cache is left-padded, so its slots are not positions: relative offsets
        # between cached keys and a new query would be wrong.
        if self.positions == "relative" and self.family == "decoder":
            raise UserError("--positions=relative is for the encoder and encoder_decoder families; "
                            "use rope or learned for a decoder")
        if self.num_decoder_layers and self.family != "encoder_decoder":
            raise UserError("--num_decoder_layers is only for the encoder_decoder family")
        if not self.mlm_head and self.family != "encoder":
            raise UserError("--mlm_head=false is only for the encoder family (BERT)")
        for name in ("type_vocab_size", "pooler", "num_labels"):
            if getattr(self, name) and self.family != "encoder":
                raise UserError(f"--{name} is only for the encoder family (BERT)")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}).validated()

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count from the shapes alone (no init), for MFU and memory estimates.

        `include_embeddings=False` leaves out the token, position and token-type tables and an
        untied output projection (the params that cost no matmul FLOPs per token).
        """
        d, h, kv, hd = self.d_model, self.num_heads, self.num_kv_heads, self.resolved_head_dim
        bias = self.use_bias
        norm = d * (2 if self.norm == "layernorm" else 1)
        attn = d * hd * (h + 2 * kv) + h * hd * d + ((hd * (h + 2 * kv) + d) if bias else 0)
        gates = 2 if self.activation in GATED else 1
        mlp = d * self.mlp_dim * (gates + 1) + ((gates * self.mlp_dim + d) if bias else 0)
        block = attn + mlp + 2 * norm
        # Per stack: its final norm (pre-norm only), relative bias table, input embedding norm.
        stack = ((0 if self.post_norm else norm)
                 + (self.relative_buckets * h if self.positions == "relative" else 0)
                 + (norm if self.embed_norm else 0))
        total = self.num_layers * block + stack
        if self.family == "encoder_decoder":
            total += self.decoder_layers * (block + attn + norm) + stack  # + cross-attention
        if self.family == "encoder":
            dense = d * d + (d if bias else 0)
            total += dense * self.pooler
            if self.mlm_head:
                total += dense + norm + (self.vocab_size if bias else 0)
            total += self.num_labels * (d + (1 if bias else 0))
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            tables = (self.max_len * d if self.positions == "learned" else 0)
            tables += self.type_vocab_size * d
            total += tables * (2 if self.family == "encoder_decoder" else 1)
        return total


_GPT2 = {"norm": "layernorm", "activation": "gelu", "positions": "learned", "use_bias": True,
             "tie_embeddings": True, "norm_eps": 1e-5, "vocab_size": 50257, "max_len": 1024}
_LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "positions": "rope", "use_bias": False,
              "tie_embeddings": False, "norm_eps": 1e-5, "vocab_size": 32000}
_BERT = {"family": "encoder", "norm": "layernorm", "activation": "gelu", "positions": "learned",
         "use_bias": True, "tie_embeddings": True, "norm_eps": 1e-12, "vocab_size": 30522,
         "max_len": 512, "post_norm": True, "embed_norm": True, "type_vocab_size": 2,
         "pooler": True, "num_labels": 2}  # 2 labels: the next-sentence head of pretraining
# T5 v1.1: gated GELU, RMSNorm without bias, relative bias, untied output, no biases anywhere.
# Trained from scratch, the presets scale attention logits by head_dim**-0.5 and use fan-in init
# (Mesh TF / HF T5's variance scaling). T5 checkpoints leave logits unscaled, with the factor
# folded into the query weights; under Adam, whose step is the same size whatever the weight's
# scale, those unscaled logits move sqrt(head_dim) times faster, and with N(0, 0.02) init the
# cross-attention logits of a d_model 128 tiny_t5 reached std ~80 by step 300 and it learned
# nothing of the reverse task (0% exact; 19.5% scaled with fan-in, benchmarks/seq2seq_learning.py
# runs in benchmarks/results/2026-12-07-cpu-2core.json). HF import sets scale_attention=False,
# so imported checkpoints compute exactly what they did; export folds the scale back
# (model/hf/t5.py).
_T5 = {"family": "encoder_decoder", "norm": "rmsnorm", "activation": "geglu",
       "positions": "relative", "use_bias": False, "tie_embeddings": False, "norm_eps": 1e-6,
       "vocab_size": 32128, "max_len": 512, "scale_attention": True, "param_init": "fan_in"}
# Vaswani et al. 2017: post-LN, ReLU, sinusoidal positions, one embedding shared by encoder,
# decoder and output (scaled by sqrt(d_model) on input). Fan-in init as in tensor2tensor: the
# table N(0, 1/d_model), so the scaled embeddings start at unit RMS like the sinusoids beside
# them (with 0.02 they start 0.16 RMS at d_model 64, under positions of RMS 0.7);
# benchmarks/seq2seq_learning.py measured 100% exact match vs 98% with N(0, 0.02).
_VASWANI = {"family": "encoder_decoder", "norm": "layernorm", "activation": "relu",
            "positions": "sinusoidal", "use_bias": True, "tie_embeddings": True, "norm_eps": 1e-6,
            "vocab_size": 32000, "max_len": 512, "post_norm": True, "scale_embeddings": True,
            "param_init": "fan_in"}
_TINY = {"vocab_size": 512, "max_len": 128}

PRESETS: dict[str, ModelConfig] = {
    # Small enough for CPU tests (~0.2M params); GQA so the kv_heads path is always exercised.
    "tiny": ModelConfig(**{**_LLAMA, "vocab_size": 512, "max_len": 128}, num_layers=2, d_model=64,
                        num_heads=4, num_kv_heads=2, mlp_dim=128),
    "tiny_gpt": ModelConfig(**{**_GPT2, "vocab_size": 512, "max_len": 128}, num_layers=2,
                            d_model=64, num_heads=4, num_kv_heads=4, mlp_dim=256),
    "tiny_llama": ModelConfig(**{**_LLAMA, "vocab_size": 512, "max_len": 128}, num_layers=2,
                              d_model=64, num_heads=4, num_kv_heads=2, mlp_dim=128),
    "gpt2_124m": ModelConfig(**_GPT2, num_layers=12, d_model=768, num_heads=12, num_kv_heads=12,
                             mlp_dim=3072),
    "gpt2_350m": ModelConfig(**_GPT2, num_layers=24, d_model=1024, num_heads=16, num_kv_heads=16,
                             mlp_dim=4096),
    # TinyLlama 1.1B shape.
    "llama_1b": ModelConfig(**{**_LLAMA, "max_len": 2048}, num_layers=22, d_model=2048,
                            num_heads=32, num_kv_heads=4, mlp_dim=5632),
    "llama_7b": ModelConfig(**{**_LLAMA, "max_len": 4096}, num_layers=32, d_model=4096,
                            num_heads=32, num_kv_heads=32, mlp_dim=11008),
    "tiny_bert": ModelConfig(**{**_BERT, **_TINY}, num_layers=2, d_model=64, num_heads=4,
                             num_kv_heads=4, mlp_dim=256),
    "bert_base": ModelConfig(**_BERT, num_layers=12, d_model=768, num_heads=12, num_kv_heads=12,
                             mlp_dim=3072),
    "bert_large": ModelConfig(**_BERT, num_layers=24, d_model=1024, num_heads=16,
                              num_kv_heads=16, mlp_dim=4096),
    "tiny_t5": ModelConfig(**{**_T5, **_TINY}, num_layers=2, d_model=64, num_heads=4,
                           num_kv_heads=4, mlp_dim=128),
    # google/t5-v1_1-small and -base (8 and 12 layers per stack; heads of 64 dims).
    "t5_small": ModelConfig(**_T5, num_layers=8, d_model=512, num_heads=6, num_kv_heads=6,
                            head_dim=64, mlp_dim=1024),
    "t5_base": ModelConfig(**_T5, num_layers=12, d_model=768, num_heads=12, num_kv_heads=12,
                           head_dim=64, mlp_dim=2048),
    "tiny_transformer": ModelConfig(**{**_VASWANI, **_TINY}, num_layers=2, d_model=64,
                                    num_heads=4, num_kv_heads=4, mlp_dim=256),
    "transformer_base": ModelConfig(**_VASWANI, num_layers=6, d_model=512, num_heads=8,
                                    num_kv_heads=8, mlp_dim=2048),
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
