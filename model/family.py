"""The three model families as objects, looked up once from a config (`family_of(cfg)`): each owns
its network, the inputs a forward pass reads, how its logits are scored, how it generates and its
training FLOPs. Code that would branch on `cfg.family` asks the object instead (T5X's
DecoderOnlyModel / EncoderDecoderModel)."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from model.config import GATED, ModelConfig
from model.encoder import Encoder
from model.encoder_decoder import EncoderDecoder
from model.transformer import Decoder

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class Family:
    name: str  # ModelConfig.family
    title: str  # how messages name it
    example_preset: str  # the tiny preset of this family, for messages that suggest one
    network: type[nn.Module]
    inputs: tuple[str, ...]  # the int32 [batch, length] token arrays a forward pass reads
    # How it writes text: "causal" (prefill + KV-cache decode, infer/engine/engine.py),
    # "seq2seq" (encode once, then decode, infer/engine/seq2seq.py) or "" (it does not).
    generates: str
    pretraining: str  # the objective that pretrains it (distillation reads its batches)

    def build(self, cfg: ModelConfig) -> nn.Module:
        return self.network(cfg)

    def init_inputs(self, batch: int = 1, length: int = 2) -> tuple[Array, ...]:
        """Dummy positional inputs that make `build(cfg).init(rng, *init_inputs())` create every
        param (an encoder-decoder needs decoder tokens as well)."""
        tokens = jnp.zeros((batch, length), jnp.int32)
        return (tokens,) * len(self.inputs)

    def logits(self, model: nn.Module, variables, *inputs: Array) -> Array:
        """Vocabulary logits at every position of full rows (`inputs` as in `self.inputs`): the
        decoder's for an encoder-decoder, the masked-LM head's for an encoder."""
        out = model.apply(variables, *inputs)
        return out["logits"] if isinstance(out, dict) else out  # an encoder returns all its heads

    def train_flops_per_token(self, cfg: ModelConfig, seq_len: int, target_len: int = 0,
                              lm_head: bool = True) -> float:
        """Training FLOPs per token: 3x the forward (backward is twice the forward) of 2 FLOPs per
        matmul weight per token, plus attention scores and values (PaLM's appendix B; masking is
        not subtracted, so a causal and a bidirectional layer cost the same).

        6N + 12 * layers * heads * head_dim * seq_len, where N counts the non-embedding params
        plus the output projection (the vocabulary logits; left out with `lm_head=False`, e.g.
        for a classifier whose loss never reads them, so XLA drops them)."""
        del target_len
        n = cfg.num_params(include_embeddings=False) + cfg.vocab_size * cfg.d_model * lm_head
        attention = 12 * cfg.num_layers * cfg.num_heads * cfg.resolved_head_dim * seq_len
        return 6 * n + attention


class EncoderDecoderFamily(Family):
    def train_flops_per_token(self, cfg: ModelConfig, seq_len: int, target_len: int = 0,
                              lm_head: bool = True) -> float:
        """With S = seq_len source and T = target_len target tokens a row, per token of the
        S + T: each source token passes the encoder layers' matmuls and the decoder's cross-
        attention key/value projections; each target token the decoder layers' self-attention,
        cross-attention query/output and MLP matmuls and the output projection; attention costs
        12 * heads * head_dim * (enc_layers * S^2 + dec_layers * (T^2 + S * T)) a row."""
        d, h, kv, hd = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.resolved_head_dim
        q_o, k_v = 2 * d * h * hd, 2 * d * kv * hd
        mlp = d * cfg.mlp_dim * (3 if cfg.activation in GATED else 2)
        per_source = cfg.num_layers * (q_o + k_v + mlp) + cfg.decoder_layers * k_v
        per_target = cfg.decoder_layers * (2 * q_o + k_v + mlp) + cfg.vocab_size * d * lm_head
        s, t = seq_len, target_len
        attention = 12 * h * hd * (cfg.num_layers * s * s + cfg.decoder_layers * (t * t + s * t))
        return (6 * (s * per_source + t * per_target) + attention) / (s + t)


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("decoder", "decoder-only", "tiny", Decoder, ("tokens",), "causal", "clm"),
    Family("encoder", "encoder-only (BERT)", "tiny_bert", Encoder, ("tokens",), "", "mlm"),
    EncoderDecoderFamily("encoder_decoder", "encoder-decoder", "tiny_t5", EncoderDecoder,
                         ("tokens", "decoder_tokens"), "seq2seq", "span"),
)}


def family_of(cfg: ModelConfig) -> Family:
    """The family object of a (validated) config."""
    return FAMILIES[cfg.family]


def build_model(cfg: ModelConfig) -> nn.Module:
    """The network for a config's family."""
    return family_of(cfg).build(cfg)


def init_inputs(cfg: ModelConfig, batch: int = 1, length: int = 2) -> tuple[Array, ...]:
    """Dummy inputs that make `build_model(cfg).init(rng, *init_inputs(cfg))` create every
    param of any family."""
    return family_of(cfg).init_inputs(batch, length)
