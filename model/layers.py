"""Building blocks shared by every family: embeddings (token, position, token type), LayerNorm/
RMSNorm, the MLP.

Every param is created with logical axis names; `model/sharding.py` decides where they live.
"""

import math
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp

from model import quant
from model.config import GATED, ModelConfig

Array = jax.Array

# GPT-2 / Llama initialisation: normal(0.02) for matrices and embeddings.
default_init = nn.initializers.normal(stddev=0.02)


def kernel_init(cfg: ModelConfig, fan_in: int, gain: float = 1.0):
    """The init of a matrix that sums over `fan_in` inputs: N(0, 0.02) (param_init "normal"),
    or N(0, gain**2 / fan_in) ("fan_in": Mesh TF / T5X variance scaling, as HF T5's
    `_init_weights`), which keeps a unit-RMS input's output at unit RMS whatever the width."""
    if cfg.param_init == "normal":
        return default_init
    return nn.initializers.normal(stddev=gain * fan_in ** -0.5)


def embedding_init(cfg: ModelConfig):
    """Of the token (and position / token-type) tables. "fan_in": N(0, 1), the RMS the
    normalised stream has (T5), or N(0, 1/d_model) when inputs are scaled by sqrt(d_model)
    (Vaswani, tensor2tensor), so either way the first layer reads unit-scale embeddings and a
    tied output projection starts with unit-scale logits."""
    if cfg.param_init == "normal":
        return default_init
    return nn.initializers.normal(stddev=cfg.d_model ** -0.5 if cfg.scale_embeddings else 1.0)


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
    """Token embedding table `[vocab, embed]`; `attend` reuses it as the tied output projection.
    With int8 weights each vocabulary row has its own scale (model/quant.py)."""

    config: ModelConfig

    def setup(self):
        cfg = self.config
        if cfg.int8_weights:
            self.embedding = self._int8_table()
        else:
            self.embedding = self.param(
                "embedding", nn.with_logical_partitioning(embedding_init(cfg), ("vocab", "embed")),
                (cfg.vocab_size, cfg.d_model), dtype_of(cfg.param_dtype))

    def _int8_table(self) -> quant.Int8Kernel:
        cfg = self.config
        q = self.param("embedding", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                 ("vocab", "embed")),
                       (cfg.vocab_size, cfg.d_model), jnp.int8)
        scale = self.param("embedding_scale", nn.with_logical_partitioning(
            nn.initializers.ones, ("vocab", None)), (cfg.vocab_size, 1), jnp.float32)
        return quant.Int8Kernel(q, scale)

    def __call__(self, tokens: Array) -> Array:
        """tokens: int32[batch, length] -> float[batch, length, embed]."""
        x = quant.embedding_rows(self.embedding, tokens).astype(dtype_of(self.config.dtype))
        return constrain(x, "batch", "length", "embed")

    def attend(self, x: Array) -> Array:
        """x: [batch, length, embed] -> logits [batch, length, vocab]."""
        table = self.embedding
        if isinstance(table, quant.Int8Kernel):
            logits = quant.int8_dot(x.reshape(-1, x.shape[-1]), table.q, table.scale[:, 0],
                                    transposed=True)
            return logits.reshape(*x.shape[:-1], -1).astype(x.dtype)
        return jnp.einsum("ble,ve->blv", x, table.astype(dtype_of(self.config.dtype)))


class PositionEmbed(nn.Module):
    """Learned absolute positions (GPT-2, BERT), indexed by per-token positions of packed rows."""

    config: ModelConfig

    @nn.compact
    def __call__(self, positions: Array) -> Array:
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(embedding_init(cfg),
                                                                     ("length", "embed")),
                           (cfg.max_len, cfg.d_model), dtype_of(cfg.param_dtype))
        return jnp.take(table, positions, axis=0).astype(dtype_of(cfg.dtype))


