"""Random encoder-decoder models for the inference tests, and uncached references to check the
engine against. Weights are spread (x8) from the 0.02 init, whose near-uniform next-token
distributions make every path look alike; the tied Vaswani table is scaled less, or its copy of
the input token dominates the output."""

import functools

import jax
import numpy as np

from infer.engine.load import Loaded
from model import sharding
from model.config import get_preset
from model.family import build_model, init_inputs

BOS = 2
SOURCES = [[5, 7, 9, 3, 11], [4], [7, 8, 9, 10, 11, 12, 13, 14, 15]]  # different lengths


def _spread(path, x):
    name = jax.tree_util.keystr(path)
    if "norm" in name:
        return x
    return x * (2.0 if "'embed'" in name else 8.0)


@functools.cache  # one model per setting for the session, so compiled programs are reused
def random_loaded(preset: str, seed: int = 0, **overrides) -> Loaded:
    # The spread below is sized for the N(0, 0.02) init, whatever the preset now defaults to.
    cfg = get_preset(preset).replace(**{"param_init": "normal", **overrides})
    model = build_model(cfg)
    params = jax.jit(model.init)(jax.random.key(seed), *init_inputs(cfg))
    params = jax.tree_util.tree_map_with_path(_spread, sharding.unbox(params))
    return Loaded(cfg, model, params, sharding.make_mesh(""), None)


@functools.partial(jax.jit, static_argnums=0)
def _apply(model, params, source, decoder):
    return model.apply(params, source, decoder)


WIDTH = 16  # decoder inputs are padded to this, so each source length compiles once


def decoder_logp(loaded, source: list[int], decoder: list[int]) -> np.ndarray:
    """log p(next token) [len(decoder), vocab] after each decoder input, by the full forward of
    one unpadded source; causal attention keeps the padding after `decoder` out of them."""
    padded = np.zeros((1, WIDTH), np.int32)
    padded[0, :len(decoder)] = decoder
    logits = _apply(loaded.model, loaded.params, np.asarray([source], np.int32), padded)
    return np.asarray(jax.nn.log_softmax(logits[0, :len(decoder)], axis=-1))


def greedy_reference(loaded, source: list[int], n: int, eos_id: int = -1) -> list[int]:
    """Greedy decoding of one source with the whole forward (encoder and decoder) recomputed at
    every step, no cache."""
    out = []
    for _ in range(n):
        token = int(np.argmax(decoder_logp(loaded, source, [BOS] + out)[-1]))
        if token == eos_id:
            break
        out.append(token)
    return out


def sequence_logp(loaded, source: list[int], target: list[int], eos_id: int,
                  finished: bool) -> float:
    """Teacher-forced sum of log p(target (+ EOS when finished) | source)."""
    scored = target + ([eos_id] if finished else [])
    logp = decoder_logp(loaded, source, [BOS] + scored[:-1])
    return float(sum(logp[i, t] for i, t in enumerate(scored)))
