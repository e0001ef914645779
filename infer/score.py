"""`python -m infer.score --checkpoint=PATH --tokens=IN.npy --out=OUT.npy`: float32 logits
[batch, length, vocab] for int32 token ids, computed on the training mesh rules.

Encoder-decoder models take the source as --tokens and the decoder inputs (BOS + target, as in
training) as --decoder_tokens and give the decoder's logits; encoder (BERT) models the MLM
logits."""

import os

import flax.linen as nn
import jax
import numpy as np
from absl import flags

from model import sharding
from model.family import family_of
from model.flags import define_model_flags
from runtime.command import run_command
from runtime.errors import UserError
from runtime.files import atomic_write

FLAGS = flags.FLAGS


def define_flags() -> None:
    define_model_flags("checkpoint", "mesh", "quant", quant={
        "help": "int8: int8 weights (a float model is quantized after loading; see "
                "docs/inference.md). none: as saved."})
    flags.DEFINE_string("tokens", None, "Input .npy of integer token ids, [batch, length] or "
                                        "[length].")
    flags.DEFINE_string("out", None, "Output .npy for float32 logits [batch, length, vocab].")
    flags.DEFINE_string("decoder_tokens", None, "Decoder input ids (.npy) [batch, length], "
                                                "required for encoder-decoder models, whose "
                                                "--tokens are the source; the logits are then "
                                                "the decoder's [batch, length, vocab].")


def read_tokens(path: str, vocab_size: int, max_len: int, flag: str = "tokens") -> np.ndarray:
    """int32[batch, length] from a .npy file, refusing anything that is not plain integer ids."""
    try:
        tokens = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError) as e:
        raise UserError(f"--{flag}={path} is not a readable .npy array of ids ({e})") from None
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0:
        raise UserError(f"--{flag}={path} must be a non-empty integer array [batch, length], got "
                        f"{tokens.dtype}{list(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise UserError(f"--{flag}={path} has ids outside [0, {vocab_size}) of this model's "
                        f"vocabulary (min {tokens.min()}, max {tokens.max()})")
    if tokens.shape[1] > max_len:
        raise UserError(f"--{flag}={path} has length {tokens.shape[1]}, longer than the model's "
                        f"context of {max_len}")
    return tokens.astype(np.int32)


def score(loaded, tokens: np.ndarray, decoder_tokens: np.ndarray | None = None) -> np.ndarray:
    """Logits for every position of every row (no padding: all rows are full): the decoder's
    over `decoder_tokens` for an encoder-decoder (whose `tokens` are the source), the MLM head's
    for an encoder."""
    family = family_of(loaded.config)
    inputs = (tokens,) if decoder_tokens is None else (tokens, decoder_tokens)
    if len(inputs) != len(family.inputs):
        raise UserError("--decoder_tokens is required for encoder-decoder models and only for "
                        "them")
    if decoder_tokens is not None and decoder_tokens.shape[0] != tokens.shape[0]:
        raise UserError(f"--decoder_tokens has {decoder_tokens.shape[0]} rows but --tokens has "
                        f"{tokens.shape[0]}; give one decoder row per source")
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        logits = jax.jit(family.logits, static_argnums=0)(loaded.model, loaded.params, *inputs)
    return np.asarray(jax.device_get(logits), dtype=np.float32)


def main(argv: list[str]) -> None:
    del argv
    from infer.engine.load import load, read_config

    for name in ("checkpoint", "tokens", "out"):
        if not FLAGS[name].value:
            raise UserError(f"--{name} is required")
    config = read_config(FLAGS.checkpoint)
    family = family_of(config)
    seq2seq = "decoder_tokens" in family.inputs
    if FLAGS.decoder_tokens and not seq2seq:
        raise UserError(f"--decoder_tokens is only for encoder-decoder models; this one is "
                        f"{family.title}")
    if seq2seq and not FLAGS.decoder_tokens:
        raise UserError("this is an encoder-decoder model: give the decoder inputs (BOS + "
                        "target) as --decoder_tokens=D.npy, the source as --tokens")
    tokens = read_tokens(FLAGS.tokens, config.vocab_size, config.max_len)
    decoder_tokens = read_tokens(FLAGS.decoder_tokens, config.vocab_size, config.max_len,
                                 "decoder_tokens") if seq2seq else None
    out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
    if not os.path.isdir(out_dir):
        raise UserError(f"--out={FLAGS.out}: directory {out_dir} does not exist")
    logits = score(load(FLAGS.checkpoint, FLAGS.mesh, FLAGS.quant), tokens, decoder_tokens)
    with atomic_write(FLAGS.out, "wb") as f:
        np.save(f, logits)
    print(f"wrote logits {list(logits.shape)} to {FLAGS.out}")


if __name__ == "__main__":
    run_command(main, define_flags, "infer.score")