class TypeEmbed(nn.Module):
    """BERT's token-type (segment A / B) embeddings, `[type_vocab_size, embed]`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, token_types: Array) -> Array:
        cfg = self.config
        table = self.param("embedding", nn.with_logical_partitioning(embedding_init(cfg),
                                                                     ("token_types", "embed")),
                           (cfg.type_vocab_size, cfg.d_model), dtype_of(cfg.param_dtype))
        return jnp.take(table, token_types, axis=0).astype(dtype_of(cfg.dtype))


def sinusoidal(positions: Array, d_model: int) -> Array:
    """Vaswani et al. 2017, section 3.5: PE[pos, 2i] = sin(pos / 10000^(2i/d)) and
    PE[pos, 2i+1] = cos(pos / 10000^(2i/d)); positions: int32[batch, length] -> f32[..., d]."""
    inv_freq = 1.0 / 10000.0 ** (jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model)
    angle = positions[..., None].astype(jnp.float32) * inv_freq
    return jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(*positions.shape, d_model)


def embed_inputs(cfg: ModelConfig, embed: Embed, tokens: Array, positions: Array,
                 token_types: Array | None = None) -> Array:
    """Token embeddings plus whatever the config adds before the first layer: sqrt(d) scaling,
    learned or sinusoidal positions, token types, an embedding norm. Called inside a compact
    module, so the position/type tables and the norm become that module's params."""
    x = embed(tokens)
    if cfg.scale_embeddings:
        x = x * math.sqrt(cfg.d_model)
    if cfg.positions == "learned":
        x = x + PositionEmbed(cfg, name="position_embed")(positions)
    elif cfg.positions == "sinusoidal":
        x = x + sinusoidal(positions, cfg.d_model).astype(x.dtype)
    if cfg.type_vocab_size:
        types = jnp.zeros_like(tokens) if token_types is None else token_types
        x = x + TypeEmbed(cfg, name="type_embed")(types)
    if cfg.embed_norm:
        x = Norm(cfg, name="embed_norm")(x)
    return constrain(x, "batch", "length", "embed")


def lm_head(module: nn.Module, cfg: ModelConfig) -> Array | quant.Int8Kernel | None:
    """The untied output projection `[embed, vocab]` as a param of `module` (None when tied)."""
    if cfg.tie_embeddings:
        return None
    return quant.kernel(module, "lm_head", kernel_init(cfg, cfg.d_model),
                        (cfg.d_model, cfg.vocab_size),
                        ("embed", "vocab"), 1, cfg)


def to_logits(embed: Embed, x: Array, head: Array | quant.Int8Kernel | None) -> Array:
    """x: [batch, length, embed] -> float32 logits [batch, length, vocab], through the tied
    embedding table or the untied `head` from `lm_head`."""
    if embed.config.scale_output:
        x = x * jnp.asarray(embed.config.d_model ** -0.5, x.dtype)
    if head is None:
        logits = embed.attend(x)
    else:
        logits = quant.matmul(x, head, 1, "ble,ev->blv")
    return constrain(logits.astype(jnp.float32), "batch", "length", "vocab")


class Dense(nn.Module):
    """x @ kernel (+ bias) with logical names for the kernel's input and output dimensions."""

    features: int
    axes: tuple[str, str]
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = quant.kernel(self, "kernel", kernel_init(cfg, x.shape[-1]),
                              (x.shape[-1], self.features),
                              self.axes, 1, cfg)
        y = quant.matmul(x, kernel, 1, "...i,io->...o")
        if cfg.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   (self.axes[1],)),
                              (self.features,), dtype_of(cfg.param_dtype))
            y = y + bias.astype(y.dtype)
        return y


def activation(cfg: ModelConfig):
    """The nonlinearity of the MLP (for a gated MLP, the one applied to the gate); BERT's MLM
    head uses it too."""
    return {"gelu": partial(nn.gelu, approximate=True), "geglu": partial(nn.gelu, approximate=True),
            "gelu_exact": partial(nn.gelu, approximate=False), "swiglu": nn.silu,
            "relu": nn.relu}[cfg.activation]


class Mlp(nn.Module):
    """GELU (GPT-2, BERT), ReLU (Vaswani, T5 v1.0), SwiGLU (Llama) or GeGLU (T5 v1.1) MLP:
    embed -> mlp -> embed. Gated variants multiply the activated `wg` by `wi`."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        up = Dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="wi")(x)
        if cfg.activation in GATED:
            gate = Dense(cfg.mlp_dim, ("embed", "mlp"), cfg, name="wg")(x)
            h = activation(cfg)(gate) * up
        else:
            h = activation(cfg)(up)
        h = constrain(h, "batch", "length", "mlp")
        return Dense(cfg.d_model, ("mlp", "embed"), cfg, name="wo")(h)
