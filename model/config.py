"""`ModelConfig`, the one description of a model's shape and numerics, and its named presets.

Presets give published shapes; explicit size flags override them through `ModelConfig.replace`.
"""

import dataclasses
from typing import Any

from model.errors import UserError

FAMILIES = ("decoder",)
NORMS = ("layernorm", "rmsnorm")
ACTIVATIONS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
ATTENTION_BACKENDS = ("xla", "cudnn", "auto")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DTYPES = ("float32", "bfloat16", "float16")


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

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.num_heads

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
                   "dtype": DTYPES, "param_dtype": DTYPES}
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
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known}).validated()

    def num_params(self, include_embeddings: bool = True) -> int:
        """Parameter count from the shapes alone (no init), for MFU and memory estimates."""
        d, h, kv, hd = self.d_model, self.num_heads, self.num_kv_heads, self.resolved_head_dim
        attn = d * hd * (h + 2 * kv) + h * hd * d
        mlp = d * self.mlp_dim * (3 if self.activation == "swiglu" else 2)
        norms = 2 * d * (2 if self.norm == "layernorm" else 1)
        biases = (hd * (h + 2 * kv) + d + self.mlp_dim + d) if self.use_bias else 0
        total = self.num_layers * (attn + mlp + norms + biases) + d * (2 if self.norm == "layernorm" else 1)
        if include_embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
            total += self.max_len * d if self.positions == "learned" else 0
        return total


_GPT2 = {"norm": "layernorm", "activation": "gelu", "positions": "learned", "use_bias": True,
             "tie_embeddings": True, "norm_eps": 1e-5, "vocab_size": 50257, "max_len": 1024}
_LLAMA = {"norm": "rmsnorm", "activation": "swiglu", "positions": "rope", "use_bias": False,
              "tie_embeddings": False, "norm_eps": 1e-5, "vocab_size": 32000}

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
}


def get_preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]
