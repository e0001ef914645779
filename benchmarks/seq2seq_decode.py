"""Encoder-decoder greedy decode speed: the engine (self cache carried through the layer scan and
written in place, cross K/V a loop constant) against the loop it replaced, which scanned the
whole {"self", "cross"} cache as a per-layer input and restacked it every token. Both run in one
process in alternating rounds; merged into benchmarks/results/<date>-<device>.json.

The baseline lives here, not in the product: `_SlicedEncoderDecoder` is the model with the old
decoder stack (same params) and `_old_loop` the old `infer/engine/seq2seq.py` greedy loop.
"""

import functools
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from benchmarks.record import results_path, save_run
from data.sentencepiece_tokenizer import BOS_ID
from infer.engine import seq2seq
from infer.engine.sampling import Sampling
from infer.timing.timed_model import random_loaded
from model import sharding
from model.attention import RelativeBias
from model.blocks import BLOCK_IN_AXES, Block
from model.config import get_preset
from model.encoder import EncoderStack
from model.encoder_decoder import DecoderStack, EncoderDecoder, init_cache
from model.family import family_of
from model.flags import define_model_flags, size_overrides
from model.layers import Embed, Norm, embed_inputs, lm_head
from runtime.command import run_command
from runtime.errors import UserError

FLAGS = flags.FLAGS
SMOKE = {"preset": "tiny_t5", "batch_sizes": ["1", "2"], "source_len": 8, "new_tokens": 6,
         "repeats": 2}


def define_flags() -> None:
    """Registered by the entry point only, so importing this module (tests) defines nothing."""
    define_model_flags("preset", "sizes", preset={
        "default": "t5_small", "help": "Encoder-decoder preset (random init, float32); size "
                                       "flags override it."})
    flags.DEFINE_list("batch_sizes", ["1", "16"], "Batch sizes to measure.")
    flags.DEFINE_integer("source_len", 64, "Source tokens per row (random ids).")
    flags.DEFINE_integer("new_tokens", 64, "Tokens generated per row (never stopping early).")
    flags.DEFINE_integer("repeats", 7, "Timed rounds; each times both paths, in alternating "
                         "order (medians and min/max over rounds).")
    flags.DEFINE_integer("seed", 0, "Seed of the weights and source tokens.")
    flags.DEFINE_bool("smoke", False, f"Tiny sizes (seconds), for the test: {SMOKE}.")
    flags.DEFINE_string("out", "", "JSON file to merge this run into (default: "
                        "benchmarks/results/<YYYY-MM-DD>-<device>.json).")


class _SlicedDecoderStack(DecoderStack):
    """The decoder stack before the carried cache: the {"self", "cross"} cache is scanned as a
    per-layer input (sliced out, then the outputs restacked) at every step."""

    @nn.compact
    def __call__(self, tokens, positions, segment_ids, encoded, encoder_segment_ids, cache=None,
                 cache_index=None, kv_segments=None):
        cfg = self.config
        x = embed_inputs(cfg, self.embed, tokens, positions)
        bias = None
        if cfg.positions == "relative":
            kv_positions = positions if cache is None else jnp.arange(cache["self"]["k"].shape[3])
            bias = RelativeBias(cfg, bidirectional=False, name="relpos_bias")(
                positions, jnp.atleast_2d(kv_positions))
        scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True},
                          in_axes=BLOCK_IN_AXES, length=cfg.decoder_layers,
                          metadata_params={nn.PARTITION_NAME: "layers"})
        x, cache = scanned(cfg, name="layers", causal=True, cross=True)(
            x, positions, segment_ids, cache, cache_index, kv_segments, bias, encoded,
            encoder_segment_ids)
        if not cfg.post_norm:
            x = Norm(cfg, name="final_norm")(x)
        return x, cache


class _SlicedEncoderDecoder(EncoderDecoder):
    """EncoderDecoder (same param tree) decoding through `_SlicedDecoderStack`."""

    def setup(self):
        cfg = self.config
        self.embed = Embed(cfg)
        self.encoder = EncoderStack(cfg, self.embed)
        self.decoder = _SlicedDecoderStack(cfg, self.embed)
        self.lm_head = lm_head(self, cfg)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "bos_id"))
def _old_loop(model, params, sources, segments, *, max_new_tokens: int, bos_id: int):
    """The old greedy loop: the whole cache, cross K/V included, in the while_loop's carry."""
    batch = sources.shape[0]
    encoded = model.apply(params, sources, segments, method="encode")
    bos = jnp.full((batch, 1), bos_id, jnp.int32)
    logits, cache = model.apply(params, bos, encoded, segments,
                                cache=init_cache(model.config, batch, max_new_tokens),
                                cache_index=0, method="decode")
    token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
    out = jnp.zeros((batch, max_new_tokens), jnp.int32).at[:, 0].set(token)

    def body(carry):
        i, token, out, cache = carry
        logits, cache = model.apply(params, token[:, None], None, segments, cache=cache,
                                    cache_index=i, method="decode")
        token = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)
        return i + 1, token, out.at[:, i].set(token), cache

    _, _, out, _ = jax.lax.while_loop(lambda c: c[0] < max_new_tokens, body,
                                      (1, token, out, cache))
    return out


