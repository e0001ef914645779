"""`python -m infer.score --checkpoint=PATH --tokens=IN.npy --out=OUT.npy`: float32 logits
[batch, length, vocab] for int32 token ids, computed on the training mesh rules."""

import os

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags, logging

from model import sharding
from model.errors import UserError, exit_with

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("checkpoint", None, "Training workdir or converted model directory.")
    flags.DEFINE_string("tokens", None, "Input .npy of integer token ids, [batch, length] or "
                                        "[length].")
    flags.DEFINE_string("out", None, "Output .npy for float32 logits [batch, length, vocab].")
    flags.DEFINE_string("decoder_tokens", None, "Decoder input ids (.npy) for encoder-decoder "
                                                "models; the logits are then the decoder's.")
    flags.DEFINE_string("mesh", "", "Device mesh, e.g. tensor=2 (default: all devices on data).")


def read_tokens(path: str, vocab_size: int, max_len: int) -> np.ndarray:
    """int32[batch, length] from a .npy file, refusing anything that is not plain integer ids."""
    try:
        tokens = np.load(path, allow_pickle=False)  # never unpickle a user's file
    except (OSError, ValueError) as e:
        raise UserError(f"--tokens={path} is not a readable .npy array of ids ({e})") from None
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or tokens.size == 0:
        raise UserError(f"--tokens={path} must be a non-empty integer array [batch, length], got "
                        f"{tokens.dtype}{list(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() >= vocab_size:
        raise UserError(f"--tokens={path} has ids outside [0, {vocab_size}) of this model's "
                        f"vocabulary (min {tokens.min()}, max {tokens.max()})")
    if tokens.shape[1] > max_len:
        raise UserError(f"--tokens={path} has length {tokens.shape[1]}, longer than the model's "
                        f"context of {max_len}")
    return tokens.astype(np.int32)


def score(loaded, tokens: np.ndarray) -> np.ndarray:
    """Logits for every position of every row (no padding: all rows are full)."""
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        logits = jax.jit(loaded.model.apply)(loaded.params, tokens)
    return np.asarray(jax.device_get(logits), dtype=np.float32)


def main(argv: list[str]) -> None:
    del argv
    from infer.load import load, read_config

    try:
        for name in ("checkpoint", "tokens", "out"):
            if not FLAGS[name].value:
                raise UserError(f"--{name} is required")
        config = read_config(FLAGS.checkpoint)
        if FLAGS.decoder_tokens and config.family == "decoder":
            raise UserError("--decoder_tokens is only for encoder-decoder models; this one is "
                            "decoder-only")
        tokens = read_tokens(FLAGS.tokens, config.vocab_size, config.max_len)
        out_dir = os.path.dirname(os.path.abspath(FLAGS.out))
        if not os.path.isdir(out_dir):
            raise UserError(f"--out={FLAGS.out}: directory {out_dir} does not exist")
        logits = score(load(FLAGS.checkpoint, FLAGS.mesh), tokens)
    except UserError as e:
        exit_with(e)
    tmp = FLAGS.out + ".tmp.npy"
    np.save(tmp, logits)
    os.replace(tmp, FLAGS.out)
    print(f"wrote logits {list(logits.shape)} to {FLAGS.out}")


def _parse(argv: list[str]) -> list[str]:
    try:
        return FLAGS(argv)
    except flags.Error as e:
        exit_with(UserError(str(e)))


if __name__ == "__main__":
    define_flags()
    logging.set_verbosity(logging.WARNING)
    app.run(main, flags_parser=_parse)
