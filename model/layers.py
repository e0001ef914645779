"""Building blocks shared by every family: embeddings, LayerNorm/RMSNorm, the MLP.

Every param is created with logical axis names; `model/sharding.py` decides where they live.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import ModelConfig

Array = jax.Array

# GPT-2 / Llama initialisation: normal(0.02) for matrices and embeddings.
default_init = nn.initializers.normal(stddev=0.02)


def dtype_of(name: str):
    return jnp.dtype(name)


def constrain(x: Array, *names: str | None) -> Array:
    """Pins a large activation to its logical layout so XLA does not guess a worse one."""
    return nn.with_logical_constraint(x, names)


class Norm(nn.Module):
    """LayerNorm (GPT-2, BERT) or RMSNorm (Llama, T5), computed in float32 for stability."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        pdtype = dtype_of(cfg.param_dtype)
        scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                           (x.shape[-1],), pdtype)
        h = x.astype(jnp.float32)
        if cfg.norm == "layernorm":
            h = h - jnp.mean(h, axis=-1, keepdims=True)
        h = h * jax.lax.rsqrt(jnp.mean(jnp.square(h), axis=-1, keepdims=True) + cfg.norm_eps)
        h = h * scale.astype(jnp.float32)
        if cfg.norm == "layernorm":
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                              (x.shape[-1],), pdtype)
            h = h + bias.astype(jnp.float32)
        return h.astype(dtype_of(cfg.dtype))


class Embed(nn.Module):
    """Token embedding table `[vocab, embed]`; `attend` reuses it as the tied output projection."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embedding = self.param(
            "embedding", nn.with_logical_partitioning(default_init, ("vocab", "embed")),
            (cfg.vocab_size, cfg.d_model), dtype_of(cfg.param_dtype))

    def __call__(self, tokens: Array) -> Array:
        """tokens: int32[batch, length] -> float[batch, length, embed]."""
        x = jnp.take(self.embedding, tokens, axis=0).astype(dtype_of(self.config.dtype))
        return constrain(x, "batch", "length", "embed")

    def attend(self, x: Array) -> Array:
        """x: [batch, length, embed] -> logits [batch, length, vocab]."""
        table = self.embedding.astype(dtype_of(self.config.dtype))
        return jnp.einsum("ble,ve->blv", x, table)


class PositionEmbed(nn.Module):
    """Learned absolute positions (GPT-2, BERT), indexed by per-token positions of packed rows."""

    config: ModelConfig

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(default_init, ("length", "embed")),
                           (cfg.max_len, cfg.d_model), dtype_of(cfg.param_dtype))
        return jnp.take(table, positions, axis=0).astype(dtype_of(cfg.dtype))


class Dense(nn.Module):
    """x @ kernel (+ bias) with logical names for the kernel's input and output dimensions."""

    features: int
    axes: tuple[str, str]
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = self.param("kernel", nn.with_logical_partitioning(default_init, self.axes),
                            (x.shape[-1], self.features), dtype_of(cfg.param_dtype))
        y = jnp.einsum("...i,io->...o", x, kernel.astype(dtype_of(cfg.dtype)))
        if cfg.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   (self.axes[1],)),
                              (self.features,), dtype_of(cfg.param_dtype))
            y = y + bias.astype(y.dtype)
        return y


class Mlp(nn.Module):
    """GELU MLP (GPT-2, BERT) or SwiGLU (Llama): embed -> mlp -> embed."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        up = Dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="wi")(x)
        if cfg.activation == "swiglu":
            gate = Dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="wg")(x)
            h = nn.silu(gate) * up
        else:
            h = nn.gelu(up, approximate=True)
        h = constrain(h, "batch", "length", "mlp")
        return Dense(cfg.d_model, ("mlp", "embed"), cfg, name="wo")(h)