def compiled_paths(loaded, sources, segments, new_tokens: int) -> tuple[dict, dict]:
    """({(path, n): compiled fn of (params, sources, segments)}, {path: compile seconds of the
    n = new_tokens program}); n = 1 runs encode + the BOS step only, to subtract."""
    old_model = _SlicedEncoderDecoder(loaded.config)
    fns, compile_s = {}, {}
    for n in (1, new_tokens):
        lowered = {
            "old": _old_loop.lower(old_model, loaded.params, sources, segments,
                                   max_new_tokens=n, bos_id=BOS_ID),
            "new": seq2seq._sample_loop.lower(
                loaded.model, loaded.params, sources, segments, jax.random.PRNGKey(0),
                max_new_tokens=n, sampling=Sampling().validated(), eos_id=-1,
                bos_id=BOS_ID)}
        for path, low in lowered.items():
            start = time.perf_counter()
            compiled = low.compile()
            if n == new_tokens:
                compile_s[path] = time.perf_counter() - start
            fns[path, n] = (functools.partial(compiled, loaded.params, sources, segments)
                            if path == "old" else functools.partial(
                                compiled, loaded.params, sources, segments,
                                jax.random.PRNGKey(0)))
    return fns, compile_s


def _timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(fns: dict, batch: int, new_tokens: int, repeats: int) -> dict:
    """Each round times both paths back to back (the order alternates by round): decode tok/s =
    batch * (n - 1) / (t(n tokens) - t(1 token)); end-to-end tok/s = batch * n / t(n)."""
    for fn in fns.values():  # warm-up: first calls allocate
        jax.block_until_ready(fn())
    rounds = []
    for r in range(repeats):
        round_ = {}
        for path in (("old", "new") if r % 2 == 0 else ("new", "old")):
            t1, tn = _timed(fns[path, 1]), _timed(fns[path, new_tokens])
            round_[path] = {"decode": batch * (new_tokens - 1) / max(tn - t1, 1e-9),
                            "end_to_end": batch * new_tokens / tn, "step_ms":
                            1e3 * (tn - t1) / max(new_tokens - 1, 1)}
        rounds.append(round_)
    out = {path: {f"{kind}_tokens_per_s": _spread([r[path][kind] for r in rounds])
                  for kind in ("decode", "end_to_end")} for path in ("old", "new")}
    for path in ("old", "new"):
        out[path]["step_ms"] = _spread([r[path]["step_ms"] for r in rounds])
    # The ratio of the medians shown (docs/benchmarks.md); the per-round ratios are its spread.
    out["ratio_new_to_old"] = {
        kind: {**_spread([r["new"][kind] / r["old"][kind] for r in rounds]),
               "of_medians": (out["new"][f"{kind}_tokens_per_s"]["median"]
                              / out["old"][f"{kind}_tokens_per_s"]["median"])}
        for kind in ("decode", "end_to_end")}
    return out


def main(argv: list[str]) -> None:
    del argv  # run_command refuses positional arguments
    out = results_path(FLAGS.out)
    if FLAGS.smoke:
        for name, value in SMOKE.items():
            FLAGS[name].value = value
    for name in ("source_len", "new_tokens", "repeats"):
        if FLAGS[name].value <= 0:
            raise UserError(f"--{name} must be a positive integer, got {FLAGS[name].value}")
    if FLAGS.new_tokens < 2:
        raise UserError("--new_tokens must be >= 2: decode speed is (n tokens) - (1 token)")
    sizes = size_overrides()
    cfg = get_preset(FLAGS.preset).replace(dtype="float32", param_dtype="float32", **sizes)
    if family_of(cfg).generates != "seq2seq" or not cfg.scan_layers:
        raise UserError(f"--preset={FLAGS.preset} is not an encoder-decoder with scanned layers; "
                        "choose t5_small, t5_base, transformer_base or a tiny_* of them")
    cfg = cfg.replace(max_len=max(cfg.max_len, FLAGS.source_len, FLAGS.new_tokens))
    loaded = random_loaded(cfg, "", FLAGS.seed)
    results = {}
    for batch in (int(b) for b in FLAGS.batch_sizes):
        rng = np.random.default_rng(FLAGS.seed)
        sources = jnp.asarray(rng.integers(3, cfg.vocab_size, (batch, FLAGS.source_len)),
                              jnp.int32)
        segments = jnp.ones_like(sources)
        with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            fns, compile_s = compiled_paths(loaded, sources, segments, FLAGS.new_tokens)
            old, new = (np.asarray(fns[p, FLAGS.new_tokens]()) for p in ("old", "new"))
            if not np.array_equal(old, new):
                raise RuntimeError(f"batch {batch}: the new path's tokens differ from the old "
                                   f"path's in {int((old != new).sum())} places")
            result = measure(fns, batch, FLAGS.new_tokens, FLAGS.repeats)
        result["compile_s"] = compile_s
        result["outputs_equal"] = True
        results[str(batch)] = result
        print(f"batch {batch}: compile old {compile_s['old']:.2f}s new {compile_s['new']:.2f}s")
        for path in ("old", "new"):
            d = result[path]["decode_tokens_per_s"]
            print(f"  {path}: decode {d['median']:,.1f} tok/s ({d['min']:,.1f}..{d['max']:,.1f}),"
                  f" step {result[path]['step_ms']['median']:.2f} ms")
        ratio = result["ratio_new_to_old"]["decode"]
        print(f"  new / old decode: {ratio['of_medians']:.2f}x (per round {ratio['min']:.2f}.."
              f"{ratio['max']:.2f})")
    run = {"config": {"preset": FLAGS.preset, "overrides": sizes, "dtype": "float32",
                      "source_len": FLAGS.source_len, "new_tokens": FLAGS.new_tokens,
                      "repeats": FLAGS.repeats, "smoke": FLAGS.smoke, "sampling": "greedy",
                      "model": cfg.to_dict()},
           "results": results}
    save_run("seq2seq_decode", run, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    run_command(main, define_flags, "benchmarks.seq2seq_decode")
